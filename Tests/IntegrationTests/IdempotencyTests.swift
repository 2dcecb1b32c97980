import Foundation
import HangarNATS
import HangarScheduler
import HangarShared
import Testing

@Suite("Idempotent intake", .serialized)
struct IdempotencyTests {
    @Test("concurrent repeats of one request id are one job; after a scheduler restart too; ids are per tenant")
    func requestIDIsUniquePerTenant() async throws {
        try await withCluster(nodes: 1, runtimes: [DelayRuntime(delay: .milliseconds(100))]) { cluster in
            var request = command("/bin/true", runtime: "null")
            request.requestID = "req-\(UUID().uuidString)"
            let repeated = request
            let replies = try await withThrowingTaskGroup(of: Hangar_V1_SubmitReply.self) { group in
                for _ in 0..<20 { group.addTask { try await cluster.submit(repeated) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let accepted = replies.compactMap { reply -> Hangar_V1_Accepted? in
                if case .accepted(let accepted) = reply.outcome { return accepted }
                return nil
            }
            #expect(accepted.count == 20, "\(replies)")
            let ids = Set(accepted.map(\.jobID))
            #expect(ids.count == 1)
            #expect(accepted.filter { !$0.duplicate }.count == 1)
            let jobID = try #require(ids.first)

            // Wait until it finished, then restart the scheduler: the repeat is found in SQLite.
            let deadline = ContinuousClock.now + .seconds(20)
            while try await cluster.scheduler.store.job(id: jobID)?.result == nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            try #require(
                try await cluster.scheduler.store.job(id: jobID)?.result != nil,
                "job \(jobID) did not finish in 20 s"
            )
            await cluster.stopScheduler()
            let (restarted, task) = try await cluster.startScheduler()
            defer { task.cancel() }
            var again: Hangar_V1_SubmitReply?
            let answerBy = ContinuousClock.now + .seconds(10)
            while again == nil && ContinuousClock.now < answerBy {
                again = try? await cluster.submit(request, timeout: .seconds(2))
            }
            guard case .accepted(let afterRestart) = again?.outcome else {
                Issue.record("expected Accepted from the restarted scheduler, got \(String(describing: again))")
                return
            }
            #expect(afterRestart.jobID == jobID && afterRestart.duplicate)

            // The same id from another tenant is another job.
            guard case .accepted(let other) = try await cluster.submit(request, tenant: "globex").outcome else {
                Issue.record("expected Accepted for tenant globex")
                return
            }
            #expect(other.jobID != jobID && !other.duplicate)
            // Accepted means in the intake stream; the commit to SQLite follows.
            let committedBy = ContinuousClock.now + .seconds(10)
            while try await restarted.store.count("jobs") < 2, ContinuousClock.now < committedBy {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(try await restarted.store.count("jobs") == 2)
        }
    }
}
