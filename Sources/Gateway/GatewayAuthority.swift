import Foundation
import HTTPTypes
import HangarClient
import Hummingbird

/// Finds the tenant an API key belongs to.
public protocol APIKeyResolver: Sendable {
    /// The tenant of `key`; nil if the key is unknown or revoked.
    func tenant(forAPIKey key: String) async throws -> String?
}

/// API keys from a fixed table (tests, and clusters without a scheduler-side key store).
public struct StaticAPIKeys: APIKeyResolver {
    /// key → tenant.
    public let keys: [String: String]

    /// A resolver over `keys` (key → tenant).
    public init(_ keys: [String: String]) { self.keys = keys }

    public func tenant(forAPIKey key: String) async throws -> String? { keys[key] }
}

/// Who is calling: the tenant behind a control-plane call's API key, and the tenant and sandbox
/// behind a call into a sandbox (its token checked against the sandbox it names).
public struct GatewayAuthority: Sendable {
    /// How API keys are checked.
    public let keys: any APIKeyResolver
    /// How sandbox tokens are made and checked.
    public let tokens: SandboxTokens
    /// The cluster, seen from the gateway.
    public let directory: SandboxDirectory

    /// An authority checking keys with `keys` and tokens with `tokens`, reaching sandboxes through
    /// `directory`.
    public init(keys: any APIKeyResolver, tokens: SandboxTokens, directory: SandboxDirectory) {
        self.keys = keys
        self.tokens = tokens
        self.directory = directory
    }

    /// The client of the tenant whose API key `request` carries; 401 without a valid one.
    public func client(forAPIKeyOf request: Request) async throws -> Hangar {
        guard let key = request.headers[.xAPIKey], !key.isEmpty else {
            throw GatewayError(.unauthorized, "Missing API key: set E2B_API_KEY (sent as X-API-Key)")
        }
        guard key.utf8.count <= 256, let tenant = try await keys.tenant(forAPIKey: key) else {
            throw GatewayError(.unauthorized, "Invalid API key")
        }
        return try await directory.client(for: tenant)
    }

    /// The sandbox a call into a sandbox is for, once its token is checked: the envd token
    /// (`X-Access-Token`) on envd's port, the traffic token (`E2B-Traffic-Access-Token`) or the envd
    /// token on any other. 401 without a valid token (a token of another sandbox is not valid); 502
    /// "The sandbox X was not found" if it is not running, as E2B's proxy answers. `fresh` asks the
    /// scheduler whether it runs, even if it was seen a moment ago.
    public func sandbox(for request: Request, at address: SandboxAddress, fresh: Bool = false) async throws -> Sandbox {
        var tenant: String?
        if let token = request.headers[.xAccessToken] {
            tenant = tokens.tenant(of: token, .envd, sandbox: address.sandboxID)
        }
        if tenant == nil, address.port != SandboxAddress.envdPort,
            let token = request.headers[.e2bTrafficAccessToken]
        {
            tenant = tokens.tenant(of: token, .traffic, sandbox: address.sandboxID)
        }
        guard let tenant else {
            throw GatewayError(.unauthorized, "missing or invalid access token for sandbox \(address.sandboxID)")
        }
        do {
            return try await directory.sandbox(address.sandboxID, tenant: tenant, fresh: fresh)
        } catch let error as GatewayError where error.kind == .notFound {
            // As E2B's proxy answers for a sandbox that was killed or timed out: 502 saying it "was
            // not found" (the SDKs raise SandboxNotRunningException, and is_running() is False).
            throw GatewayError(.badGateway, error.message)
        }
    }
}
