import Foundation
import HangarShared
import Testing

@testable import HangarScheduler

/// The scheduler core under the deterministic simulator: random fault histories, invariants checked
/// after every step. A failure prints its seed; `Simulator(seed:)` with it replays the history
/// exactly. A longer run: `swift run hangar-bench simulate --seeds 10000` (see README).
@Suite("Scheduler core: deterministic simulation")
struct SimulationTests {
    /// Runs `seeds` on a thread of their own: seconds of CPU-bound work on Swift's cooperative pool
    /// (two threads on a two-core machine) would starve the integration tests running beside it.
    func simulate(
        _ seeds: ClosedRange<UInt64>,
        _ settings: Simulator.Settings = Simulator.Settings()
    ) async throws -> [Simulator.Report] {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                do {
                    var reports: [Simulator.Report] = []
                    for seed in seeds {
                        var simulator = Simulator(seed: seed, settings: settings)
                        reports.append(try simulator.run())
                    }
                    continuation.resume(returning: reports)
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    @Test(
        "200 seeds of node crashes, restarts (some re-adopting their sandboxes) and pauses, scheduler restarts, lost answers, vanished attempts, failed commits, duplicated and late results: every job and sandbox ends exactly once"
    )
    func faultHistories() async throws {
        var totals: [Hangar_V1_JobStatus: Int] = [:]
        var restarts = 0
        var restored = 0
        var vanished = 0
        var readopted = 0
        var sandboxes: [SandboxEnd.Reason: Int] = [:]
        let reports: [Simulator.Report]
        do {
            reports = try await simulate(1...200)
        } catch let violation as Simulator.Violation {
            Issue.record("\(violation)")
            return
        }
        for report in reports {
            for (status, count) in report.ended { totals[status, default: 0] += count }
            restarts += report.schedulerRestarts
            restored += report.restoredJobs
            vanished += report.vanishedAttempts
            readopted += report.readoptedSandboxes
            for (reason, count) in report.sandboxesEnded { sandboxes[reason, default: 0] += count }
        }
        // The histories did exercise the faults: some jobs were retried to success, some lost.
        #expect((totals[.succeeded] ?? 0) > 0 && (totals[.cancelled] ?? 0) > 0)
        #expect((totals[.lost] ?? 0) > 0, "no history lost a job: the faults are too mild to mean anything")
        #expect((totals[.expired] ?? 0) > 0, "no history reached a queue deadline")
        #expect(restarts > 0 && restored > 0, "no scheduler restart took over unfinished jobs from its store")
        // Attempts that vanished after their node acknowledged them still ended (the run checks
        // every job ends): their absence from the heartbeats had them lost and retried.
        #expect(vanished > 0, "no history made an acknowledged attempt vanish")
        // Stateful sandboxes ended every way there is: killed, timed out, lost with a node, failed
        // to start, died on their node.
        for reason in [SandboxEnd.Reason.killed, .timedOut, .lost, .failed, .died] {
            #expect((sandboxes[reason] ?? 0) > 0, "no sandbox ended \(reason): \(sandboxes)")
        }
        // Restarted nodes re-adopted running sandboxes, and the core kept them (the run checks
        // that none of them ended LOST and that the node's reservations count them).
        #expect(readopted > 0, "no restarted node re-adopted a running sandbox")
    }

    @Test("the same seed replays the same history")
    func replay() async throws {
        let a = try await simulate(42...42)[0]
        let b = try await simulate(42...42)[0]
        #expect(a.steps == b.steps && a.placements == b.placements && a.ended == b.ended)
        #expect(a.sandboxesEnded == b.sandboxesEnded)
        #expect(try await simulate(43...43)[0].placements != a.placements)
    }

    @Test("two tenants of equal weight with backlogs larger than the cluster: each holds 40-60% of any 100 placements")
    func fairness() async throws {
        var settings = Simulator.Settings()
        settings.faults = false
        settings.sandboxes = 0  // they hold slots for long: the windows would measure them, not the queue
        settings.jobs = 600
        settings.faultPhase = .milliseconds(200)
        settings.queueTimeout = .seconds(600)
        for (index, report) in try await simulate(1...5, settings).enumerated() {
            let seed = index + 1
            let placements = report.placements
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
        var heartbeat = SchedulerCoreTests().heartbeat(slots: 1)
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
