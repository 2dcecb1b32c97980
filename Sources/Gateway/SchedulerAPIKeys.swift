import Crypto
import Foundation
import HangarNATS
import HangarShared

/// E2B-style API keys: `e2b_` + 40 lowercase hex digits (160 random bits). The SDKs do not check the
/// format (`validate_api_key` is a no-op in e2b 2.63.0); the shape only makes Hangar's keys look like
/// E2B's in logs and secret scanners.
public enum GatewayAPIKey {
    /// Every key starts with this.
    public static let prefix = "e2b_"

    /// A new random key (from the system's CSPRNG).
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<20).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return prefix + hex(bytes)
    }

    /// The SHA-256 of `key`, lowercase hex: all that is stored, and all that travels on NATS.
    public static func sha256(_ key: String) -> String {
        hex(SHA256.hash(data: Data(key.utf8)))
    }

    /// The id a key is listed and revoked by: the first 12 hex digits of its SHA-256.
    public static func id(of key: String) -> String { String(sha256(key).prefix(12)) }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}

/// The API keys the scheduler keeps (`hangar tenant add NAME --api-key`), asked for on
/// `hangar.gateway.apikey` with the key's SHA-256 (the key itself never goes on NATS), and cached.
///
/// Revocation delay: an answer is kept for `positiveTTL` (10 s by default) when the key was valid and
/// `negativeTTL` (2 s) when it was not, so a revoked key keeps working on a gateway that looked it up
/// just before for at most `positiveTTL`, and a new key may be refused for up to `negativeTTL` after a
/// failed try. At most `capacity` answers are kept (the expired ones are dropped first, then all).
/// If the scheduler does not answer, the call fails with 503 (the SDK's `ServiceBusyException`).
public actor SchedulerAPIKeys: APIKeyResolver {
    /// The gateway's own connection (Principal.gateway: may publish on `hangar.gateway.apikey`).
    public nonisolated let connection: NATSConnection
    private let positiveTTL: Duration
    private let negativeTTL: Duration
    private let capacity: Int
    private let timeout: Duration
    private var cache: [String: (tenant: String?, until: ContinuousClock.Instant)] = [:]

    /// A resolver asking over `connection`, caching valid keys for `positiveTTL` (at most 10 s) and
    /// unknown ones for `negativeTTL` (at most 2 s), at most `capacity` of them.
    public init(
        connection: NATSConnection,
        positiveTTL: Duration = .seconds(10),
        negativeTTL: Duration = .seconds(2),
        capacity: Int = 10_000,
        timeout: Duration = .seconds(3)
    ) {
        self.connection = connection
        self.positiveTTL = min(positiveTTL, .seconds(10))
        self.negativeTTL = min(negativeTTL, .seconds(2))
        self.capacity = max(capacity, 1)
        self.timeout = timeout
    }

    public func tenant(forAPIKey key: String) async throws -> String? {
        let hash = GatewayAPIKey.sha256(key)
        let now = ContinuousClock.now
        if let cached = cache[hash], cached.until > now { return cached.tenant }
        var request = Hangar_V1_APIKeyLookupRequest()
        request.keySha256 = hash
        let answer: NATSMessage
        do {
            answer = try await connection.request(
                Subjects.gatewayAPIKey,
                payload: try request.serializedData(),
                timeout: timeout
            )
        } catch let error as NATSError {
            let why =
                switch error.kind {
                case .noResponders: "no scheduler is answering API key lookups"
                case .timeout: "the scheduler did not answer the API key lookup within \(timeout)"
                default: "the API key lookup failed: \(error)"
                }
            throw GatewayError(.unavailable, why)
        }
        guard let reply = try? Hangar_V1_APIKeyLookupReply(serializedBytes: answer.payload) else {
            throw GatewayError(.unavailable, "the scheduler's answer to the API key lookup could not be read")
        }
        guard reply.error.isEmpty else { throw GatewayError(.unavailable, reply.error) }
        let tenant = reply.found && !reply.tenant.isEmpty ? reply.tenant : nil
        remember(hash, tenant: tenant, now: ContinuousClock.now)
        return tenant
    }

    private func remember(_ hash: String, tenant: String?, now: ContinuousClock.Instant) {
        if cache.count >= capacity {
            cache = cache.filter { $0.value.until > now }
            if cache.count >= capacity { cache.removeAll(keepingCapacity: true) }
        }
        cache[hash] = (tenant, now + (tenant == nil ? negativeTTL : positiveTTL))
    }
}
