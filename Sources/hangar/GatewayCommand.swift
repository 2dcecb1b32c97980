import ArgumentParser
import Crypto
import Foundation
import HangarGateway
import HangarNATS
import HangarShared
import Logging
import ServiceLifecycle

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the E2B-compatible HTTP gateway: the e2b and e2b-code-interpreter SDKs work against Hangar.",
        discussion: """
            Point the SDKs at it with E2B_API_URL=http://ADDR, E2B_SANDBOX_URL=http://ADDR and \
            E2B_API_KEY=<a key from `hangar tenant add NAME --api-key`>. It logs in to NATS as gateway NAME \
            (--name; `hangar dev` writes the login of gateway `default`). Every gateway of a cluster must share \
            the secret file: sandbox tokens are derived from it. See README, "Use Hangar from the E2B SDK".
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions
    @OptionGroup var options: GatewayOptions

    func run() async throws {
        try log.bootstrap()
        let logger = Logger(label: "hangar.gateway")
        let nats = try await connection.connect(
            name: "hangar-gateway-\(options.name)",
            logger: logger,
            as: .gateway(options.name)
        )
        let secretPath =
            options.secretFile ?? URL(fileURLWithPath: connection.state).appendingPathComponent("gateway.secret").path
        let gateway = try options.makeGateway(nats: nats, secretPath: secretPath, logger: logger)
        let listen = options.listen
        let app = gateway.application { port in
            logger.notice("E2B gateway listening on http://\(listen.host):\(port)")
        }
        let outcome = await completion {
            try await runServiceGroup([.init(service: app, serviceName: "gateway")], logger: logger)
        }
        await nats.drain()
        try outcome.get()
    }
}

/// The gateway's own settings, shared by `hangar gateway` and `hangar dev`.
struct GatewayOptions: ParsableArguments {
    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one).")
    var listen: ListenAddress = ListenAddress(host: "127.0.0.1", port: 49982)
    @Option(name: .customLong("gateway-name"), help: "The gateway's NATS login name (user gateway-NAME).")
    var name: String = "default"
    @Option(
        help:
            "Domain of PORT-SANDBOXID.DOMAIN host names (wildcard DNS), also the `domain` create answers; none by default."
    )
    var domain: String?
    @Option(
        help: """
            File holding the secret sandbox tokens are derived from (shared by every gateway of the cluster). \
            Default: STATE/gateway.secret, made (32 random bytes, mode 0600) if missing.
            """
    )
    var secretFile: String?
    @Option(
        name: .customLong("template"),
        help: """
            An E2B template name and what it means here, E2BNAME=TEMPLATE[@RUNTIME] (repeatable). Defaults: \
            base and code-interpreter-v1 both mean host@process.
            """
    )
    var templates: [String] = []
    @Option(help: "The largest upload /files accepts, in bytes.")
    var maxUpload: Int = 100 << 20

    func validate() throws {
        guard Subjects.isValidToken(name) else {
            throw ValidationError("--gateway-name must be 1-64 of A-Z a-z 0-9 _ -")
        }
        guard maxUpload > 0 else { throw ValidationError("--max-upload must be positive") }
        _ = try templateMappings()
    }

    /// The template table: the defaults, then each --template over them.
    func templateMappings() throws -> [String: GatewayConfiguration.TemplateMapping] {
        var table = GatewayConfiguration.defaultTemplates
        for entry in templates {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw ValidationError("--template must be E2BNAME=TEMPLATE[@RUNTIME], not '\(entry)'")
            }
            let target = parts[1].split(separator: "@", maxSplits: 1).map(String.init)
            table[parts[0]] = .init(template: target[0], runtime: target.count == 2 ? target[1] : "process")
        }
        return table
    }

    /// The gateway over `nats`, with the secret read from (or first written to) `secretPath`.
    func makeGateway(nats: NATSConnection, secretPath: String, logger: Logger) throws -> Gateway {
        let secret = try Self.secret(at: secretPath, create: secretFile == nil)
        let configuration = GatewayConfiguration(
            host: listen.host,
            port: listen.port,
            domain: domain,
            secret: secret,
            templates: try templateMappings(),
            maxUploadBytes: maxUpload
        )
        let directory = SandboxDirectory(connection: nats)
        return Gateway(
            configuration: configuration,
            authority: GatewayAuthority(
                keys: SchedulerAPIKeys(connection: nats),
                tokens: try SandboxTokens(secret: secret),
                directory: directory
            ),
            logger: logger
        )
    }

    /// The secret in `path`; when `create` and there is no such file, 32 random bytes written there first.
    static func secret(at path: String, create: Bool) throws -> Data {
        if let data = FileManager.default.contents(atPath: path) {
            guard data.count >= 16 else { throw CLIError("the gateway secret \(path) is shorter than 16 bytes") }
            return data
        }
        guard create else { throw CLIError("no gateway secret file at \(path) (--secret-file)") }
        let secret = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true
        )
        guard FileManager.default.createFile(atPath: path, contents: secret, attributes: [.posixPermissions: 0o600])
        else { throw CLIError("cannot write the gateway secret \(path)") }
        return secret
    }
}

/// HOST:PORT.
struct ListenAddress: ExpressibleByArgument, Sendable {
    var host: String
    var port: Int

    init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    init?(argument: String) {
        guard let colon = argument.lastIndex(of: ":"), let port = Int(argument[argument.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        let host = String(argument[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        self.init(host: host.isEmpty ? "0.0.0.0" : host, port: port)
    }

    var defaultValueDescription: String { "\(host):\(port)" }
}
