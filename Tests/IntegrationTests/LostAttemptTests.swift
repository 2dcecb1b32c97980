import Foundation
import HangarNATS
import HangarShared
import Synchronization
import Testing

/// A stand-in node: heartbeats while `beating`, acknowledges every assignment and records it, and
/// reports a result only when told to (`report`), so a test can make it look dead and then deliver.
final class SilentNode: Sendable {
    let nodeID: String
    private let connection: NATSConnection
    private let acked = Mutex<[(jobID: String, attempt: UInt32)]>([])
    private let beating = Atomic<Bool>(true)
    private let tasks = Mutex<[Task<Void, Never>]>([])

    init(server: String, nodeID: String) async throws {
        self.nodeID = nodeID
        connection = try await NATSConnection(options: NATSConnectionOptions(servers: [server], name: nodeID))
        let assignments = try connection.subscribe(Subjects.assign(node: nodeID))
        try await connection.flush()
        let serve = Task {
            for await message in assignments { self.answer(message) }
        }
        let beat = Task {
            while !Task.isCancelled {
                if self.beating.load(ordering: .relaxed) {
                    try? self.connection.publish(
                        Subjects.heartbeat(node: nodeID),
                        payload: (try? standInHeartbeat(nodeID, incarnation: "silent-1", slots: 8).serializedData())
                            ?? Data()
                    )
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        tasks.withLock { $0 = [serve, beat] }
    }

    /// Heartbeats on or off.
    func setBeating(_ on: Bool) { beating.store(on, ordering: .relaxed) }

    /// The assignments acknowledged so far.
    var assignments: [(jobID: String, attempt: UInt32)] { acked.withLock { $0 } }

    /// Waits (bounded) until `count` assignments were acknowledged.
    func waitForAssignments(_ count: Int) async throws -> [(jobID: String, attempt: UInt32)] {
        let deadline = ContinuousClock.now + .seconds(15)
        while assignments.count < count {
            guard ContinuousClock.now < deadline else {
                throw LocalNATSServerError("\(nodeID) got \(assignments.count) assignments, not \(count), in 15 s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return assignments
    }

    /// Reports attempt `attempt` of `jobID` SUCCEEDED through the results stream.
    func report(_ jobID: String, attempt: UInt32, stdout: String) async throws {
        var result = Hangar_V1_AttemptResult()
        result.jobID = jobID
        result.attempt = attempt
        result.nodeID = nodeID
        result.status = .succeeded
        result.stdout = Data(stdout.utf8)
        _ = try await connection.jetStreamPublish(
            Subjects.nodeResult(node: nodeID),
            payload: try result.serializedData(),
            messageID: "\(jobID)/\(attempt)"
        )
    }

    func close() async {
        tasks.withLock { tasks in for task in tasks { task.cancel() } }
        await connection.close()
    }

    private func answer(_ message: NATSMessage) {
        var assignments: [Hangar_V1_Assignment] = []
        let batch = message.header(AssignBatch.header) == AssignBatch.value
        if batch, let decoded = try? Hangar_V1_AssignmentBatch(serializedBytes: message.payload) {
            assignments = decoded.assignments
        } else if let one = try? Hangar_V1_Assignment(serializedBytes: message.payload) {
            assignments = [one]
        }
        let replies = assignments.map { assignment -> Hangar_V1_AssignReply in
            var ack = Hangar_V1_AssignAck()
            ack.jobID = assignment.jobID
            ack.attempt = assignment.attempt
            var reply = Hangar_V1_AssignReply()
            reply.outcome = .ack(ack)
            acked.withLock { $0.append((assignment.jobID, assignment.attempt)) }
            return reply
        }
        if batch {
            var reply = Hangar_V1_AssignBatchReply()
            reply.replies = replies
            try? connection.reply(to: message, payload: (try? reply.serializedData()) ?? Data())
        } else if let reply = replies.first {
            try? connection.reply(to: message, payload: (try? reply.serializedData()) ?? Data())
        }
    }
}

/// The two lifecycle rules a flood once broke: a lost attempt's result still counts while no later
/// attempt was sent, and an accepted job never ends REJECTED (EXPIRED in the queue; a job that
/// already ran is retried, never expired).
@Suite("Lost attempts and the queue deadline", .serialized)
struct LostAttemptTests {
    private func job(_ cluster: TestCluster, _ id: String) async throws -> Hangar_V1_Result? {
        try await cluster.scheduler.store.job(id: id)?.result
    }

    private func waitForResult(_ cluster: TestCluster, _ id: String) async throws -> Hangar_V1_Result {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if let result = try await job(cluster, id) { return result }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw LocalNATSServerError("job \(id) did not end within 15 s")
    }

    private func waitForAudit(_ cluster: TestCluster, _ event: String, count: Int = 1) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            let rows = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 10_000)
            if rows.filter({ $0.event == event }).count >= count { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw LocalNATSServerError("no \(count) '\(event)' audit rows within 15 s")
    }

    private func submit(_ cluster: TestCluster) async throws -> String {
        var request = command("true", runtime: "null")
        request.retry.maxAttempts = 3
        guard case .accepted(let accepted) = try await cluster.submit(request).outcome else {
            throw LocalNATSServerError("not accepted")
        }
        return accepted.jobID
    }

    @Test(
        "a result for an attempt declared LOST is the job's outcome when no later attempt was sent; the job never expires"
    )
    func lateResultAccepted() async throws {
        let settings = SchedulerSettings(
            nodeTTL: .milliseconds(500),
            nodeGrace: .milliseconds(500),
            queueTimeout: .seconds(1)
        )
        try await withCluster(nodes: 0, settings: settings) { cluster in
            let node = try await SilentNode(server: cluster.server.url, nodeID: "silent-1")
            defer { Task { await node.close() } }
            try await cluster.waitForNodes(1)
            let id = try await submit(cluster)
            #expect(try await node.waitForAssignments(1).map(\.attempt) == [1])
            node.setBeating(false)  // looks dead: its attempt is declared LOST, the retry has no node
            try await waitForAudit(cluster, "node.down")
            // Longer than the queue timeout: a job that already ran must not expire.
            try await Task.sleep(for: .seconds(1.5))
            #expect(try await job(cluster, id) == nil, "the job ended while its retry waited for a node")
            try await node.report(id, attempt: 1, stdout: "from the lost attempt")
            let result = try await waitForResult(cluster, id)
            #expect(result.status == .succeeded && result.attempt == 1 && result.nodeID == "silent-1")
            #expect(String(decoding: result.stdout, as: UTF8.self) == "from the lost attempt")
            // No second attempt was sent afterwards, even with the node back.
            node.setBeating(true)
            try await cluster.waitForNodes(1)
            #expect(node.assignments.count == 1)
        }
    }

    @Test("a lost attempt's result after a later attempt was sent is audited result.late and changes nothing")
    func lateResultAfterRetry() async throws {
        let settings = SchedulerSettings(nodeTTL: .milliseconds(500), nodeGrace: .milliseconds(500))
        try await withCluster(nodes: 0, settings: settings) { cluster in
            let node = try await SilentNode(server: cluster.server.url, nodeID: "silent-2")
            defer { Task { await node.close() } }
            try await cluster.waitForNodes(1)
            let id = try await submit(cluster)
            _ = try await node.waitForAssignments(1)
            node.setBeating(false)
            try await waitForAudit(cluster, "node.down")
            node.setBeating(true)  // back: the retry (attempt 2) goes to it
            let acked = try await node.waitForAssignments(2)
            #expect(acked.map(\.attempt) == [1, 2])
            try await node.report(id, attempt: 1, stdout: "late")
            try await waitForAudit(cluster, "result.late")
            #expect(try await job(cluster, id) == nil, "a superseded attempt's result ended the job")
            try await node.report(id, attempt: 2, stdout: "current")
            let result = try await waitForResult(cluster, id)
            #expect(result.attempt == 2 && String(decoding: result.stdout, as: UTF8.self) == "current")
        }
    }

    @Test(
        "an attempt acknowledged by a node that keeps heartbeating without listing it is lost after the grace and retried"
    )
    func unlistedAttemptRetried() async throws {
        // The stand-in node acknowledges every assignment and never lists one in its heartbeats:
        // as if the assignment had vanished on the node, or its result before the stream.
        let settings = SchedulerSettings(unlistedGrace: .seconds(1))
        try await withCluster(nodes: 0, settings: settings) { cluster in
            let node = try await SilentNode(server: cluster.server.url, nodeID: "silent-4")
            defer { Task { await node.close() } }
            try await cluster.waitForNodes(1)
            let id = try await submit(cluster)
            let acked = try await node.waitForAssignments(2)
            #expect(acked.map(\.jobID) == [id, id] && acked.map(\.attempt) == [1, 2])
            let events = try await cluster.scheduler.store.auditEvents(jobID: id)
            let lost = events.first { $0.event == "attempt.ended" }
            #expect(
                lost?.detail.contains("attempt 1 LOST: node silent-4 has not listed attempt 1") == true,
                "\(events)"
            )
            #expect(try await job(cluster, id) == nil, "the job ended instead of being retried")
            try await node.report(id, attempt: 2, stdout: "retried")
            let result = try await waitForResult(cluster, id)
            #expect(result.status == .succeeded && result.attempt == 2)
        }
    }

    @Test("a job no node can take before its queue deadline ends EXPIRED, not REJECTED")
    func queueDeadlineExpires() async throws {
        let settings = SchedulerSettings(queueTimeout: .seconds(1))
        try await withCluster(nodes: 0, settings: settings) { cluster in
            let node = try await SilentNode(server: cluster.server.url, nodeID: "silent-3")
            defer { Task { await node.close() } }
            try await cluster.waitForNodes(1)
            // The node's 8 slots are held by jobs it never finishes; the ninth waits, then expires.
            var ids: [String] = []
            for _ in 0..<9 { ids.append(try await submit(cluster)) }
            _ = try await node.waitForAssignments(8)
            let waiting = try #require(ids.first { id in !node.assignments.contains { $0.jobID == id } })
            let result = try await waitForResult(cluster, waiting)
            #expect(result.status == .expired, "\(result.status.displayName): \(result.message)")
            #expect(result.message.contains("no capacity within"))
            #expect(result.cliExitCode == 2)
        }
    }
}
