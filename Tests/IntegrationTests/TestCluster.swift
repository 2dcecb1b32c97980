import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import SwiftProtobuf

/// A real cluster for one test: nats-server on a free loopback port, a scheduler with a SQLite file
/// in a temp folder, and node agents, all talking over NATS.
final class TestCluster: Sendable {
    let server: LocalNATSServer
    let directory: URL
    let databasePath: String
    let scheduler: Scheduler
    let client: NATSConnection
    private let connections: [NATSConnection]
    private let tasks: [Task<Void, any Error>]
    /// The node agents, node-1 first.
    let agents: [NodeAgent]
    /// Each node agent's stateful sandbox host (stand-ins that hold ids), node-1 first.
    let sandboxHosts: [NullSandboxHost]

    static func start(
        nodes: Int = 2,
        slots: Int = 8,
        runtimes: [any Runtime] = [ProcessRuntime(), NullRuntime()],
        settings: SchedulerSettings = SchedulerSettings(),
        waitForProbes: Bool = true,
        configureNode: (Int, inout NodeConfig) -> Void = { _, _ in }
    ) async throws -> TestCluster {
        let directory = try makeTemporaryDirectory("hangar-cluster")
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name, logger: logger))
        }
        let databasePath = directory.appendingPathComponent("hangar.sqlite").path
        let schedulerConnection = try await connect("scheduler")
        var config = SchedulerConfig(databasePath: databasePath)
        config.queueTimeout = .seconds(60)
        // Generous: CI runs sandbox-heavy suites alongside; a slow ack must not look like a dead node.
        config.assignTimeout = .seconds(10)
        settings.apply(to: &config)
        let scheduler = Scheduler(
            config: config,
            nats: schedulerConnection,
            store: try Store(path: databasePath),
            logger: logger
        )
        var connections = [schedulerConnection]
        var tasks: [Task<Void, any Error>] = [Task { try await scheduler.run() }]
        var agents: [NodeAgent] = []
        var sandboxHosts: [NullSandboxHost] = []
        for index in 1...max(1, nodes) where nodes > 0 {
            let connection = try await connect("node-\(index)")
            connections.append(connection)
            var nodeConfig = NodeConfig(nodeID: "node-\(index)", slots: slots)
            nodeConfig.heartbeatInterval = .milliseconds(200)
            configureNode(index, &nodeConfig)
            let sandboxHost = NullSandboxHost()
            let agent = NodeAgent(
                config: nodeConfig,
                nats: connection,
                runtimes: runtimes,
                sandboxHost: sandboxHost,
                logger: logger
            )
            tasks.append(Task { try await agent.run() })
            agents.append(agent)
            sandboxHosts.append(sandboxHost)
        }
        let client = try await connect("client")
        let cluster = TestCluster(
            server: server,
            directory: directory,
            databasePath: databasePath,
            scheduler: scheduler,
            client: client,
            connections: connections,
            tasks: tasks,
            agents: agents,
            sandboxHosts: sandboxHosts
        )
        try await cluster.waitForNodes(nodes, runtimes: waitForProbes ? runtimes.count : 0)
        return cluster
    }

    private init(
        server: LocalNATSServer,
        directory: URL,
        databasePath: String,
        scheduler: Scheduler,
        client: NATSConnection,
        connections: [NATSConnection],
        tasks: [Task<Void, any Error>],
        agents: [NodeAgent],
        sandboxHosts: [NullSandboxHost]
    ) {
        self.server = server
        self.directory = directory
        self.databasePath = databasePath
        self.scheduler = scheduler
        self.client = client
        self.connections = connections
        self.tasks = tasks
        self.agents = agents
        self.sandboxHosts = sandboxHosts
    }

    /// Waits until the scheduler has heard from `count` nodes, each with the answers of at least
    /// `runtimes` runtime probes (a node serves after 2 s without its slower probes; on a loaded
    /// machine a test's first job must not find its runtime still missing).
    func waitForNodes(_ count: Int, runtimes: Int = 0) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if let answer = try? await client.request(
                Subjects.admin("nodes"),
                payload: try Hangar_V1_NodesRequest().serializedData(),
                timeout: .seconds(2)
            ), let reply = try? Hangar_V1_NodesReply(serializedBytes: answer.payload),
                reply.nodes.filter({ $0.state == .up && $0.lastHeartbeat.runtimes.count >= runtimes }).count >= count
            {
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw LocalNATSServerError(
            "the scheduler did not see \(count) nodes with \(runtimes) probed runtimes within 15 s"
        )
    }

    /// Submits on `tenant`'s subject and returns the decoded reply.
    func submit(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String = "acme",
        timeout: Duration = .seconds(60)
    ) async throws -> Hangar_V1_SubmitReply {
        let answer = try await client.request(
            Subjects.submit(tenant: tenant),
            payload: try request.serializedData(),
            timeout: timeout
        )
        return try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
    }

    /// Submits in wait mode and returns the result (fails the test if the reply is not a result).
    func run(_ request: Hangar_V1_SubmitRequest, tenant: String = "acme") async throws -> Hangar_V1_Result {
        var request = request
        request.wait = true
        let reply = try await submit(request, tenant: tenant)
        guard case .result(let result) = reply.outcome else {
            throw LocalNATSServerError("expected a result, got \(reply)")
        }
        return result
    }

    /// Stops the scheduler (its subscriptions end; nodes keep running and keep resending results).
    func stopScheduler() async {
        tasks[0].cancel()
        _ = try? await tasks[0].value
        // Its connection goes too, as when its process ends: a pull request it left pending in
        // nats-server (the client side gave up first) would otherwise take the next message and
        // hold it, unacknowledged, for the consumer's ack wait (30 s).
        await connections[0].close()
    }

    /// Starts another scheduler on the same database, as after a restart. The caller cancels the task.
    func startScheduler(
        settings: SchedulerSettings = SchedulerSettings()
    ) async throws -> (Scheduler, Task<Void, any Error>) {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let connection = try await NATSConnection(
            options: NATSConnectionOptions(servers: [server.url], name: "scheduler-2", logger: logger)
        )
        var config = SchedulerConfig(databasePath: databasePath)
        config.queueTimeout = .seconds(60)
        // Generous: CI runs sandbox-heavy suites alongside; a slow ack must not look like a dead node.
        config.assignTimeout = .seconds(10)
        settings.apply(to: &config)
        let scheduler = Scheduler(
            config: config,
            nats: connection,
            store: try Store(path: databasePath),
            logger: logger
        )
        return (scheduler, Task { try await scheduler.run() })
    }

    /// Kills node `index` (1-based) as a crash would: its connection drops, so no heartbeat and no
    /// result leaves it again.
    func crashNode(_ index: Int) async {
        await connections[index].close()
        tasks[index].cancel()
    }

    /// Sends an admin request and decodes the reply.
    func admin<Reply: SwiftProtobuf.Message>(
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        as: Reply.Type
    ) async throws -> Reply {
        let answer = try await client.request(
            Subjects.admin(verb),
            payload: try request.serializedData(),
            timeout: .seconds(5)
        )
        return try Reply(serializedBytes: answer.payload)
    }

    func stop() async {
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        await client.close()
        for connection in connections { await connection.close() }
        server.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

func command(_ argv: String..., runtime: String = "process", timeoutMs: UInt32 = 0) -> Hangar_V1_SubmitRequest {
    var request = Hangar_V1_SubmitRequest()
    request.argv = argv
    request.runtime = runtime
    request.limits.timeoutMs = timeoutMs
    return request
}

/// Runs `body` against a fresh cluster and always stops it.
func withCluster(
    nodes: Int = 2,
    slots: Int = 8,
    runtimes: [any Runtime] = [ProcessRuntime(), NullRuntime()],
    settings: SchedulerSettings = SchedulerSettings(),
    _ body: (TestCluster) async throws -> Void
) async throws {
    let cluster = try await TestCluster.start(nodes: nodes, slots: slots, runtimes: runtimes, settings: settings)
    do {
        try await body(cluster)
    } catch {
        await cluster.stop()
        throw error
    }
    await cluster.stop()
}

/// A control-plane stand-in for a sandbox: answers as the `null` runtime after `delay`, so jobs
/// occupy their slots for a while. Cancellation ends it early as CANCELLED.
struct DelayRuntime: Runtime {
    let name = "null"
    let delay: Duration

    func probe() async -> RuntimeProbe { RuntimeProbe(available: true, detail: "delay \(delay)") }

    func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        do {
            try await Task.sleep(for: delay)
        } catch {
            return RunOutcome(status: .cancelled)
        }
        return RunOutcome(status: .succeeded)
    }
}

/// Scheduler settings a test changes from the defaults.
struct SchedulerSettings {
    var nodeTTL: Duration?
    var nodeGrace: Duration?
    var tenantsFile: String?
    var queueTimeout: Duration?
    var unlistedGrace: Duration?
    /// false: the scheduler leaves submissions in the intake stream (dies before its SQLite commit).
    var consumeIntake = true
    var intakeLossGrace: Duration?

    func apply(to config: inout SchedulerConfig) {
        config.consumeIntake = consumeIntake
        if let nodeTTL { config.nodeTTL = nodeTTL }
        if let nodeGrace { config.nodeGrace = nodeGrace }
        if let tenantsFile { config.tenantsFile = tenantsFile }
        if let queueTimeout { config.queueTimeout = queueTimeout }
        if let unlistedGrace { config.unlistedGrace = unlistedGrace }
        if let intakeLossGrace { config.intakeLossGrace = intakeLossGrace }
    }
}
