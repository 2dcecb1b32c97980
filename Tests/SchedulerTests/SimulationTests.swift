import Foundation
import HangarShared
import Testing

@testable import HangarScheduler

/// The scheduler core under the deterministic simulator: random fault histories, invariants checked
/// after every step. A failure prints its seed; `Simulator(seed:)` with it replays the history
/// exactly. A longer run: `swift run hangar-bench simulate --seeds 10000` (see README).
@Suite("Scheduler core: deterministic simulation")
struct SimulationTests {
    @Test(
        "200 seeds of node crashes, restarts and pauses, scheduler restarts, lost answers, failed commits, duplicated and late results: every job ends exactly once"
    )
    func faultHistories() throws {
        var totals: [Hangar_V1_JobStatus: Int] = [:]
        var restarts = 0
        var restored = 0
        for seed in UInt64(1)...200 {
            var simulator = Simulator(seed: seed)
            do {
                let report = try simulator.run()
                for (status, count) in report.ended { totals[status, default: 0] += count }
                restarts += report.schedulerRestarts
                restored += report.restoredJobs
            } catch let violation as Simulator.Violation {
                Issue.record("\(violation)")
                return
            }
        }
        // The histories did exercise the faults: some jobs were retried to success, some lost.
        #expect((totals[.succeeded] ?? 0) > 0 && (totals[.cancelled] ?? 0) > 0)
        #expect((totals[.lost] ?? 0) > 0, "no history lost a job: the faults are too mild to mean anything")
        #expect((totals[.expired] ?? 0) > 0, "no history reached a queue deadline")
        #expect(restarts > 0 && restored > 0, "no scheduler restart took over unfinished jobs from its store")
    }

    @Test("the same seed replays the same history")
    func replay() throws {
        var first = Simulator(seed: 42)
        var second = Simulator(seed: 42)
        let a = try first.run()
        let b = try second.run()
        #expect(a.steps == b.steps && a.placements == b.placements && a.ended == b.ended)
        var other = Simulator(seed: 43)
        #expect(try other.run().placements != a.placements)
    }

    @Test("two tenants of equal weight with backlogs larger than the cluster: each holds 40-60% of any 100 placements")
    func fairness() throws {
        var settings = Simulator.Settings()
        settings.faults = false
        settings.jobs = 600
        settings.faultPhase = .milliseconds(200)
        settings.queueTimeout = .seconds(600)
        for seed in UInt64(1)...5 {
            var simulator = Simulator(seed: seed, settings: settings)
            let placements = try simulator.run().placements
            #expect(placements.count >= 600)
            // While both have a backlog (the first 500 placements), every window of 100 is fair.
            for start in 0...(500 - 100) {
                let share = placements[start..<start + 100].filter { $0 == "a" }.count
                #expect(
                    (40...60).contains(share),
                    "seed \(seed), placements \(start)..<\(start + 100): a has \(share)%"
                )
                if !(40...60).contains(share) { return }
            }
        }
    }

    @Test("a broken core is caught: a result of an old attempt that ends the job violates fencing")
    func catchesViolations() throws {
        // The simulator's checks are not vacuous: feed the core an event history by hand that ends a
        // job by a superseded attempt, and see the core refuse it (logged late, not finished).
        let origin = ContinuousClock.now
        var core = SchedulerCore(config: SchedulerCore.Config(), cluster: ClusterState())
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.incarnation = "1"
        heartbeat.capacity.slotsTotal = 1
        heartbeat.capacity.cpuMillis = 1000
        heartbeat.capacity.memoryBytes = 1 << 30
        var null = Hangar_V1_RuntimeAvailability()
        null.name = "null"
        null.available = true
        heartbeat.runtimes = [null]
        heartbeat.templates = [TemplateName.host]
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat), now: origin)
        _ = core.handle(
            .admitted(CoreJob.Spec(id: "j", tenant: "a", request: PlacementRequest(runtime: "null"))),
            now: origin
        )
        let placed = core.handle(.intakeCommitted(jobID: "j"), now: origin)
        #expect(placed.contains(.assign(jobID: "j", attempt: 1, nodeID: "n1")))
        // n1 goes silent: attempt 1 LOST, retry after the backoff; n1 returns and gets attempt 2.
        _ = core.handle(.tick, now: origin + .seconds(6))
        heartbeat.incarnation = "1"
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat), now: origin + .seconds(6))
        let retried = core.handle(.tick, now: origin + .seconds(7))
        #expect(retried.contains(.assign(jobID: "j", attempt: 2, nodeID: "n1")), "\(retried)")
        // Attempt 1's result now is late; attempt 2's ends the job.
        let late = core.handle(
            .result(jobID: "j", attempt: 1, nodeID: "n1", status: .succeeded),
            now: origin + .seconds(8)
        )
        #expect(late == [.log(.resultLate(jobID: "j", attempt: 1, nodeID: "n1", status: .succeeded))])
        let current = core.handle(
            .result(jobID: "j", attempt: 2, nodeID: "n1", status: .failed),
            now: origin + .seconds(8)
        )
        #expect(current.count == 1)
        guard case .log(.finished("j", let outcome)) = current.first else {
            Issue.record("expected the finish record, got \(current)")
            return
        }
        #expect(outcome.attempt == 2 && outcome.status == .failed)
    }
}
