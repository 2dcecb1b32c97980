import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import Synchronization
import Testing

/// The scheduler side of term fencing: an elected scheduler stamps its term on assignments, and a
/// scheduler whose term a node refuses as stale is told so (``SchedulerConfig/onDeposed``).
@Suite("A scheduler carries its leader term; a stale one is deposed by the node's refusal")
struct SchedulerTermTests {
    @Test("term 2 runs a job; then a scheduler of term 1 on the same store and node is deposed by the refusal")
    func staleSchedulerDeposed() async throws {
        let directory = try makeTemporaryDirectory("hangar-term")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withNATSServer { server in
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let databasePath = directory.appendingPathComponent("hangar.sqlite").path
            var nodeConfig = NodeConfig(nodeID: "n1", slots: 4)
            nodeConfig.heartbeatInterval = .milliseconds(200)
            nodeConfig.stateDirectory = directory.appendingPathComponent("node").path
            let node = NodeAgent(
                config: nodeConfig,
                nats: try await connectForTest(server, name: "node"),
                runtimes: [NullRuntime()],
                logger: logger
            )
            let nodeTask = Task { try await node.run() }
            defer { nodeTask.cancel() }
            let client = try await connectForTest(server, name: "client")

            func submit(_ id: String, wait: Bool) async throws -> Hangar_V1_SubmitReply {
                var request = Hangar_V1_SubmitRequest()
                request.runtime = "null"
                request.argv = ["true"]
                request.requestID = id
                request.wait = wait
                // A scheduler that has just started may not listen yet: "no responders", tried again.
                let deadline = ContinuousClock.now + .seconds(20)
                while true {
                    do {
                        let answer = try await client.request(
                            Subjects.submit(tenant: "acme"),
                            payload: try request.serializedData(),
                            timeout: .seconds(30)
                        )
                        return try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
                    } catch let error as NATSError where error.kind == .noResponders && ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
            }

            // The leader of term 2 runs a job: the node has now seen term 2.
            var config = SchedulerConfig(databasePath: databasePath)
            config.term = 2
            let leader = Scheduler(
                config: config,
                nats: try await connectForTest(server, name: "leader"),
                store: try Store(path: databasePath),
                logger: logger
            )
            let leaderTask = Task { try await leader.run() }
            let first = try await submit("by-term-2", wait: true)
            guard case .result(let result) = first.outcome else {
                Issue.record("expected a result, got \(first)")
                return
            }
            #expect(result.status == .succeeded)
            #expect(node.termFence.highestSeen == 2)
            leaderTask.cancel()
            _ = try? await leaderTask.value

            // A scheduler of term 1 (an old leader that woke up) places a job on the same node.
            let (deposed, deposedContinuation) = AsyncStream.makeStream(of: String.self)
            var staleConfig = SchedulerConfig(databasePath: databasePath)
            staleConfig.term = 1
            staleConfig.onDeposed = { message in deposedContinuation.yield(message) }
            let stale = Scheduler(
                config: staleConfig,
                nats: try await connectForTest(server, name: "stale"),
                store: try Store(path: databasePath),
                logger: logger
            )
            let staleTask = Task { try await stale.run() }
            defer { staleTask.cancel() }
            let second = try await submit("by-term-1", wait: false)
            guard case .accepted = second.outcome else {
                Issue.record("expected an acceptance, got \(second)")
                return
            }
            let told = try await firstValue(of: deposed, within: .seconds(20))
            #expect(told == "from scheduler term 1, but term 2 has been seen: a newer scheduler leads")
            #expect(node.termFence.highestSeen == 2)
            await client.close()
        }
    }

    /// The first value `stream` yields within `limit`, or a thrown error.
    private func firstValue(of stream: AsyncStream<String>, within limit: Duration) async throws -> String {
        try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                for await value in stream { return value }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let value = try await group.next() ?? nil else {
                throw LocalNATSServerError("the scheduler was not deposed within \(limit)")
            }
            return value
        }
    }
}
