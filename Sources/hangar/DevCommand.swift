import ArgumentParser
import Foundation
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
    @Option(help: "NATS port (default: a free one).")
    var port: Int?
    @OptionGroup var log: LogOptions
    @OptionGroup var scheduling: SchedulingOptions
    @Option(name: .customLong("pool"), help: "A warm pool on every node, RUNTIME:TEMPLATE=MIN:MAX (repeatable).")
    var pools: [String] = []
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        guard (1...64).contains(nodes) else { throw ValidationError("--nodes must be 1...64") }
        guard slots > 0 else { throw ValidationError("--slots must be at least 1") }
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
        try auth.prepareLocalCluster(nodes: nodeIDs, tenants: ["default"], operators: [AuthDefaults.operatorName])
        let natsFolder = stateURL.appendingPathComponent("nats")
        let server = try await LocalNATSServer(
            directory: natsFolder,
            port: port,
            extraConfig: auth.includeLine(fromConfigIn: natsFolder) + "\npid_file: \"\(auth.pidPath)\""
        )
        defer { server.stop() }
        // `hangar tenant add` reads it to see its reload take effect.
        try? FileManager.default.removeItem(atPath: auth.serverLogLinkPath)
        try? FileManager.default.createSymbolicLink(atPath: auth.serverLogLinkPath, withDestinationPath: server.logPath)
        defer {
            try? FileManager.default.removeItem(atPath: auth.serverLogLinkPath)
            // nats-server leaves its pid file behind; a stale one could name another process later.
            try? FileManager.default.removeItem(atPath: auth.pidPath)
        }
        let urlFile = stateURL.appendingPathComponent("url")
        try (server.url + "\n").write(to: urlFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: urlFile) }

        let dbPath = stateURL.appendingPathComponent("hangar.sqlite").path
        let store = try openStore(dbPath)
        func connect(_ name: String, as principal: Principal) async throws -> NATSConnection {
            var options = NATSConnectionOptions(servers: [server.url], name: name, logger: logger)
            try applyCredentials(auth.credentialsPath(for: principal), to: &options)
            return try await NATSConnection(options: options)
        }
        let schedulerConnection = try await connect("hangar-scheduler", as: .scheduler)
        let scheduler = Scheduler(
            config: try scheduling.config(databasePath: dbPath),
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
                    sandboxHost: makeSandboxHost(runtimes: chosenRuntimes, resources: resources, logger: logger),
                    logger: Logger(label: "hangar.node")
                )
            )
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
              NATS      \(server.url)   (saved in \(urlFile.path); authorization on)
              logins    \(auth.url.path)/creds/ (tenant-default, operator-\(AuthDefaults.operatorName), scheduler, nodes)
              database  \(dbPath)
              nodes     \(agents.map(\.config.nodeID).joined(separator: ", ")) with \(slots) slots each, runtimes \(runtimes)
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
