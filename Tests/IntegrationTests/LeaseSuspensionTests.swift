import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import Synchronization
import Testing

/// A scheduler whose leader lease is suspended (``SchedulerConfig/holdsLease`` false: a renewal
/// failed, e.g. while the lease bucket's stream elects a leader) acts no more: it pulls nothing
/// from the intake stream and holds the assignments it decides; once the lease is held again it
/// sends them and pulls again, and nothing is lost.
@Suite("A scheduler whose leader lease is suspended")
struct LeaseSuspensionTests {
    @Test(
        "holds its assignments and pulls no submissions while suspended; sends and pulls once it holds the lease again"
    )
    func holdsThenSends() async throws {
        try await withNATSServer { server in
            let directory = try makeTemporaryDirectory("hangar-suspended")
            defer { try? FileManager.default.removeItem(at: directory) }
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let holds = Atomic<Bool>(true)
            let databasePath = directory.appendingPathComponent("hangar.sqlite").path
            var config = SchedulerConfig(databasePath: databasePath)
            config.queueTimeout = .seconds(120)
            config.holdsLease = { holds.load(ordering: .sequentiallyConsistent) }
            let store = try Store(path: databasePath)
            let scheduler = Scheduler(
                config: config,
                nats: try await connectForTest(server),
                store: store,
                logger: logger
            )
            var tasks = [Task { try await scheduler.run() }]
            defer { for task in tasks { task.cancel() } }
            let client = try await connectForTest(server)

            func submit(_ requestID: String) async throws -> String {
                var request = Hangar_V1_SubmitRequest()
                request.runtime = "null"
                request.argv = ["true"]
                request.requestID = requestID
                let deadline = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < deadline {
                    if let answer = try? await client.request(
                        Subjects.submit(tenant: "acme"),
                        payload: try request.serializedData(),
                        timeout: .seconds(2)
                    ), case .accepted(let accepted) = try Hangar_V1_SubmitReply(serializedBytes: answer.payload).outcome
                    {
                        return accepted.jobID
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw LocalNATSServerError("\(requestID) was not accepted")
            }
            func waitUntil(_ what: String, within limit: Duration, _ condition: () async throws -> Bool) async throws {
                let deadline = ContinuousClock.now + limit
                while try await !condition() {
                    guard ContinuousClock.now < deadline else {
                        throw LocalNATSServerError("not within \(limit): \(what)")
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }

            // Committed while leading; no node yet, so it waits in the queue.
            let queued = try await submit("queued-first")
            try await waitUntil("the first job is stored", within: .seconds(20)) {
                try await store.job(id: queued)?.status == "QUEUED"
            }

            // Suspended: a node joins, and the job is placed on it (the attempt is stored) but its
            // assignment is held, so the node runs nothing.
            holds.store(false, ordering: .sequentiallyConsistent)
            var nodeConfig = NodeConfig(nodeID: "n1", slots: 2)
            nodeConfig.heartbeatInterval = .milliseconds(200)
            let node = NodeAgent(
                config: nodeConfig,
                nats: try await connectForTest(server),
                runtimes: [NullRuntime()],
                logger: logger
            )
            tasks.append(Task { try await node.run() })
            try await waitUntil("the job is placed on the node", within: .seconds(20)) {
                try await store.job(id: queued)?.status == "RUNNING"
            }
            // A submission meanwhile is acknowledged (it is in the intake stream) but not taken.
            let later = try await submit("during-suspension")
            // Nothing moves for two seconds (many placement rounds and heartbeats): the node got no
            // assignment (it would have run the job at once and put its result in the stream).
            let jetStream = try client.jetStream()
            let quiet = ContinuousClock.now + .seconds(2)
            while ContinuousClock.now < quiet {
                let results = try await jetStream.streamStatus(Streams.results)?.messages
                #expect(results == 0, "the node ran the held job while the scheduler was suspended")
                #expect(try await store.job(id: queued)?.result == nil, "a result was stored while suspended")
                #expect(try await store.job(id: later) == nil, "a submission was taken while suspended")
                try await Task.sleep(for: .milliseconds(100))
            }

            // Held again: the held assignment goes out, the waiting submission is taken, both run.
            holds.store(true, ordering: .sequentiallyConsistent)
            for id in [queued, later] {
                try await waitUntil("job \(id) succeeds", within: .seconds(20)) {
                    try await store.job(id: id)?.result?.status == .succeeded
                }
            }
            #expect(try await store.job(id: queued)?.result?.attempt == 1, "the held attempt itself ran")
            await client.close()
        }
    }
}
