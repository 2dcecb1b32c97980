import Foundation
import HTTPTypes
import HangarClient
import Hummingbird
import Logging
import NIOCore

/// The E2B-compatible gateway: an HTTP server that answers the `e2b` and `e2b-code-interpreter` SDKs
/// by calling the cluster over NATS, as the tenant whose API key or sandbox token came with the call.
///
/// One listener serves three APIs, told apart per request: a call that names a sandbox (the
/// `E2b-Sandbox-Id` header the SDKs send when `E2B_SANDBOX_URL` is set, or a `PORT-ID.DOMAIN` host)
/// goes to that sandbox's envd API (port 49983) or code-interpreter API (port 49999); any other call
/// is the control-plane REST API (`/sandboxes`, `/v2/sandboxes`).
public struct Gateway: Sendable {
    /// How it serves.
    public let configuration: GatewayConfiguration
    /// Who is calling, and the cluster.
    public let authority: GatewayAuthority
    /// Its log.
    public let logger: Logger

    /// A gateway with `configuration`, checking callers with `authority`.
    public init(configuration: GatewayConfiguration, authority: GatewayAuthority, logger: Logger) {
        self.configuration = configuration
        self.authority = authority
        self.logger = logger
    }

    /// The responder of every request (routing as described above).
    public func responder() -> some HTTPResponder<GatewayContext> {
        let control = Router(context: GatewayContext.self)
        addControlPlaneRoutes(to: control)
        let envd = Router(context: GatewayContext.self)
        envd.get("/health") { request, context in await health(request, context) }
        addProcessRoutes(to: envd)
        addFilesystemRoutes(to: envd)
        addFileTransferRoutes(to: envd)
        let interpreter = Router(context: GatewayContext.self)
        interpreter.get("/health") { request, context in await health(request, context) }
        addCodeInterpreterRoutes(to: interpreter)
        return GatewayResponder(
            control: control.buildResponder(),
            envd: envd.buildResponder(),
            interpreter: interpreter.buildResponder(),
            domain: configuration.domain
        )
    }

    /// `/health` of a sandbox: 204 while it runs, 502 "was not found" once it has ended (the SDKs'
    /// `is_running()` and their probe after a failed call), 401 without its token.
    @Sendable func health(_ request: Request, _ context: GatewayContext) async -> Response {
        guard let address = context.address else { return Response(status: .notFound) }
        do {
            // Asked of the scheduler each time: a sandbox that timed out or was killed elsewhere is
            // not running whatever the directory saw a moment ago.
            _ = try await authority.sandbox(for: request, at: address, fresh: true)
            return Response(status: .noContent)
        } catch {
            return GatewayError.from(error).restResponse
        }
    }

    /// The HTTP application; `onRunning` is told the port it listens on.
    public func application(
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        Application(
            responder: responder(),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: "hangar-gateway"
            ),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger
        )
    }
}

/// Sends each request to the API it is for (see ``Gateway``).
struct GatewayResponder<
    Control: HTTPResponder<GatewayContext>,
    Envd: HTTPResponder<GatewayContext>,
    Interpreter: HTTPResponder<GatewayContext>
>: HTTPResponder {
    let control: Control
    let envd: Envd
    let interpreter: Interpreter
    let domain: String?

    func respond(to request: Request, context: GatewayContext) async throws -> Response {
        let address: SandboxAddress?
        do {
            address = try SandboxAddress(request: request, domain: domain)
        } catch {
            return GatewayError.from(error).restResponse
        }
        guard let address else { return try await control.respond(to: request, context: context) }
        var context = context
        context.address = address
        switch address.port {
        case SandboxAddress.envdPort: return try await envd.respond(to: request, context: context)
        case SandboxAddress.codeInterpreterPort: return try await interpreter.respond(to: request, context: context)
        default:
            // E2B's proxy answers a port nothing listens on with 502 and this wording (the SDK turns it
            // into its own exception).
            return GatewayError(
                .badGateway,
                "The sandbox is running but port is not open: port \(address.port) of sandbox \(address.sandboxID) is not served by the Hangar gateway"
            ).restResponse
        }
    }
}
