import Foundation
import GRDB
import HangarNATS
import HangarScheduler
import HangarShared
import Testing

@Suite("Scheduler restart", .serialized)
struct RecoveryTests {
    @Test("after a scheduler restart, the running job's result is kept and the queued job runs; nothing twice")
    func restartKeepsWork() async throws {
        let settings = SchedulerSettings(nodeTTL: .milliseconds(800), nodeGrace: .milliseconds(400))
        try await withCluster(
            nodes: 1,
            slots: 1,
            // Each job runs 4 s: the restart below must come while the first runs, and a status
            // poll on a loaded machine can take a second (CI once missed a 1.5 s job's run).
            runtimes: [DelayRuntime(delay: .seconds(4))],
            settings: settings
        ) {
            cluster in
            let results = try cluster.client.subscribe("hangar.result.acme.>")
            try await cluster.client.flush()
            var request = command("/bin/true", runtime: "null")
            request.wait = false
            var ids: [String] = []
            for _ in 0..<2 {
                guard case .accepted(let accepted) = try await cluster.submit(request).outcome else {
                    Issue.record("expected Accepted")
                    return
                }
                ids.append(accepted.jobID)
            }
            // The first job runs (one slot), the second waits.
            var job = Hangar_V1_JobRequest()
            job.jobID = ids[0]
            let deadline = ContinuousClock.now + .seconds(10)
            var state = try await cluster.admin("job", job, as: Hangar_V1_JobReply.self)
            while ContinuousClock.now < deadline {
                if case .status(.running) = state.outcome { break }
                try await Task.sleep(for: .milliseconds(20))
                state = try await cluster.admin("job", job, as: Hangar_V1_JobReply.self)
            }
            // The restart below must find a running attempt, or its recovery is not what is tested.
            guard case .status(.running) = state.outcome else {
                Issue.record("the first job was not RUNNING within 10 s: \(state)")
                return
            }
            await cluster.stopScheduler()
            let (restarted, task) = try await cluster.startScheduler(settings: settings)
            defer { task.cancel() }

            var finished: [String: Hangar_V1_Result] = [:]
            // End the wait after 30 s even if results never come (the test then fails, not hangs).
            let stopper = Task {
                try await Task.sleep(for: .seconds(30))
                results.unsubscribe()
            }
            defer { stopper.cancel() }
            var iterator = results.makeAsyncIterator()
            let waitUntil = ContinuousClock.now + .seconds(30)
            while finished.count < 2 && ContinuousClock.now < waitUntil {
                guard let message = await iterator.next() else { break }
                let result = try Hangar_V1_Result(serializedBytes: message.payload)
                finished[result.jobID] = result
            }
            #expect(Set(finished.keys) == Set(ids))
            #expect(finished.values.allSatisfy { $0.status == .succeeded })
            #expect(finished[ids[0]]?.attempt == 1, "the running attempt's result is accepted, not re-run")

            let queue = try DatabaseQueue(path: cluster.databasePath)
            let (stored, finishedEvents) = try await queue.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM results") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.finished'") ?? 0
                )
            }
            #expect(stored == 2)
            #expect(finishedEvents == 2)
            let chain = try await restarted.store.verifyAudit()
            #expect(chain.firstBad == nil)
        }
    }
}
