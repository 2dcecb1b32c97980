import Foundation
import HTTPTypes
import HangarClient
import Hummingbird

/// The request context of every gateway route: Hummingbird's core, and for a call into a sandbox
/// the sandbox and port it was addressed to (from the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers
/// or a `PORT-SANDBOXID.DOMAIN` host name).
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The sandbox and port a call into a sandbox is addressed to; nil on the control-plane API.
    public var address: SandboxAddress?

    public init(source: Source) {
        coreContext = .init(source: source)
        address = nil
    }

    /// Uploads are bounded by the gateway's own limit (`GatewayConfiguration.maxUploadBytes`),
    /// checked where bodies are read.
    public var maxUploadSize: Int { 100 << 20 }
}

/// Where a call into a sandbox goes: the sandbox's id and the port the SDK named (49983 is envd's,
/// 49999 the code interpreter's).
public struct SandboxAddress: Sendable, Equatable {
    /// The sandbox id.
    public var sandboxID: String
    /// The port inside the sandbox.
    public var port: Int

    /// envd's port: processes, files, health.
    public static let envdPort = 49983
    /// The code interpreter's port: `/execute`, `/contexts`.
    public static let codeInterpreterPort = 49999

    /// A sandbox address, as given.
    public init(sandboxID: String, port: Int) {
        self.sandboxID = sandboxID
        self.port = port
    }

    /// The address `request` names: the headers first, else a host name `PORT-ID.domain` (when a
    /// domain is configured); nil when it names none (a control-plane call). Throws 400 for a header
    /// that is present but malformed.
    public init?(request: Request, domain: String?) throws {
        if let id = request.headers[.e2bSandboxID] {
            guard Self.isValidID(id) else { throw GatewayError(.badRequest, "invalid E2b-Sandbox-Id header") }
            let portText = request.headers[.e2bSandboxPort] ?? "\(Self.envdPort)"
            guard let port = Int(portText), (1...65535).contains(port) else {
                throw GatewayError(.badRequest, "invalid E2b-Sandbox-Port header: \(portText.prefix(20))")
            }
            self.init(sandboxID: id, port: port)
            return
        }
        guard let domain else { return nil }
        // HTTP/1.1's Host header becomes the request's authority; a proxy may pass it on as a field.
        let hosts = [request.head.authority, request.headers[Self.hostField]].compactMap { $0 }
        guard
            let name = hosts.lazy.map({ $0.split(separator: ":", maxSplits: 1).first.map(String.init) ?? $0 })
                .first(where: { $0.hasSuffix("." + domain) })
        else { return nil }
        let label = name.dropLast(domain.count + 1)
        guard let dash = label.firstIndex(of: "-"), let port = Int(label[..<dash]), (1...65535).contains(port)
        else { return nil }
        let id = String(label[label.index(after: dash)...])
        guard Self.isValidID(id) else { return nil }
        self.init(sandboxID: id, port: port)
    }

    static let hostField = HTTPField.Name("Host")!

    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64
            && id.utf8.allSatisfy {
                ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D
                    || $0 == 0x5F
            }
    }
}

extension HTTPField.Name {
    /// The sandbox a call is for (the SDKs send it when `E2B_SANDBOX_URL` is set).
    public static let e2bSandboxID = HTTPField.Name("E2b-Sandbox-Id")!
    /// The port inside the sandbox a call is for.
    public static let e2bSandboxPort = HTTPField.Name("E2b-Sandbox-Port")!
    /// The tenant's API key, on control-plane calls.
    public static let xAPIKey = HTTPField.Name("X-API-Key")!
    /// The sandbox's envd token, on calls into the sandbox.
    public static let xAccessToken = HTTPField.Name("X-Access-Token")!
    /// The sandbox's traffic token, on calls to the code interpreter's port.
    public static let e2bTrafficAccessToken = HTTPField.Name("E2B-Traffic-Access-Token")!
}
