import ArgumentParser
import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging

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
    @Option(help: "Runtimes each node offers, comma-separated.")
    var runtimes: String = "process,container,gvisor,null"
    @Option(help: "NATS port (default: a free one).")
    var port: Int?
    @OptionGroup var log: LogOptions
    @OptionGroup var scheduling: SchedulingOptions
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
        let chosenRuntimes = try makeRuntimes(runtimes)

        let server = try await LocalNATSServer(directory: stateURL.appendingPathComponent("nats"), port: port)
        defer { server.stop() }
        let urlFile = stateURL.appendingPathComponent("url")
        try (server.url + "\n").write(to: urlFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: urlFile) }

        let dbPath = stateURL.appendingPathComponent("hangar.sqlite").path
        let store = try openStore(dbPath)
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name, logger: logger))
        }
        let schedulerConnection = try await connect("hangar-scheduler")
        let scheduler = Scheduler(
            config: try scheduling.config(databasePath: dbPath),
            nats: schedulerConnection,
            store: store,
            logger: Logger(label: "hangar.scheduler")
        )
        var agents: [NodeAgent] = []
        var connections = [schedulerConnection]
        for index in 1...nodes {
            let id = "dev-node-\(index)"
            let connection = try await connect("hangar-node-\(id)")
            connections.append(connection)
            agents.append(
                NodeAgent(
                    config: NodeConfig(nodeID: id, slots: slots),
                    nats: connection,
                    runtimes: chosenRuntimes,
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
              NATS      \(server.url)   (saved in \(urlFile.path))
              database  \(dbPath)
              nodes     \(agents.map(\.config.nodeID).joined(separator: ", ")) with \(slots) slots each, runtimes \(runtimes)
            \(metricsLine)In another terminal (same folder):
              hangar run -- /usr/bin/python3 -c 'print(6*7)'
              hangar node status
              hangar top
            Ctrl-C stops everything.

            """
        FileHandle.standardError.write(Data(banner.utf8))
        // Nodes stop first, so the results of the jobs they kill still reach a running scheduler.
        // `ended` finishes when the scheduler stops; waiting on it (unlike on the task's result) ends
        // when the waiter is cancelled, so stopping the group does not wait for the scheduler.
        let (ended, schedulerEnded) = AsyncStream.makeStream(of: Void.self)
        let schedulerTask = Task {
            defer { schedulerEnded.finish() }
            try await scheduler.run()
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for agent in agents {
                group.addTask { try await agent.run() }
            }
            group.addTask { _ = await waitForShutdownSignal() }
            group.addTask {
                // A scheduler that fails ends the cluster too.
                for await _ in ended {}
            }
            try await group.next()
            logger.notice(
                "stopping: nodes kill running jobs and deliver their results, then the scheduler and nats-server stop"
            )
            group.cancelAll()
            try await group.waitForAll()
        }
        schedulerTask.cancel()
        try await schedulerTask.value
        await metricsServer?.stop()
        for connection in connections { await connection.drain(timeout: .seconds(2)) }
    }
}
