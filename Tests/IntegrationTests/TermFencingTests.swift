import Foundation
import HangarNATS
import HangarNode
import HangarShared
import HangarTestSupport
import Logging
import Testing

/// Assignments and sandbox starts carry the scheduler's leader term; a node keeps the highest term
/// it has seen in its state folder and refuses a lower nonzero one, across its own restarts. A real
/// node agent and nats-server; the "schedulers" are the test's requests.
@Suite("Node agents refuse assignments from a stale scheduler term")
struct TermFencingTests {
    @Test("term 5 then 3: refused as STALE_TERM; a restarted node still refuses 3; term 0 is accepted")
    func staleTermRefused() async throws {
        let state = try makeTemporaryDirectory("hangar-node-state")
        defer { try? FileManager.default.removeItem(at: state) }
        try await withNATSServer { server in
            let client = try await connectForTest(server, name: "scheduler")
            do {
                let node = try await NodeUnderTest.start(server, state: state)
                #expect(try await assign(client, job: "t5", term: 5).isAck)
                let stale = try await assign(client, job: "t3", term: 3)
                #expect(stale.refusal?.reason == .staleTerm, "\(stale)")
                #expect(
                    stale.refusal?.message == "from scheduler term 3, but term 5 has been seen: a newer scheduler leads"
                )
                #expect(try await assign(client, job: "t0", term: 0).isAck)
                #expect(node.agent.termFence.highestSeen == 5)
                await node.stop()
            }
            // The node restarts (a new agent, a new incarnation) on the same state folder.
            let restarted = try await NodeUnderTest.start(server, state: state)
            #expect(restarted.agent.termFence.highestSeen == 5)
            let stillStale = try await assign(client, job: "t3-again", term: 3)
            #expect(stillStale.refusal?.reason == .staleTerm, "\(stillStale)")
            #expect(try await assign(client, job: "t0-again", term: 0).isAck)
            #expect(try await assign(client, job: "t6", term: 6).isAck)
            #expect(try await assign(client, job: "t5-late", term: 5).refusal?.reason == .staleTerm)
            await restarted.stop()
            await client.close()
        }
    }

    @Test("sandbox starts are fenced the same way; a stale kill is ignored, a current one kills")
    func sandboxesFenced() async throws {
        let state = try makeTemporaryDirectory("hangar-node-state")
        defer { try? FileManager.default.removeItem(at: state) }
        try await withNATSServer { server in
            let client = try await connectForTest(server, name: "scheduler")
            let node = try await NodeUnderTest.start(server, state: state)
            #expect(try await startSandbox(client, id: "sb-a", term: 4).ok)
            #expect(try await startSandbox(client, id: "sb-b", term: 0).ok)
            let stale = try await startSandbox(client, id: "sb-c", term: 2)
            #expect(stale.refused.reason == .staleTerm, "\(stale)")
            #expect(stale.refused.message.contains("term 2") && stale.refused.message.contains("term 4"))
            #expect(node.sandboxes.sandboxIDs == ["sb-a", "sb-b"])

            // A kill from term 3 is ignored; the kill from term 4 after it (same subscription, so
            // handled after it) is obeyed.
            try kill(client, id: "sb-a", term: 3)
            try kill(client, id: "sb-b", term: 4)
            try await client.flush()
            let deadline = ContinuousClock.now + .seconds(10)
            while node.sandboxes.sandboxIDs.contains("sb-b"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(node.sandboxes.sandboxIDs == ["sb-a"])
            await node.stop()
            await client.close()
        }
    }
}

/// One node agent (`term-node`, null runtime, null sandbox host) with its state folder.
private struct NodeUnderTest {
    let agent: NodeAgent
    let sandboxes: NullSandboxHost
    let connection: NATSConnection
    let task: Task<Void, any Error>

    static func start(_ server: LocalNATSServer, state: URL) async throws -> NodeUnderTest {
        let connection = try await connectForTest(server, name: "term-node")
        var config = NodeConfig(nodeID: "term-node", slots: 8)
        config.stateDirectory = state.path
        // No results stream here: do not hold the test up resending results at the end.
        config.resultRetryOnShutdown = .milliseconds(100)
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let sandboxes = NullSandboxHost()
        let agent = NodeAgent(
            config: config,
            nats: connection,
            runtimes: [NullRuntime()],
            sandboxHost: sandboxes,
            logger: logger
        )
        let task = Task { try await agent.run() }
        // Serving once it answers on its subjects (bounded; a loaded CI machine may be slow to answer).
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            do {
                _ = try await connection.request(
                    Subjects.assign(node: "term-node"),
                    payload: Data(),
                    timeout: .seconds(5)
                )
                break
            } catch let error as NATSError
                where (error.kind == .noResponders || error.kind == .timeout) && ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        return NodeUnderTest(agent: agent, sandboxes: sandboxes, connection: connection, task: task)
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
        await connection.close()
    }
}

private func assign(_ client: NATSConnection, job: String, term: UInt64) async throws -> Hangar_V1_AssignReply {
    var assignment = Hangar_V1_Assignment()
    assignment.jobID = job
    assignment.tenant = "acme"
    assignment.attempt = 1
    assignment.spec.runtime = "null"
    assignment.spec.argv = ["/bin/true"]
    assignment.schedulerTerm = term
    let answer = try await client.request(
        Subjects.assign(node: "term-node"),
        payload: try assignment.serializedData(),
        timeout: .seconds(10)
    )
    return try Hangar_V1_AssignReply(serializedBytes: answer.payload)
}

private func startSandbox(
    _ client: NATSConnection,
    id: String,
    term: UInt64
) async throws -> Hangar_V1_SandboxStartReply {
    var start = Hangar_V1_SandboxStart()
    start.sandboxID = id
    start.tenant = "acme"
    start.runtime = "null"
    start.schedulerTerm = term
    let answer = try await client.request(
        Subjects.sandboxStart(node: "term-node"),
        payload: try start.serializedData(),
        timeout: .seconds(10)
    )
    return try Hangar_V1_SandboxStartReply(serializedBytes: answer.payload)
}

private func kill(_ client: NATSConnection, id: String, term: UInt64) throws {
    var kill = Hangar_V1_SandboxKill()
    kill.sandboxID = id
    kill.reason = "test"
    kill.schedulerTerm = term
    try client.publish(Subjects.sandboxKill(node: "term-node"), payload: try kill.serializedData())
}

extension Hangar_V1_AssignReply {
    fileprivate var isAck: Bool {
        if case .ack = outcome { return true }
        return false
    }

    fileprivate var refusal: Hangar_V1_AssignRefused? {
        if case .refused(let refused) = outcome { return refused }
        return nil
    }
}
