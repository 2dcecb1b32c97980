import Crypto
import Foundation

/// The sandbox-scoped tokens a create or connect reply hands out, and their check.
///
/// A token names its tenant and is bound to one sandbox: `<tenant>.<hex HMAC-SHA256(secret,
/// kind \0 tenant \0 sandbox)>`. The gateway keeps no table of them: any gateway with the cluster's
/// secret recomputes and compares (in constant time). A token cannot be moved to another sandbox or
/// tenant, and the envd and traffic tokens of one sandbox differ.
public struct SandboxTokens: Sendable {
    /// Which of the two tokens.
    public enum Kind: String, Sendable {
        /// `envdAccessToken`: sent as `X-Access-Token` on every call into the sandbox.
        case envd
        /// `trafficAccessToken`: sent as `E2B-Traffic-Access-Token` to the sandbox's ports.
        case traffic
    }

    private let key: SymmetricKey

    /// Tokens made with `secret` (at least 16 bytes).
    public init(secret: Data) throws {
        guard secret.count >= 16 else {
            throw GatewayError(.internal, "the gateway's token secret must be at least 16 bytes, not \(secret.count)")
        }
        key = SymmetricKey(data: secret)
    }

    /// The token of `kind` for `sandbox` of `tenant`.
    public func token(_ kind: Kind, tenant: String, sandbox: String) -> String {
        "\(tenant).\(mac(kind, tenant: tenant, sandbox: sandbox))"
    }

    /// The tenant `token` was made for, if it is a valid token of `kind` for `sandbox`; nil otherwise.
    public func tenant(of token: String, _ kind: Kind, sandbox: String) -> String? {
        guard let dot = token.lastIndex(of: "."), token.utf8.count <= 200 else { return nil }
        let tenant = String(token[..<dot])
        let given = Array(token[token.index(after: dot)...].utf8)
        let expected = Array(mac(kind, tenant: tenant, sandbox: sandbox).utf8)
        guard given.count == expected.count, !tenant.isEmpty else { return nil }
        var difference: UInt8 = 0
        for (a, b) in zip(given, expected) { difference |= a ^ b }
        return difference == 0 ? tenant : nil
    }

    private func mac(_ kind: Kind, tenant: String, sandbox: String) -> String {
        let message = Data("\(kind.rawValue)\u{0}\(tenant)\u{0}\(sandbox)".utf8)
        return HMAC<SHA256>.authenticationCode(for: message, using: key).map { String(format: "%02x", $0) }.joined()
    }
}
