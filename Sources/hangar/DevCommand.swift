import ArgumentParser
import Foundation
import HangarGateway
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging
import ServiceLifecycle

struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run a local cluster: nats-server (child process), a scheduler and nodes, SQLite in a state folder.",
        discussion: "Ctrl-C stops everything. The NATS URL is saved in STATE/url, where the other commands find it."
    )

    @Option(help: "State folder: SQLite database, nats-server data, the URL file.")
    var state: String = ".hangar"
    @Option(help: "Number of node agents.")
    var nodes: Int = 2
    @Option(help: "Job slots per node.")
    var slots: Int = 8
    @Option(
        help: """
            Runtimes each node offers, comma-separated. Default: every runtime (a runtime this machine \
            cannot run is reported unavailable, with the reason, by `hangar node status`).
            """
    )
    var runtimes: String = "process,container,gvisor,microvm,null"
    @Option(help: "NATS port (default: a free one). Only with one nats-server.")
    var port: Int?
    @Option(
        help: """
            nats-servers to run: 1, or 3 clustered on this machine (every stream and the lease bucket \
            R3; STATE/url lists all three). Default: 1.
            """
    )
    var natsServers: Int = 1
    @OptionGroup var log: LogOptions
    @OptionGroup var scheduling: SchedulingOptions
    @Option(name: .customLong("pool"), help: "A warm pool on every node, RUNTIME:TEMPLATE=MIN:MAX (repeatable).")
    var pools: [String] = []
    @Option(
        name: .customLong("sandbox-pool"),
        help:
            "Sandboxes each node keeps started per runtime (with their python context running) for creates of that runtime with no env."
    )
    var sandboxPool: Int = 0
    @OptionGroup var metrics: MetricsOptions
    @Option(help: "Where the E2B gateway listens, HOST:PORT (port 0 picks a free one; saved in STATE/gateway-url).")
    var gatewayListen: ListenAddress = ListenAddress(host: "127.0.0.1", port: 49982)

    func validate() throws {
        guard (1...64).contains(nodes) else { throw ValidationError("--nodes must be 1...64") }
        guard slots > 0 else { throw ValidationError("--slots must be at least 1") }
        guard (0...64).contains(sandboxPool) else { throw ValidationError("--sandbox-pool must be 0-64") }
        guard [1, 3].contains(natsServers) else { throw ValidationError("--nats-servers must be 1 or 3") }
        guard natsServers == 1 || port == nil else {
            throw ValidationError("--port names one nats-server's port; a cluster of three takes free ones")
        }
    }

    func run() async throws {
        try log.bootstrap()
        let logger = Logger(label: "hangar.dev")
        let stateURL = URL(fileURLWithPath: state).standardizedFileURL
        try FileManager.default.createDirectory(at: stateURL, withIntermediateDirectories: true)
        // Nodes share the dev state folder's template store: `hangar template build --state-dir STATE`.
        var nodeConfig = NodeConfig(nodeID: "", slots: slots)
        try NodeStateOptions.apply(stateDir: stateURL.path, pools: pools, to: &nodeConfig)
        // The dev nodes share their runtimes, and so one machine's sandbox users and cgroups.
        let resources = NodeResources(users: SandboxUsers.standard())
        let chosenRuntimes = try makeRuntimes(runtimes, templates: nodeConfig.templates, resources: resources)

        // Authorization on: every component logs in with its own credentials (STATE/auth/creds/).
        let auth = AuthDirectory(path: stateURL.appendingPathComponent("auth").path)
        let nodeIDs = (1...nodes).map { "dev-node-\($0)" }
        try auth.prepareLocalCluster(
            nodes: nodeIDs,
            tenants: ["default"],
            operators: [AuthDefaults.operatorName],
            gateways: ["default"]
        )
        let natsFolder = stateURL.appendingPathComponent("nats")
        let bus = try await DevBus.start(natsServers, port: port, folder: natsFolder, auth: auth)
        defer { bus.stop() }
        // `hangar tenant add` reloads each server by its pid file and reads its log to see the
        // reload take effect.
        for (index, logPath) in bus.logPaths.enumerated() {
            let link = auth.devServerFiles(index + 1).log
            try? FileManager.default.removeItem(atPath: link)
            try? FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: logPath)
        }
        defer {
            for number in 1...bus.urls.count {
                let files = auth.devServerFiles(number)
                try? FileManager.default.removeItem(atPath: files.log)
                // nats-server leaves its pid file behind; a stale one could name another process later.
                try? FileManager.default.removeItem(atPath: files.pid)
            }
        }
        let urlFile = stateURL.appendingPathComponent("url")
        try (bus.urls.joined(separator: ",") + "\n").write(to: urlFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: urlFile) }

        let dbPath = stateURL.appendingPathComponent("hangar.sqlite").path
        let store = try openStore(dbPath)
        func connect(_ name: String, as principal: Principal) async throws -> NATSConnection {
            var options = NATSConnectionOptions(servers: bus.urls, name: name, logger: logger)
            try applyCredentials(auth.credentialsPath(for: principal), to: &options)
            return try await NATSConnection(options: options)
        }
        let schedulerConnection = try await connect("hangar-scheduler", as: .scheduler)
        var schedulerConfig = try scheduling.config(databasePath: dbPath)
        schedulerConfig.streamReplicas = natsServers
        let scheduler = Scheduler(
            config: schedulerConfig,
            nats: schedulerConnection,
            store: store,
            logger: Logger(label: "hangar.scheduler")
        )
        var agents: [NodeAgent] = []
        var connections = [schedulerConnection]
        for id in nodeIDs {
            let connection = try await connect("hangar-node-\(id)", as: .node(id))
            connections.append(connection)
            nodeConfig.nodeID = id
            agents.append(
                NodeAgent(
                    config: nodeConfig,
                    nats: connection,
                    runtimes: chosenRuntimes,
                    resources: resources,
                    sandboxHost: makeSandboxHost(
                        runtimes: chosenRuntimes,
                        templates: nodeConfig.templates,
                        resources: resources,
                        warmSandboxes: sandboxPool,
                        logger: logger
                    ),
                    logger: Logger(label: "hangar.node")
                )
            )
        }
        // The E2B gateway, logged in as gateway `default`; its URL goes to STATE/gateway-url once it listens.
        let gatewayConnection = try await connect("hangar-gateway", as: .gateway("default"))
        connections.append(gatewayConnection)
        let gatewayOptions = try GatewayOptions.parse(["--listen", "\(gatewayListen.host):\(gatewayListen.port)"])
        let gateway = try gatewayOptions.makeGateway(
            nats: gatewayConnection,
            secretPath: stateURL.appendingPathComponent("gateway.secret").path,
            logger: Logger(label: "hangar.gateway")
        )
        let apiKeyFile = stateURL.appendingPathComponent("e2b-api-key")
        try await ensureDevAPIKey(file: apiKeyFile, store: store)
        let gatewayURLFile = stateURL.appendingPathComponent("gateway-url")
        try? FileManager.default.removeItem(at: gatewayURLFile)
        defer { try? FileManager.default.removeItem(at: gatewayURLFile) }
        let gatewayApp = gateway.application { port in
            let url = "http://\(gatewayListen.host):\(port)"
            try? (url + "\n").write(to: gatewayURLFile, atomically: true, encoding: .utf8)
            let line = """
                E2B gateway listening: export E2B_API_URL=\(url) E2B_SANDBOX_URL=\(url) \
                E2B_API_KEY=$(cat \(apiKeyFile.path))

                """
            FileHandle.standardError.write(Data(line.utf8))
        }
        let allAgents = agents
        let allConnections = connections
        let metricsServer = try await metrics.start {
            await StateGauges.scheduler(scheduler)
            for agent in allAgents { StateGauges.node(agent) }
            StateGauges.nats(allConnections)
        }
        let metricsLine =
            metricsServer.map {
                "  metrics   http://\(metrics.metricsAddress == "0.0.0.0" ? "127.0.0.1" : metrics.metricsAddress):\($0.port)/metrics\n"
            } ?? ""
        let banner = """
            Hangar dev cluster is starting.
              NATS      \(bus.urls.joined(separator: ","))   (saved in \(urlFile.path); authorization on\(natsServers > 1 ? "; streams R\(natsServers)" : ""))
              logins    \(auth.url.path)/creds/ (tenant-default, operator-\(AuthDefaults.operatorName), scheduler, nodes)
              database  \(dbPath)
              nodes     \(agents.map(\.config.nodeID).joined(separator: ", ")) with \(slots) slots each, runtimes \(runtimes)
              E2B API   http://\(gatewayListen.host):\(gatewayListen.port == 0 ? "<free port>" : "\(gatewayListen.port)") (saved in \(gatewayURLFile.path)), API key in \(apiKeyFile.path)
            \(metricsLine)In another terminal (same folder):
              hangar run -- /usr/bin/python3 -c 'print(6*7)'
              hangar node status
              hangar top
              hangar tenant add acme     (then: hangar run --tenant acme -- echo hi)
            Ctrl-C stops everything.

            """
        FileHandle.standardError.write(Data(banner.utf8))
        // The scheduler audits the logins nats-server refuses (through the system account).
        let systemConnection = try await connect("hangar-system", as: .system)
        connections.append(systemConnection)
        // SIGINT/SIGTERM: the audit of refused logins stops, then all nodes together (they kill their
        // jobs and deliver the results), then the scheduler, so that those results are still stored;
        // then metrics, NATS connections and nats-server stop. A scheduler that fails ends the
        // cluster too; the audit's failure does not.
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: scheduler, serviceName: "scheduler"),
            .init(
                service: ClosureService {
                    try await withThrowingDiscardingTaskGroup { group in
                        for agent in allAgents { group.addTask { try await agent.run() } }
                    }
                },
                serviceName: "nodes"
            ),
            .init(
                service: ClosureService {
                    try await cancelWhenGracefulShutdown {
                        try await scheduler.auditAuthFailures(from: systemConnection)
                    }
                },
                successTerminationBehavior: .ignore,
                failureTerminationBehavior: .ignore,
                serviceName: "auth-audit"
            ),
            // Last in, first out: the gateway stops taking calls before the nodes and scheduler stop.
            .init(service: gatewayApp, serviceName: "gateway"),
        ]
        let outcome = await completion {
            try await runServiceGroup(
                services,
                stopping:
                    "stopping: nodes kill running jobs and deliver their results, then the scheduler and nats-server stop",
                logger: logger
            )
        }
        await metricsServer?.stop()
        for connection in connections { await connection.drain(timeout: .seconds(2)) }
        try outcome.get()
    }
}

/// The dev tenant's E2B API key: the one kept in `file` (mode 0600) from an earlier run, else a new one
/// written there; its hash goes into the store for tenant `default` unless it is there already.
func ensureDevAPIKey(file: URL, store: Store) async throws {
    var key = (try? String(contentsOf: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    if !key.hasPrefix(GatewayAPIKey.prefix) {
        key = GatewayAPIKey.generate()
        guard
            FileManager.default.createFile(
                atPath: file.path,
                contents: Data((key + "\n").utf8),
                attributes: [.posixPermissions: 0o600]
            )
        else { throw CLIError("cannot write the dev API key to \(file.path)") }
    }
    let hash = GatewayAPIKey.sha256(key)
    if let stored = try await store.apiKey(hash: hash), stored.revokedAtMs == 0 { return }
    if try await store.apiKey(hash: hash) != nil {
        throw CLIError("the dev API key in \(file.path) was revoked; delete the file for a new one")
    }
    let created = StoredAPIKey(
        hash: hash,
        tenant: "default",
        createdAtMs: unixMilliseconds(),
        createdBy: "hangar dev"
    )
    try await store.write(.apiKey(.created(created)))
}

/// The nats-servers of `hangar dev`: one, or three clustered. Each writes its pid to the auth
/// folder's dev server file, so that `hangar tenant add` can reload them all.
struct DevBus {
    let urls: [String]
    let logPaths: [String]
    let stop: @Sendable () -> Void

    static func start(_ count: Int, port: Int?, folder: URL, auth: AuthDirectory) async throws -> DevBus {
        if count == 1 {
            let server = try await LocalNATSServer(
                directory: folder,
                port: port,
                extraConfig: auth.includeLine(fromConfigIn: folder) + "\npid_file: \"\(auth.pidPath)\""
            )
            return DevBus(urls: [server.url], logPaths: [server.logPath], stop: { server.stop() })
        }
        // Every member's configuration sits one folder down (nats/n1, nats/n2, ...): one include line
        // fits them all.
        let cluster = try await LocalNATSCluster(
            size: count,
            directory: folder,
            extraConfig: auth.includeLine(fromConfigIn: folder.appendingPathComponent("n1")),
            memberConfig: { index in "pid_file: \"\(auth.devServerFiles(index + 1).pid)\"" }
        )
        return DevBus(
            urls: cluster.urls,
            logPaths: (0..<count).map { cluster.logPath(of: $0) },
            stop: { cluster.stop() }
        )
    }
}
