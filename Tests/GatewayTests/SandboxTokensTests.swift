import Foundation
import HangarGateway
import Testing

@Suite("Gateway sandbox tokens")
struct SandboxTokensTests {
    let tokens = try! SandboxTokens(secret: Data("0123456789abcdef-cluster-secret".utf8))

    @Test("a token names its tenant and is valid only for its own sandbox and kind")
    func boundToSandbox() throws {
        let token = tokens.token(.envd, tenant: "acme", sandbox: "sbx1")
        #expect(tokens.tenant(of: token, .envd, sandbox: "sbx1") == "acme")
        #expect(tokens.tenant(of: token, .envd, sandbox: "sbx2") == nil)
        #expect(tokens.tenant(of: token, .traffic, sandbox: "sbx1") == nil)
        // Naming another tenant in front of a valid MAC does not make it valid for that tenant.
        let mac = token.split(separator: ".").last!
        #expect(tokens.tenant(of: "globex.\(mac)", .envd, sandbox: "sbx1") == nil)
        #expect(tokens.tenant(of: "", .envd, sandbox: "sbx1") == nil)
        #expect(tokens.tenant(of: "acme.", .envd, sandbox: "sbx1") == nil)
    }

    @Test("another secret makes other tokens")
    func secretMatters() throws {
        let other = try SandboxTokens(secret: Data("another-secret-of-16-bytes".utf8))
        let token = tokens.token(.envd, tenant: "acme", sandbox: "sbx1")
        #expect(other.tenant(of: token, .envd, sandbox: "sbx1") == nil)
        #expect(throws: GatewayError.self) { try SandboxTokens(secret: Data("short".utf8)) }
    }
}
