import Foundation
import GRDB
import HangarClusterTestSupport
import HangarNATS
import HangarScheduler
import HangarShared
import Testing

/// Intake and results through JetStream streams, with a real nats-server: what a stream holds
/// survives the scheduler (and the node) going away.
@Suite("Durable streams", .serialized)
struct DurableStreamTests {
    @Test("a result published while the scheduler is down is stored when it comes back, though its node is gone")
    func resultWaitsInTheStream() async throws {
        let settings = SchedulerSettings(nodeTTL: .milliseconds(800), nodeGrace: .milliseconds(400))
        try await withCluster(
            nodes: 1,
            slots: 1,
            // Long enough that a status poll the loaded CI machine answers late (one went 5 s
            // without a reply there) still finds the job running.
            runtimes: [DelayRuntime(delay: .seconds(4))],
            settings: settings
        ) { cluster in
            let jobID = try await acceptedJob(cluster.submit(command("/bin/true", runtime: "null")))
            try await waitUntil("the job runs") {
                var job = Hangar_V1_JobRequest()
                job.jobID = jobID
                // A poll without an answer in time is asked again, within the wait's own bound.
                guard let reply = try? await cluster.admin("job", job, as: Hangar_V1_JobReply.self) else {
                    return false
                }
                if case .status(.running) = reply.outcome { return true }
                return false
            }
            await cluster.stopScheduler()

            // The node finishes with no scheduler around: its result goes into the stream ...
            let js = try cluster.client.jetStream()
            var inStream: NATSMessage?
            try await waitUntil("the node's result is in HANGAR_RESULTS") {
                inStream = try? await js.message(stream: Streams.results, sequence: 1)
                return inStream != nil
            }
            let report = try Hangar_V1_AttemptResult(serializedBytes: try #require(inStream).payload)
            #expect(report.jobID == jobID && report.attempt == 1)
            // ... and the node goes away, so nothing can send it again.
            await cluster.crashNode(1)
            #expect(try await cluster.scheduler.store.job(id: jobID)?.result == nil)

            let (restarted, task) = try await cluster.startScheduler(settings: settings)
            defer { task.cancel() }
            let stored = try await storedResult(jobID, in: restarted.store, "the restarted scheduler stores the result")
            #expect(stored?.status == .succeeded)
            #expect(stored?.attempt == 1)
            #expect(stored?.nodeID == "node-1")
            // Acknowledged after the commit, so the work-queue stream let it go.
            try await waitUntil("the stream lets the stored result go") {
                (try? await js.message(stream: Streams.results, sequence: 1)) == nil
            }
            #expect(try await restarted.store.verifyAudit().firstBad == nil)
        }
    }

    @Test("a submission accepted into the stream but never committed runs after a restart; a replay is the same job")
    func acceptedSubmissionSurvivesTheScheduler() async throws {
        let noCommit = SchedulerSettings(consumeIntake: false)
        try await withCluster(nodes: 1, settings: noCommit) { cluster in
            var request = command("/bin/true", runtime: "null")
            request.requestID = "stream-\(UUID().uuidString)"
            let reply = try await cluster.submit(request)
            let jobID = try acceptedJob(reply)
            if case .accepted(let accepted) = reply.outcome { #expect(!accepted.duplicate) }
            // Acknowledged to the tenant, not in SQLite: only the stream has it.
            #expect(try await cluster.scheduler.store.job(id: jobID) == nil)
            await cluster.stopScheduler()

            // Another scheduler that does not commit either: memory and SQLite know nothing, the
            // stream's de-duplication answers with the original job.
            let (second, secondTask) = try await cluster.startScheduler(settings: noCommit)
            let replay = try await submitWhenServing(cluster, request)
            #expect(try acceptedJob(replay) == jobID)
            if case .accepted(let accepted) = replay.outcome { #expect(accepted.duplicate) }
            #expect(try await second.store.job(id: jobID) == nil)
            secondTask.cancel()
            _ = try? await secondTask.value

            // A scheduler that consumes: the job is committed and runs, once.
            let (third, thirdTask) = try await cluster.startScheduler()
            defer { thirdTask.cancel() }
            let result = try await storedResult(jobID, in: third.store, "the job from the stream runs")
            #expect(result?.status == .succeeded)
            let again = try await submitWhenServing(cluster, request)
            #expect(try acceptedJob(again) == jobID)
            let queue = try DatabaseQueue(path: cluster.databasePath)
            let (jobs, accepted) = try await queue.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM jobs") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.accepted'") ?? 0
                )
            }
            #expect(jobs == 1)
            #expect(accepted == 1)
        }
    }

    @Test(
        "an accepted submission the intake stream loses before it is stored is published again, and runs"
    )
    func lostIntakeIsPublishedAgain() async throws {
        // The scheduler does not commit, so the submission waits in the stream, where the test
        // removes it: as a JetStream cluster that acknowledged it and then lost it.
        let settings = SchedulerSettings(consumeIntake: false, intakeLossGrace: .milliseconds(300))
        try await withCluster(nodes: 1, settings: settings) { cluster in
            var request = command("/bin/true", runtime: "null")
            request.requestID = "lost-\(UUID().uuidString)"
            let jobID = try acceptedJob(try await cluster.submit(request))
            let js = try cluster.client.jetStream()
            let original = try #require(try await js.message(stream: Streams.submissions, sequence: 1))
            #expect(original.header(Streams.jobIDHeader) == jobID)
            try await js.purge(stream: Streams.submissions, keepingFrom: 2)
            #expect(try await js.message(stream: Streams.submissions, sequence: 1) == nil)

            var again: NATSMessage?
            try await waitUntil("the scheduler publishes the submission again") {
                again = try? await js.message(stream: Streams.submissions, sequence: 2)
                return again != nil
            }
            #expect(again?.header(Streams.jobIDHeader) == jobID)
            #expect(again?.payload == original.payload, "the same request, byte for byte")
            try await waitUntil("the new publish is audited") {
                try await cluster.scheduler.store.auditEvents(jobID: jobID).contains {
                    $0.event == "intake.republished"
                }
            }
            await cluster.stopScheduler()

            // A scheduler that consumes takes it from the stream and runs it, once.
            let (consuming, task) = try await cluster.startScheduler()
            defer { task.cancel() }
            let result = try await storedResult(jobID, in: consuming.store, "the job runs")
            #expect(result?.status == .succeeded)
            #expect(try acceptedJob(try await submitWhenServing(cluster, request)) == jobID)
        }
    }

    @Test("garbage in either stream is terminated and audited; the scheduler keeps working")
    func malformedStreamMessages() async throws {
        try await withCluster(nodes: 1) { cluster in
            _ = try await cluster.client.jetStreamPublish(
                Subjects.nodeResult(node: "node-1"),
                payload: Data([0xFF, 0x01])
            )
            _ = try await cluster.client.jetStreamPublish(Subjects.intake(tenant: "acme"), payload: Data("junk".utf8))
            try await waitUntil("both are audited") {
                let rows = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 1000)
                return rows.contains { $0.event == "result.malformed" }
                    && rows.contains { $0.event == "intake.malformed" }
            }
            let result = try await cluster.run(command("/bin/true", runtime: "null"))
            #expect(result.status == .succeeded)
        }
    }
}

/// The job id of an `Accepted` reply (fails otherwise).
private func acceptedJob(_ reply: Hangar_V1_SubmitReply) throws -> String {
    guard case .accepted(let accepted) = reply.outcome else {
        throw StreamTestError("expected Accepted, got \(reply)")
    }
    return accepted.jobID
}

/// Submits until a (re)started scheduler answers, for at most 10 s.
private func submitWhenServing(
    _ cluster: TestCluster,
    _ request: Hangar_V1_SubmitRequest
) async throws
    -> Hangar_V1_SubmitReply
{
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        if let reply = try? await cluster.submit(request, timeout: .seconds(2)) { return reply }
    }
    throw StreamTestError("no scheduler answered within 10 s")
}

/// Polls `condition` every 20 ms for at most 15 s.
private func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(15)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw StreamTestError("timed out after 15 s waiting until \(what)")
}

private struct StreamTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The job's result once `store` has it; fails after `waitUntil`'s bound, saying `what` it waited for.
private func storedResult(_ jobID: String, in store: Store, _ what: String) async throws -> Hangar_V1_Result? {
    var result: Hangar_V1_Result?
    try await waitUntil(what) {
        result = try await store.job(id: jobID)?.result
        return result != nil
    }
    return result
}
