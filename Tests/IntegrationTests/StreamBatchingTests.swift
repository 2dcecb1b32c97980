import Foundation
import GRDB
import HangarNATS
import HangarShared
import Testing

/// Under load, admitted submissions and node results share stream messages (`IntakeBatch`,
/// `AttemptResultBatch`), with a real nats-server: fewer messages than jobs, and still every job
/// stored once, run once and answered.
@Suite("Stream batching", .serialized)
struct StreamBatchingTests {
    @Test("many jobs at once travel in fewer stream messages than jobs, and each finishes exactly once")
    func loadIsGrouped() async throws {
        let jobs = 200
        try await withCluster(nodes: 1, slots: jobs, runtimes: [DelayRuntime(delay: .milliseconds(50))]) { cluster in
            var batch = Hangar_V1_SubmitBatchRequest()
            for _ in 0..<jobs {
                var request = command("/bin/true", runtime: "null")
                request.wait = true
                batch.requests.append(request)
            }
            let answer = try await cluster.client.request(
                Subjects.submit(tenant: "acme"),
                payload: try batch.serializedData(),
                headers: [SubmitBatch.header: SubmitBatch.value],
                timeout: .seconds(60)
            )
            let replies = try Hangar_V1_SubmitBatchReply(serializedBytes: answer.payload).replies
            var finished: Set<String> = []
            for reply in replies {
                guard case .result(let result) = reply.outcome else {
                    Issue.record("expected a result, got \(reply)")
                    continue
                }
                #expect(result.status == .succeeded)
                finished.insert(result.jobID)
            }
            #expect(finished.count == jobs)

            // Every job went through both streams, in fewer messages than jobs.
            let submissions = try await lastSequence(Streams.submissions, cluster)
            let results = try await lastSequence(Streams.results, cluster)
            #expect(submissions > 0 && submissions < UInt64(jobs), "HANGAR_SUBMISSIONS took \(submissions) messages")
            #expect(results > 0 && results < UInt64(jobs), "HANGAR_RESULTS took \(results) messages")

            // ... and SQLite has each job, its acceptance, its one attempt and its result once.
            let queue = try DatabaseQueue(path: cluster.databasePath)
            let counts = try await queue.read { db in
                [
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM jobs WHERE status = 'SUCCEEDED'") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.accepted'") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM attempts") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.finished'") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM results") ?? 0,
                ]
            }
            #expect(
                counts == Array(repeating: jobs, count: 5),
                "jobs, accepted, attempts, finished, results: \(counts)"
            )
            #expect(try await cluster.scheduler.store.verifyAudit().firstBad == nil)
        }
    }

    @Test("a group of submissions in the intake stream, never committed, runs after a restart, each job once")
    func groupedIntakeSurvivesTheScheduler() async throws {
        let jobs = 40
        try await withCluster(nodes: 1, slots: jobs, settings: SchedulerSettings(consumeIntake: false)) { cluster in
            var batch = Hangar_V1_SubmitBatchRequest()
            batch.requests = Array(repeating: command("/bin/true", runtime: "null"), count: jobs)
            let answer = try await cluster.client.request(
                Subjects.submit(tenant: "acme"),
                payload: try batch.serializedData(),
                headers: [SubmitBatch.header: SubmitBatch.value],
                timeout: .seconds(30)
            )
            let jobIDs = try Hangar_V1_SubmitBatchReply(serializedBytes: answer.payload).replies.map { reply in
                guard case .accepted(let accepted) = reply.outcome else {
                    throw StreamBatchingError("expected Accepted, got \(reply)")
                }
                return accepted.jobID
            }
            #expect(Set(jobIDs).count == jobs)
            // Acknowledged to the tenant, only in the stream, and grouped there.
            let messages = try await lastSequence(Streams.submissions, cluster)
            #expect(messages > 0 && messages < UInt64(jobs), "HANGAR_SUBMISSIONS took \(messages) messages")
            for jobID in jobIDs { #expect(try await cluster.scheduler.store.job(id: jobID) == nil) }
            await cluster.stopScheduler()

            let (restarted, task) = try await cluster.startScheduler()
            defer { task.cancel() }
            let deadline = ContinuousClock.now + .seconds(20)
            var done = 0
            while ContinuousClock.now < deadline {
                done = 0
                for jobID in jobIDs where try await restarted.store.job(id: jobID)?.result?.status == .succeeded {
                    done += 1
                }
                if done == jobs { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(done == jobs, "\(done) of \(jobs) jobs from the stream finished")
            let queue = try DatabaseQueue(path: cluster.databasePath)
            let (stored, accepted) = try await queue.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM jobs") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.accepted'") ?? 0
                )
            }
            #expect(stored == jobs)
            #expect(accepted == jobs)
        }
    }
}

/// The last sequence number of `stream` (how many messages it ever took), from the JetStream API.
private func lastSequence(_ stream: String, _ cluster: TestCluster) async throws -> UInt64 {
    struct Info: Decodable {
        struct State: Decodable { var last_seq: UInt64 }
        var state: State
    }
    let answer = try await cluster.client.request(
        "$JS.API.STREAM.INFO.\(stream)",
        payload: Data(),
        timeout: .seconds(5)
    )
    return try JSONDecoder().decode(Info.self, from: answer.payload).state.last_seq
}

private struct StreamBatchingError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
