import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging

/// A real nats-server with Hangar's generated authorization on, a scheduler and a node logged in
/// as themselves, two tenants `a` and `b`, and an E2B gateway `gw` (log in with `login(.gateway("gw"))`).
public final class AuthorizedCluster: Sendable {
    public let directory: URL
    public let auth: AuthDirectory
    public let server: LocalNATSServer
    public let scheduler: Scheduler
    public let tenantA: NATSConnection
    public let tenantB: NATSConnection
    private let connections: [NATSConnection]
    private let tasks: [Task<Void, any Error>]

    /// A cluster whose node `n1` offers `runtimes` and holds stateful sandboxes in `sandboxHost`.
    public static func start(
        runtimes: [any Runtime] = [NullRuntime()],
        sandboxHost: any SandboxHost = NullSandboxHost(),
        templates: TemplateStore? = nil
    ) async throws -> AuthorizedCluster {
        let directory = try makeTemporaryDirectory("hangar-auth")
        let auth = AuthDirectory(path: directory.appendingPathComponent("auth").path)
        try auth.prepareLocalCluster(nodes: ["n1"], tenants: ["a", "b"], operators: ["ops"], gateways: ["gw"])
        let server = try await startAuthorizedServer(auth, in: directory)
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        func login(_ principal: Principal) async throws -> NATSConnection {
            let (credentials, _) = try auth.ensure(principal)
            return try await connectForTest(server, credentials: credentials, name: principal.user)
        }
        let schedulerConnection = try await login(.scheduler)
        let databasePath = directory.appendingPathComponent("hangar.sqlite").path
        let scheduler = Scheduler(
            config: SchedulerConfig(databasePath: databasePath),
            nats: schedulerConnection,
            store: try Store(path: databasePath),
            logger: logger
        )
        let nodeConnection = try await login(.node("n1"))
        var nodeConfig = NodeConfig(nodeID: "n1", slots: 4)
        nodeConfig.heartbeatInterval = .milliseconds(200)
        nodeConfig.templates = templates
        let agent = NodeAgent(
            config: nodeConfig,
            nats: nodeConnection,
            runtimes: runtimes,
            sandboxHost: sandboxHost,
            logger: logger
        )
        let systemConnection = try await login(.system)
        let tasks = [
            Task { try await scheduler.run() }, Task { try await agent.run() },
            Task { try await scheduler.auditAuthFailures(from: systemConnection) },
        ]
        let cluster = AuthorizedCluster(
            directory: directory,
            auth: auth,
            server: server,
            scheduler: scheduler,
            tenantA: try await login(.tenant("a")),
            tenantB: try await login(.tenant("b")),
            connections: [schedulerConnection, nodeConnection, systemConnection],
            tasks: tasks
        )
        try await cluster.waitUntilServing()
        try await cluster.waitForProbes(runtimes.count)
        return cluster
    }

    /// Waits until the scheduler has seen the node's probe of every runtime it offers: a slow probe
    /// (machines are shared) would otherwise have the first create or job for that runtime
    /// refused NO_CAPACITY.
    private func waitForProbes(_ count: Int) async throws {
        let operatorConnection = try await login(.operator("ops"))
        defer { Task { await operatorConnection.close() } }
        let deadline = ContinuousClock.now + .seconds(30)
        var seen = 0
        while ContinuousClock.now < deadline {
            if let answer = try? await operatorConnection.request(
                Subjects.admin("nodes"),
                payload: try Hangar_V1_NodesRequest().serializedData(),
                timeout: .seconds(2)
            ), let reply = try? Hangar_V1_NodesReply(serializedBytes: answer.payload) {
                seen = reply.nodes.first?.lastHeartbeat.runtimes.count ?? 0
                if seen >= count { return }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw LocalNATSServerError("the node had probed \(seen) of its \(count) runtimes after 30 s")
    }

    private init(
        directory: URL,
        auth: AuthDirectory,
        server: LocalNATSServer,
        scheduler: Scheduler,
        tenantA: NATSConnection,
        tenantB: NATSConnection,
        connections: [NATSConnection],
        tasks: [Task<Void, any Error>]
    ) {
        self.directory = directory
        self.auth = auth
        self.server = server
        self.scheduler = scheduler
        self.tenantA = tenantA
        self.tenantB = tenantB
        self.connections = connections
        self.tasks = tasks
    }

    /// Waits until tenant `a` can run a job end to end (scheduler subscribed, node joined).
    private func waitUntilServing() async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if let reply = try? await submit(nullJob(wait: true), as: tenantA, tenant: "a", timeout: .seconds(2)),
                case .result = reply.outcome
            {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw LocalNATSServerError("the authorized cluster did not run a job within 15 s")
    }

    public func login(_ principal: Principal) async throws -> NATSConnection {
        let (credentials, _) = try auth.ensure(principal)
        return try await connectForTest(server, credentials: credentials, name: principal.user)
    }

    public func submit(
        _ request: Hangar_V1_SubmitRequest,
        as connection: NATSConnection,
        tenant: String,
        timeout: Duration = .seconds(10)
    ) async throws -> Hangar_V1_SubmitReply {
        let answer = try await connection.request(
            Subjects.submit(tenant: tenant),
            payload: try request.serializedData(),
            timeout: timeout
        )
        return try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
    }

    /// The credentials file of `tenant` (as `hangar tenant add` writes it).
    public func credentialsFile(tenant: String) -> String { auth.credentialsPath(for: .tenant(tenant)) }

    public func stop() async {
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        for connection in connections + [tenantA, tenantB] { await connection.close() }
        server.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

public func nullJob(wait: Bool) -> Hangar_V1_SubmitRequest {
    var request = Hangar_V1_SubmitRequest()
    request.argv = ["true"]
    request.runtime = "null"
    request.wait = wait
    return request
}

public func withAuthorizedCluster(_ body: (AuthorizedCluster) async throws -> Void) async throws {
    let cluster = try await AuthorizedCluster.start()
    do {
        try await body(cluster)
    } catch {
        await cluster.stop()
        throw error
    }
    await cluster.stop()
}

/// Runs `body` with an authorized cluster whose node `n1` holds real bubblewrap sandboxes (the
/// `process` runtime, the real `hangar-sandbox-agent`); kills every sandbox and stops the cluster
/// however `body` ends.
public func withSandboxCluster(_ body: (AuthorizedCluster, ProcessSandboxHost) async throws -> Void) async throws {
    guard let agentPath = ProcessSandbox.locateAgent() else {
        throw LocalNATSServerError("hangar-sandbox-agent is not built")
    }
    let host = ProcessSandboxHost(agentPath: agentPath)
    let cluster = try await AuthorizedCluster.start(runtimes: [ProcessRuntime(), NullRuntime()], sandboxHost: host)
    do {
        try await body(cluster, host)
    } catch {
        for id in host.sandboxIDs { await host.kill(id, reason: "the test failed") }
        await cluster.stop()
        throw error
    }
    for id in host.sandboxIDs { await host.kill(id, reason: "the test ended") }
    await cluster.stop()
}

/// Waits until `condition` holds, checking every 20 ms for at most `within`; fails naming `what`.
public func waitUntil(
    _ what: String,
    within: Duration = .seconds(10),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + within
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw LocalNATSServerError("timed out after \(within) waiting until \(what)")
}
