import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging
import Synchronization
import Testing

/// Assignments placed in the same round travel to their node as one `AssignmentBatch`; each is
/// acknowledged or refused on its own.
@Suite("Assignment batches", .serialized)
struct AssignBatchTests {
    @Test("jobs queued before a node joins reach it as one batch, and each runs exactly once")
    func batchToRealNode() async throws {
        let cluster = try await TestCluster.start(nodes: 0)
        let jobs = 12
        let sniffer = try AssignSniffer(cluster.client, node: "batch-node")
        try await cluster.client.flush()
        let runs = Task {
            try await withThrowingTaskGroup(of: Hangar_V1_Result.self) { group in
                for _ in 0..<jobs { group.addTask { try await cluster.run(command("/bin/true", runtime: "null")) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        do {
            try await waitForQueue(cluster, depth: jobs)
            // The node's first heartbeat lets the scheduler place every queued job in one round.
            let connection = try await NATSConnection(
                options: NATSConnectionOptions(servers: [cluster.server.url], name: "batch-node")
            )
            var logger = Logger(label: "test")
            logger.logLevel = .warning
            let agent = NodeAgent(
                config: NodeConfig(nodeID: "batch-node", slots: 64),
                nats: connection,
                runtimes: [NullRuntime()],
                logger: logger
            )
            let serving = Task { try await agent.run() }
            let results = try await runs.value
            serving.cancel()
            _ = try? await serving.value
            await connection.close()

            #expect(results.count == jobs)
            #expect(results.allSatisfy { $0.status == .succeeded && $0.nodeID == "batch-node" })
            #expect(Set(results.map(\.jobID)).count == jobs)
            let seen = sniffer.stop()
            #expect(seen.flatMap(\.jobIDs).sorted() == results.map(\.jobID).sorted(), "each job assigned once")
            #expect(seen.contains { $0.batched && $0.jobIDs.count > 1 }, "assignments seen: \(seen)")
        } catch {
            runs.cancel()
            _ = sniffer.stop()
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    @Test("a node that refuses part of a batch gets the refused jobs again later; none is lost or run twice")
    func partialRefusal() async throws {
        let cluster = try await TestCluster.start(nodes: 0)
        let jobs = 8
        let runs = Task {
            try await withThrowingTaskGroup(of: Hangar_V1_Result.self) { group in
                for _ in 0..<jobs { group.addTask { try await cluster.run(command("/bin/true", runtime: "null")) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        let fake = try await RefusingNode(server: cluster.server.url, nodeID: "picky-node")
        do {
            try await waitForQueue(cluster, depth: jobs)
            try await fake.start()
            let results = try await runs.value
            let log = fake.stop()
            await fake.close()

            #expect(results.count == jobs)
            #expect(results.allSatisfy { $0.status == .succeeded && $0.nodeID == "picky-node" })
            #expect(Set(results.map(\.jobID)).count == jobs)
            // Every job acknowledged exactly once, each result from the acknowledged attempt.
            #expect(log.acked.count == jobs)
            #expect(Set(log.acked.map(\.jobID)).count == jobs)
            for result in results {
                #expect(log.acked.contains { $0.jobID == result.jobID && $0.attempt == result.attempt })
            }
            #expect(log.largestBatch > 1, "the queued jobs should have arrived batched")
            #expect(log.refused > 0)
        } catch {
            runs.cancel()
            _ = fake.stop()
            await fake.close()
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    /// Waits (at most 15 s) until the scheduler holds `depth` queued jobs.
    private func waitForQueue(_ cluster: TestCluster, depth: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        var last: UInt32 = 0
        while ContinuousClock.now < deadline {
            // A stats request that times out (the scheduler paused on a loaded machine) is asked
            // again until the deadline.
            if let stats = try? await cluster.admin("stats", Hangar_V1_StatsRequest(), as: Hangar_V1_ClusterStats.self)
            {
                last = stats.queueDepth
            }
            if last >= depth { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw BatchTestError("the scheduler queued \(last) of \(depth) jobs within 15 s")
    }
}

struct BatchTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Records the assignment messages sent to one node (a plain subscriber next to the real node).
final class AssignSniffer: Sendable {
    struct Seen: Sendable, CustomStringConvertible {
        var batched: Bool
        var jobIDs: [String]
        var description: String { "\(batched ? "batch" : "single") of \(jobIDs.count)" }
    }

    private final class Record: Sendable {
        let items = Mutex<[Seen]>([])
    }

    private let subscription: NATSSubscription
    private let record = Record()
    private let reader: Task<Void, Never>

    init(_ connection: NATSConnection, node: String) throws {
        let subscription = try connection.subscribe(Subjects.assign(node: node))
        let record = self.record
        self.subscription = subscription
        reader = Task {
            for await message in subscription {
                if message.header(AssignBatch.header) == AssignBatch.value {
                    let batch = (try? Hangar_V1_AssignmentBatch(serializedBytes: message.payload))?.assignments ?? []
                    record.items.withLock { $0.append(Seen(batched: true, jobIDs: batch.map(\.jobID))) }
                } else if let one = try? Hangar_V1_Assignment(serializedBytes: message.payload) {
                    record.items.withLock { $0.append(Seen(batched: false, jobIDs: [one.jobID])) }
                }
            }
        }
    }

    /// Stops recording; returns what was seen.
    func stop() -> [Seen] {
        subscription.unsubscribe()
        reader.cancel()
        return record.items.withLock { $0 }
    }
}

/// A stand-in node speaking the protocol: heartbeats every 100 ms, acknowledges only the first
/// assignment of each batch (refusing the rest with NO_FREE_SLOT) and every single assignment,
/// and reports SUCCEEDED for what it acknowledged.
final class RefusingNode: Sendable {
    struct Log: Sendable {
        var acked: [(jobID: String, attempt: UInt32)] = []
        var refused = 0
        var largestBatch = 0
    }

    let nodeID: String
    private let connection: NATSConnection
    private let log = Mutex(Log())
    private let tasks = Mutex<[Task<Void, Never>]>([])

    init(server: String, nodeID: String) async throws {
        self.nodeID = nodeID
        connection = try await NATSConnection(options: NATSConnectionOptions(servers: [server], name: nodeID))
    }

    /// Subscribes, then starts heartbeating (so the scheduler learns of it).
    func start() async throws {
        let assignments = try connection.subscribe(Subjects.assign(node: nodeID))
        try await connection.flush()
        let serve = Task {
            for await message in assignments { self.answer(message) }
        }
        let beat = Task {
            while !Task.isCancelled {
                try? self.connection.publish(
                    Subjects.heartbeat(node: self.nodeID),
                    payload: (try? standInHeartbeat(self.nodeID, incarnation: "picky-1", slots: 64).serializedData())
                        ?? Data()
                )
                try? await Task.sleep(for: .milliseconds(100))
            }
            assignments.unsubscribe()
        }
        tasks.withLock { $0 = [serve, beat] }
    }

    func stop() -> Log {
        tasks.withLock { tasks in for task in tasks { task.cancel() } }
        return log.withLock { $0 }
    }

    func close() async { await connection.close() }

    private func answer(_ message: NATSMessage) {
        if message.header(AssignBatch.header) == AssignBatch.value {
            guard let batch = try? Hangar_V1_AssignmentBatch(serializedBytes: message.payload) else { return }
            var reply = Hangar_V1_AssignBatchReply()
            for (index, assignment) in batch.assignments.enumerated() {
                reply.replies.append(index == 0 ? ack(assignment) : refuse())
            }
            log.withLock { $0.largestBatch = max($0.largestBatch, batch.assignments.count) }
            try? connection.reply(to: message, payload: (try? reply.serializedData()) ?? Data())
        } else if let assignment = try? Hangar_V1_Assignment(serializedBytes: message.payload) {
            try? connection.reply(to: message, payload: (try? ack(assignment).serializedData()) ?? Data())
        }
    }

    private func refuse() -> Hangar_V1_AssignReply {
        var refused = Hangar_V1_AssignRefused()
        refused.reason = .noFreeSlot
        refused.message = "test node: only one per batch"
        var reply = Hangar_V1_AssignReply()
        reply.outcome = .refused(refused)
        log.withLock { $0.refused += 1 }
        return reply
    }

    private func ack(_ assignment: Hangar_V1_Assignment) -> Hangar_V1_AssignReply {
        var ack = Hangar_V1_AssignAck()
        ack.jobID = assignment.jobID
        ack.attempt = assignment.attempt
        var reply = Hangar_V1_AssignReply()
        reply.outcome = .ack(ack)
        log.withLock { $0.acked.append((assignment.jobID, assignment.attempt)) }
        var result = Hangar_V1_AttemptResult()
        result.jobID = assignment.jobID
        result.attempt = assignment.attempt
        result.nodeID = nodeID
        result.status = .succeeded
        let connection = self.connection
        let subject = Subjects.nodeResult(node: nodeID)
        let payload = (try? result.serializedData()) ?? Data()
        Task {
            try await Task.sleep(for: .milliseconds(20))  // after the ack has left
            _ = try await connection.request(subject, payload: payload, timeout: .seconds(10))
        }
        return reply
    }
}

/// The heartbeat of a stand-in node of these tests: 8 cores, 8 GiB, `slots` slots, the null runtime
/// and the host template, healthy.
func standInHeartbeat(_ nodeID: String, incarnation: String, slots: UInt32) -> Hangar_V1_NodeHeartbeat {
    var heartbeat = Hangar_V1_NodeHeartbeat()
    heartbeat.nodeID = nodeID
    heartbeat.incarnation = incarnation
    heartbeat.capacity.cpuMillis = 8000
    heartbeat.capacity.memoryBytes = 8 << 30
    heartbeat.capacity.slotsTotal = slots
    var null = Hangar_V1_RuntimeAvailability()
    null.name = "null"
    null.available = true
    heartbeat.runtimes = [null]
    heartbeat.templates = [TemplateName.host]
    heartbeat.health = .healthy
    return heartbeat
}
