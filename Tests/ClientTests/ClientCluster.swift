import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import SwiftProtobuf

/// A real nats-server with Hangar's generated authorization on, a scheduler and a node `n1` logged
/// in as themselves, and two tenants `a` and `b` (as the integration tests' `AuthorizedCluster`,
/// which lives in another test target).
final class ClientCluster: Sendable {
    let directory: URL
    let auth: AuthDirectory
    let server: LocalNATSServer
    let tenantA: NATSConnection
    let tenantB: NATSConnection
    private let connections: [NATSConnection]
    private let tasks: [Task<Void, any Error>]

    /// A cluster whose node `n1` offers `runtimes` and holds stateful sandboxes in `sandboxHost`.
    static func start(runtimes: [any Runtime], sandboxHost: any SandboxHost) async throws -> ClientCluster {
        let directory = try makeTemporaryDirectory("hangar-client")
        let auth = AuthDirectory(path: directory.appendingPathComponent("auth").path)
        try auth.prepareLocalCluster(nodes: ["n1"], tenants: ["a", "b"], operators: ["ops"])
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
        let agent = NodeAgent(
            config: nodeConfig,
            nats: nodeConnection,
            runtimes: runtimes,
            sandboxHost: sandboxHost,
            logger: logger
        )
        let tasks = [Task { try await scheduler.run() }, Task { try await agent.run() }]
        let cluster = ClientCluster(
            directory: directory,
            auth: auth,
            server: server,
            tenantA: try await login(.tenant("a")),
            tenantB: try await login(.tenant("b")),
            connections: [schedulerConnection, nodeConnection],
            tasks: tasks
        )
        try await cluster.waitUntilServing()
        return cluster
    }

    private init(
        directory: URL,
        auth: AuthDirectory,
        server: LocalNATSServer,
        tenantA: NATSConnection,
        tenantB: NATSConnection,
        connections: [NATSConnection],
        tasks: [Task<Void, any Error>]
    ) {
        self.directory = directory
        self.auth = auth
        self.server = server
        self.tenantA = tenantA
        self.tenantB = tenantB
        self.connections = connections
        self.tasks = tasks
    }

    /// Waits until tenant `a` can run a job end to end (scheduler subscribed, node joined).
    private func waitUntilServing() async throws {
        var job = Hangar_V1_SubmitRequest()
        job.argv = ["true"]
        job.runtime = "null"
        job.wait = true
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if let answer = try? await tenantA.request(
                Subjects.submit(tenant: "a"),
                payload: try job.serializedData(),
                timeout: .seconds(2)
            ),
                let reply = try? Hangar_V1_SubmitReply(serializedBytes: answer.payload),
                case .result = reply.outcome
            {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw LocalNATSServerError("the cluster did not run a job within 15 s")
    }

    /// The credentials file of `tenant` (as `hangar tenant add` writes it).
    func credentialsFile(tenant: String) -> String { auth.credentialsPath(for: .tenant(tenant)) }

    func stop() async {
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        for connection in connections + [tenantA, tenantB] { await connection.close() }
        server.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// Waits until `condition` holds, checking every 20 ms for at most `within`; fails naming `what`.
func waitUntil(
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
