import ArgumentParser
import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging

struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Run the central scheduler (SQLite store, NATS intake)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions
    @Option(help: "SQLite database file (its folder is created).")
    var db: String = ".hangar/hangar.sqlite"
    @Option(
        help:
            "Login in nats-server's system account, to audit refused logins (default: STATE/auth/creds/system.json if it exists)."
    )
    var systemCreds: String?
    @OptionGroup var scheduling: SchedulingOptions

    func run() async throws {
        HangarLogging.bootstrap(level: try log.level())
        let logger = Logger(label: "hangar.scheduler")
        let store = try openStore(db)
        let config = try scheduling.config(databasePath: db)
        let nats = try await connection.connect(name: "hangar-scheduler", logger: logger, as: .scheduler)
        let scheduler = Scheduler(config: config, nats: nats, store: store, logger: logger)
        let system = try await connectSystem(logger: logger)
        try await runUntilSignal {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await scheduler.run() }
                if let system { group.addTask { try await scheduler.auditAuthFailures(from: system) } }
            }
        }
        await nats.drain()
        await system?.close()
    }

    /// The system-account login, if one is given or `hangar dev` wrote one.
    private func connectSystem(logger: Logger) async throws -> NATSConnection? {
        let devFile = AuthDirectory(path: URL(fileURLWithPath: connection.state).appendingPathComponent("auth").path)
            .credentialsPath(for: .system)
        guard let file = systemCreds ?? (FileManager.default.fileExists(atPath: devFile) ? devFile : nil) else {
            return nil
        }
        var options = NATSConnectionOptions(
            servers: connection.servers,
            name: "hangar-scheduler-system",
            logger: logger
        )
        try applyCredentials(file, to: &options)
        do {
            return try await NATSConnection(options: options)
        } catch  where systemCreds == nil {
            logger.warning("not auditing refused logins: the system login \(file) failed: \(error)")
            return nil
        }
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a node agent that executes jobs in sandboxes."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions
    @Option(help: "Node id, unique in the cluster (A-Z a-z 0-9 _ -).")
    var id: String = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "node"
    @Option(help: "Jobs run at once.")
    var slots: Int = 8
    @Option(help: "Runtimes to offer, comma-separated (process, container, gvisor, null).")
    var runtimes: String = "process,container,gvisor,null"
    @Option(name: .customLong("label"), help: "A node label KEY=VALUE that jobs can require (repeatable).")
    var labels: [String] = []

    func validate() throws {
        guard Subjects.isValidToken(id) else {
            throw ValidationError("--id must be 1-64 characters of A-Z a-z 0-9 _ -")
        }
        guard slots > 0 else { throw ValidationError("--slots must be at least 1") }
    }

    func run() async throws {
        HangarLogging.bootstrap(level: try log.level())
        let logger = Logger(label: "hangar.node")
        var config = NodeConfig(nodeID: id, slots: slots)
        config.labels = try parseLabels(labels)
        let chosen = try makeRuntimes(runtimes)
        let nats = try await connection.connect(name: "hangar-node-\(id)", logger: logger, as: .node(id))
        let agent = NodeAgent(config: config, nats: nats, runtimes: chosen, logger: logger)
        try await runUntilSignal { try await agent.run() }
        await nats.drain()
    }
}

/// Scheduler settings shared by `hangar scheduler` and `hangar dev`.
struct SchedulingOptions: ParsableArguments {
    @Option(
        help:
            "Tenants file (YAML: weights, quotas, rate limits, allowed runtimes; see README). Re-read when it changes."
    )
    var tenants: String?
    @Option(help: "Placement policy: spread or binpack.")
    var placement: String = "spread"
    @Option(help: "Seconds without a heartbeat before a node counts as down (TTL; a grace follows).")
    var nodeTTL: Double = 3
    @Option(help: "Grace seconds after the TTL before a node is down and its jobs are retried.")
    var nodeGrace: Double = 2
    @Option(help: "Seconds a job may wait for capacity before it is rejected with no_capacity.")
    var queueTimeout: Double = 30
    @Option(help: "Days to keep stored results and audit rows (pruned with an audit checkpoint). Default: forever.")
    var retentionDays: Double?

    func config(databasePath: String) throws -> SchedulerConfig {
        var config = SchedulerConfig(databasePath: databasePath)
        guard let policy = PlacementPolicy(rawValue: placement) else {
            throw ValidationError("--placement must be spread or binpack")
        }
        config.placementPolicy = policy
        guard nodeTTL >= 1.5, nodeGrace >= 0, queueTimeout > 0 else {
            throw ValidationError(
                "--node-ttl must be at least 1.5 s (nodes report every second), --queue-timeout above 0, --node-grace at least 0"
            )
        }
        config.nodeTTL = .milliseconds(Int64(nodeTTL * 1000))
        config.nodeGrace = .milliseconds(Int64(nodeGrace * 1000))
        config.queueTimeout = .milliseconds(Int64(queueTimeout * 1000))
        if let retentionDays {
            guard retentionDays > 0, retentionDays < 100_000 else {
                throw ValidationError("--retention-days must be above 0")
            }
            config.retention = .milliseconds(Int64(retentionDays * 86_400_000))
        }
        if let tenants {
            do {
                config.tenants = try TenantDirectory.load(path: tenants)
            } catch {
                throw CLIError("tenants file: \(error)")
            }
            config.tenantsFile = tenants
        }
        return config
    }
}

/// Runs `body` until it returns or SIGINT/SIGTERM arrives; then cancels it and waits for it.
func runUntilSignal(_ body: @escaping @Sendable () async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await body() }
        group.addTask { _ = await waitForShutdownSignal() }
        try await group.next()
        group.cancelAll()
        try await group.waitForAll()
    }
}

func openStore(_ path: String) throws -> Store {
    let url = URL(fileURLWithPath: path)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    do {
        return try Store(path: url.path)
    } catch {
        throw CLIError("cannot open the store at \(url.path): \(error)")
    }
}

func makeRuntimes(_ list: String) throws -> [any Runtime] {
    try list.split(separator: ",").map { name -> any Runtime in
        switch name.trimmingCharacters(in: .whitespaces) {
        case "process": ProcessRuntime()
        case "container": ContainerRuntime()
        case "gvisor": GVisorRuntime()
        case "null": NullRuntime()
        default: throw ValidationError("unknown runtime '\(name)'; a node can offer: process, container, gvisor, null")
        }
    }
}

func parseLabels(_ labels: [String]) throws -> [String: String] {
    var result: [String: String] = [:]
    for label in labels {
        let parts = label.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, !parts[0].isEmpty else {
            throw ValidationError("--label must be KEY=VALUE, got '\(label)'")
        }
        result[String(parts[0])] = String(parts[1])
    }
    return result
}
