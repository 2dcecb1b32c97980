import Foundation
import HangarShared
import Testing

@testable import HangarScheduler

/// Hand-fed event histories for the core's rules that the simulator does not draw (operator
/// controls, recovery details, failed commits, jobs that no longer validate): each test is a short
/// story of events at chosen times and the exact actions expected. No NATS, no store, no clock.
@Suite("Scheduler core: hand-fed histories")
struct SchedulerCoreTests {
    let origin = ContinuousClock.now

    func at(_ seconds: Double) -> ContinuousClock.Instant { origin + .milliseconds(Int64(seconds * 1000)) }

    func heartbeat(incarnation: String = "1", slots: UInt32 = 2, running: [String] = []) -> Hangar_V1_NodeHeartbeat {
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.incarnation = incarnation
        heartbeat.capacity.slotsTotal = slots
        heartbeat.capacity.cpuMillis = 1000
        heartbeat.capacity.memoryBytes = 1 << 30
        var null = Hangar_V1_RuntimeAvailability()
        null.name = "null"
        null.available = true
        heartbeat.runtimes = [null]
        heartbeat.templates = [TemplateName.host]
        heartbeat.runningJobs = running
        return heartbeat
    }

    func spec(_ id: String, maxAttempts: UInt32 = 3, invalid: String? = nil) -> CoreJob.Spec {
        CoreJob.Spec(
            id: id,
            tenant: "a",
            request: PlacementRequest(runtime: "null"),
            maxAttempts: maxAttempts,
            invalid: invalid
        )
    }

    /// A core with node n1 up and job `id` running on it as attempt 1.
    func running(_ id: String) -> SchedulerCore {
        var core = SchedulerCore(config: SchedulerCore.Config(), cluster: ClusterState())
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat()), now: at(0))
        _ = core.handle(.admitted(spec(id)), now: at(0))
        let placed = core.handle(.intakeCommitted(jobID: id), now: at(0))
        #expect(placed.contains(.assign(jobID: id, attempt: 1, nodeID: "n1")), "\(placed)")
        return core
    }

    @Test("a drain deadline kills the node's attempts, loses them and retries them elsewhere")
    func drainDeadline() {
        var core = running("j")
        _ = core.handle(.heartbeat(nodeID: "n2", heartbeat()), now: at(0.1))
        let control = NodeControl(eligible: true, draining: true, drainDeadline: 1)
        #expect(core.handle(.nodeControl(nodeID: "n1", control, drainDeadline: at(5)), now: at(0.2)).isEmpty)
        #expect(core.cluster.view("n1")?.draining == true)
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat(running: ["j/1"])), now: at(4.8))
        _ = core.handle(.heartbeat(nodeID: "n2", heartbeat()), now: at(4.8))
        #expect(core.handle(.tick, now: at(4.9)).isEmpty, "the deadline has not passed")
        let reason = "the drain deadline of node n1 passed"
        let passed = core.handle(.tick, now: at(5))
        #expect(
            passed == [
                .log(.drainDeadlinePassed(nodeID: "n1")),
                .cancelOnNode(jobID: "j", attempt: 1, nodeID: "n1", reason: reason),
                .log(.attemptLost(jobID: "j", attempt: 1, nodeID: "n1", reason: reason)),
            ],
            "\(passed)"
        )
        // After the backoff the retry goes to n2 (n1 is draining).
        let retried = core.handle(.tick, now: at(5.2))
        #expect(retried.contains(.assign(jobID: "j", attempt: 2, nodeID: "n2")), "\(retried)")
    }

    @Test("an operator's setting for a node the core does not know yet applies when it joins")
    func controlAppliedOnJoin() {
        var core = SchedulerCore(config: SchedulerCore.Config(), cluster: ClusterState())
        _ = core.handle(.nodeControl(nodeID: "n1", NodeControl(eligible: false), drainDeadline: nil), now: at(0))
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat()), now: at(0))
        #expect(core.cluster.view("n1")?.eligible == false)
        _ = core.handle(.admitted(spec("j")), now: at(0))
        #expect(core.handle(.intakeCommitted(jobID: "j"), now: at(0)).isEmpty, "an ineligible node got a job")
    }

    @Test("a failed commit of a job's end is written again at the next tick; the waiters hear it once")
    func failedFinishIsWrittenAgain() {
        var core = running("j")
        let finished = core.handle(.result(jobID: "j", attempt: 1, nodeID: "n1", status: .succeeded), now: at(1))
        let outcome = CoreOutcome(status: .succeeded, attempt: 1, node: "n1", message: "")
        #expect(finished == [.log(.finished(jobID: "j", outcome))])
        #expect(core.handle(.finishFailed(jobID: "j"), now: at(1.1)).isEmpty)
        // The node's result again (the stream redelivers it): the end is decided, nothing new.
        #expect(core.handle(.result(jobID: "j", attempt: 1, nodeID: "n1", status: .succeeded), now: at(1.2)).isEmpty)
        #expect(core.cluster.view("n1")?.slotsReserved == 1, "the slot is held until the end is stored")
        #expect(core.handle(.tick, now: at(1.3)) == [.log(.finished(jobID: "j", outcome))])
        #expect(core.handle(.finishCommitted(jobID: "j"), now: at(1.4)) == [.ended(jobID: "j", outcome)])
        #expect(core.cluster.view("n1")?.slotsReserved == 0)
        #expect(core.handle(.finishCommitted(jobID: "j"), now: at(1.5)).isEmpty, "ended twice")
    }

    @Test(
        "after a job ended, its counted result again changes nothing; another attempt's is late; forgotten after endedMemory more"
    )
    func endedJobsRemembered() {
        var config = SchedulerCore.Config()
        config.endedMemory = 3
        var core = SchedulerCore(config: config, cluster: ClusterState())
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat(slots: 8)), now: at(0))
        // Ids long enough to be kept apart from their strings (see `CompactJobID`), and one longer.
        let ids = [
            "job-0000-0000-0000-0000-0001", "job-0000-0000-0000-0000-0002", "job-0000-0000-0000-0000-0003",
            "job-0000-0000-0000-0000-0004-and-some-more-bytes", "job-0000-0000-0000-0000-0005",
        ]
        func end(_ id: String, at time: Double) {
            _ = core.handle(.admitted(spec(id)), now: at(time))
            _ = core.handle(.intakeCommitted(jobID: id), now: at(time))
            _ = core.handle(.result(jobID: id, attempt: 1, nodeID: "n1", status: .succeeded), now: at(time))
            #expect(core.handle(.finishCommitted(jobID: id), now: at(time)).count == 1, "\(id) did not end")
        }
        for (index, id) in ids.prefix(3).enumerated() { end(id, at: Double(index)) }
        for id in ids.prefix(3) {
            #expect(core.remembers(id))
            #expect(core.handle(.result(jobID: id, attempt: 1, nodeID: "n1", status: .succeeded), now: at(4)).isEmpty)
            #expect(
                core.handle(.result(jobID: id, attempt: 2, nodeID: "n1", status: .failed), now: at(4))
                    == [.log(.resultLate(jobID: id, attempt: 2, nodeID: "n1", status: .failed))]
            )
            #expect(
                core.handle(.result(jobID: id, attempt: 1, nodeID: "n2", status: .succeeded), now: at(4))
                    == [.log(.resultLate(jobID: id, attempt: 1, nodeID: "n2", status: .succeeded))]
            )
        }
        #expect(!core.remembers("job-0000-0000-0000-0000-0004"), "an id that is a prefix of an ended one")
        end(ids[3], at: 5)
        end(ids[4], at: 6)
        // Three remembered: the first two are forgotten, so their result again is late.
        #expect(!core.remembers(ids[0]) && !core.remembers(ids[1]))
        #expect(core.remembers(ids[2]) && core.remembers(ids[3]) && core.remembers(ids[4]))
        #expect(
            core.handle(.result(jobID: ids[0], attempt: 1, nodeID: "n1", status: .succeeded), now: at(7))
                == [.log(.resultLate(jobID: ids[0], attempt: 1, nodeID: "n1", status: .succeeded))]
        )
        #expect(core.handle(.result(jobID: ids[3], attempt: 1, nodeID: "n1", status: .succeeded), now: at(7)).isEmpty)
    }

    @Test("after a restart: a restored attempt its node lists is kept; one it does not list is lost at TTL + grace")
    func restoredAttempts() {
        var core = SchedulerCore(
            config: SchedulerCore.Config(),
            cluster: ClusterState(ttl: .seconds(3), grace: .seconds(2))
        )
        _ = core.handle(.restored(spec("kept"), attempt: 2, node: "n1"), now: at(0))
        _ = core.handle(.restored(spec("gone"), attempt: 1, node: "n1"), now: at(0))
        _ = core.handle(.restored(spec("waiting"), attempt: 0, node: nil), now: at(0))
        // n1 joins with two slots, listing one restored attempt: that one holds a slot, the one it
        // does not list holds none (the previous scheduler may have given it up without storing
        // that), so the queued job takes the other slot.
        let joined = core.handle(.heartbeat(nodeID: "n1", heartbeat(slots: 2, running: ["kept/2"])), now: at(0.5))
        #expect(
            // A restored queued job's next attempt skips a number: attempt 1 may have been sent unrecorded.
            joined == [
                .log(.attemptPlaced(jobID: "waiting", attempt: 2, nodeID: "n1")),
                .assign(jobID: "waiting", attempt: 2, nodeID: "n1"),
            ],
            "\(joined)"
        )
        #expect(core.cluster.view("n1")?.slotsReserved == 2)
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat(slots: 2, running: ["kept/2", "waiting/2"])), now: at(4.9))
        #expect(core.handle(.tick, now: at(4.9)).isEmpty, "settled before the deadline")
        let settled = core.handle(.tick, now: at(5))
        let reason = "after a scheduler restart node n1 did not confirm attempt 1"
        #expect(settled == [.log(.attemptLost(jobID: "gone", attempt: 1, nodeID: "n1", reason: reason))], "\(settled)")
        #expect(core.jobs["kept"]?.phase == .running(attempt: 2, node: "n1", admitted: true))
        // A restored attempt's result counts like any running one's.
        let result = core.handle(.result(jobID: "kept", attempt: 2, nodeID: "n1", status: .failed), now: at(5.1))
        #expect(
            result == [
                .log(.finished(jobID: "kept", CoreOutcome(status: .failed, attempt: 2, node: "n1", message: "")))
            ]
        )
    }

    @Test("a pause of the scheduler itself is not the nodes' fault: their TTL restarts after it, then counts again")
    func schedulerPause() {
        var core = running("j")
        #expect(core.handle(.tick, now: at(0.25)).isEmpty)
        // The scheduler stalls for 9.5 s (no tick, no heartbeat handled), far past TTL + grace (5 s).
        let resumed = core.handle(.tick, now: at(10))
        #expect(resumed == [.paused(.milliseconds(9500))], "no node down, no attempt lost: \(resumed)")
        #expect(core.cluster.isUp("n1"))
        // The heartbeats that waited during the pause are handled; then n1 really goes silent.
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat(running: ["j/1"])), now: at(10.1))
        var downAt: Double?
        for second in stride(from: 10.25, through: 20, by: 0.25) where downAt == nil {
            let actions = core.handle(.tick, now: at(second))
            if actions.contains(.log(.nodeDown(nodeID: "n1"))) {
                #expect(
                    actions.contains(
                        .log(
                            .attemptLost(
                                jobID: "j",
                                attempt: 1,
                                nodeID: "n1",
                                reason: "node n1 stopped sending heartbeats"
                            )
                        )
                    )
                )
                downAt = second
            }
        }
        #expect(downAt == 15.25, "down once TTL + grace passed after its last heartbeat (10.1 s)")
    }

    @Test("a lost attempt its node still runs is killed when the node is back; its CANCELLED does not end the job")
    func lostAttemptKilledOnReturn() {
        var core = running("j")
        _ = core.handle(.heartbeat(nodeID: "n2", heartbeat()), now: at(0))
        var lostAt: Double?
        for second in stride(from: 0.25, through: 6, by: 0.25) where lostAt == nil {
            _ = core.handle(.heartbeat(nodeID: "n2", heartbeat()), now: at(second))
            if core.handle(.tick, now: at(second)).contains(.log(.nodeDown(nodeID: "n1"))) { lostAt = second }
        }
        #expect(lostAt != nil, "n1 went silent past TTL + grace")
        // n1 comes back still running attempt 1, before the retry is sent: the core has it killed.
        let back = core.handle(.heartbeat(nodeID: "n1", heartbeat(running: ["j/1"])), now: at(6.1))
        let reason = "the scheduler no longer assigns this attempt to this node"
        #expect(back.contains(.cancelOnNode(jobID: "j", attempt: 1, nodeID: "n1", reason: reason)), "\(back)")
        let killed = core.handle(.result(jobID: "j", attempt: 1, nodeID: "n1", status: .cancelled), now: at(6.2))
        #expect(killed == [.log(.resultLate(jobID: "j", attempt: 1, nodeID: "n1", status: .cancelled))], "\(killed)")
        // The retry goes out after its backoff, and its result ends the job.
        var retried: [CoreAction] = []
        for second in stride(from: 6.25, through: 10, by: 0.25) where retried.isEmpty {
            retried = core.handle(.tick, now: at(second)).filter {
                if case .assign = $0 { return true }
                return false
            }
        }
        #expect(
            retried.count == 1 && retried.contains { if case .assign("j", 2, _) = $0 { true } else { false } },
            "\(retried)"
        )
    }

    @Test("a job that no longer validates is accepted and ends ERROR once stored, never REJECTED")
    func invalidEndsError() {
        var core = SchedulerCore(config: SchedulerCore.Config(), cluster: ClusterState())
        _ = core.handle(.admitted(spec("j", invalid: "no longer valid")), now: at(0))
        let actions = core.handle(.intakeCommitted(jobID: "j"), now: at(0))
        #expect(
            actions == [
                .log(
                    .finished(
                        jobID: "j",
                        CoreOutcome(status: .error, attempt: 0, node: nil, message: "no longer valid")
                    )
                )
            ]
        )
    }

    @Test("a cancel before the intake commit ends the job CANCELLED with its reason once committed, unplaced")
    func cancelWhileCommitting() {
        var core = SchedulerCore(config: SchedulerCore.Config(), cluster: ClusterState())
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat()), now: at(0))
        _ = core.handle(.admitted(spec("j")), now: at(0))
        #expect(core.handle(.cancel(jobID: "j", reason: "cancelled by tenant a"), now: at(0)).isEmpty)
        let actions = core.handle(.intakeCommitted(jobID: "j"), now: at(0))
        let outcome = CoreOutcome(status: .cancelled, attempt: 0, node: nil, message: "cancelled by tenant a")
        #expect(actions == [.log(.finished(jobID: "j", outcome))], "\(actions)")
    }

    @Test(
        "an attempt its heartbeating node stops listing is lost after the grace and retried; one it lists as reporting its result is not"
    )
    func unlistedAttemptLost() {
        var core = running("j")
        _ = core.handle(.assignAnswered(jobID: "j", attempt: 1, refusal: nil), now: at(0.01))
        _ = core.handle(.admitted(spec("k")), now: at(0.02))
        let placed = core.handle(.intakeCommitted(jobID: "k"), now: at(0.02))
        #expect(placed.contains(.assign(jobID: "k", attempt: 1, nodeID: "n1")), "\(placed)")
        _ = core.handle(.assignAnswered(jobID: "k", attempt: 1, refusal: nil), now: at(0.03))
        // n1 keeps heartbeating: it lists k (ended, its result on its way), never j.
        var reporting = heartbeat()
        reporting.reportingJobs = ["k/1"]
        var lostAt: Double?
        var retried = false
        for step in 1...90 {
            let t = Double(step) / 2
            var actions = core.handle(.tick, now: at(t))
            if step % 2 == 0 { actions += core.handle(.heartbeat(nodeID: "n1", reporting), now: at(t + 0.1)) }
            for action in actions {
                switch action {
                case .log(.attemptLost(let id, let attempt, let node, let reason)):
                    #expect(id == "j" && attempt == 1 && node == "n1", "\(action)")
                    #expect(reason.contains("has not listed attempt 1"), "\(reason)")
                    #expect(lostAt == nil, "lost twice")
                    lostAt = t
                case .assign(let id, let attempt, _):
                    #expect(id == "j" && attempt == 2, "\(action)")
                    retried = true
                default:
                    break
                }
            }
        }
        // First missed at the tick of 0.5 s; lost at the first check 30 s later.
        #expect(lostAt.map { $0 >= 30.5 && $0 <= 32 } == true, "lost at \(String(describing: lostAt))")
        #expect(retried, "the lost attempt was not retried")
        #expect(core.jobs["k"]?.phase == .running(attempt: 1, node: "n1", admitted: true))
    }

    @Test("a node that lists an attempt the core does not own is told to kill it")
    func reconcile() {
        var core = running("j")
        let actions = core.handle(.heartbeat(nodeID: "n1", heartbeat(running: ["j/1", "old/4"])), now: at(1))
        #expect(
            actions == [
                .cancelOnNode(
                    jobID: "old",
                    attempt: 4,
                    nodeID: "n1",
                    reason: "the scheduler no longer assigns this attempt to this node"
                )
            ]
        )
    }
}

/// Stateful sandboxes in the core, hand-fed.
@Suite("Scheduler core: sandboxes, hand-fed")
struct SandboxCoreTests {
    let origin = ContinuousClock.now
    let base = SchedulerCoreTests()

    func at(_ seconds: Double) -> ContinuousClock.Instant { origin + .milliseconds(Int64(seconds * 1000)) }

    func spec(_ id: String, timeout: Duration = .seconds(60), lifetime: Duration = .seconds(3600)) -> CoreSandbox.Spec {
        CoreSandbox.Spec(
            id: id,
            tenant: "a",
            request: PlacementRequest(runtime: "null"),
            timeout: timeout,
            maxLifetime: lifetime
        )
    }

    /// A core with n1 (2 slots) up and sandbox `id` running on it.
    func running(_ id: String, timeout: Duration = .seconds(60), lifetime: Duration = .seconds(3600)) -> SchedulerCore {
        var core = SchedulerCore(config: SchedulerCore.Config(), cluster: ClusterState())
        _ = core.handle(.heartbeat(nodeID: "n1", base.heartbeat()), now: at(0))
        _ = core.handle(.sandbox(.admitted(spec(id, timeout: timeout, lifetime: lifetime))), now: at(0))
        let placed = core.handle(.sandbox(.committed(sandboxID: id)), now: at(0))
        #expect(
            placed == [
                .log(.sandbox(.placed(sandboxID: id, nodeID: "n1"))), .sandbox(.start(sandboxID: id, nodeID: "n1")),
            ],
            "\(placed)"
        )
        let started = core.handle(.sandbox(.startAnswered(sandboxID: id, refusal: nil)), now: at(0.1))
        #expect(started == [.log(.sandbox(.started(sandboxID: id, nodeID: "n1")))])
        return core
    }

    @Test("a sandbox holds its slot until its end is stored; a kill tells its node and ends it once")
    func killed() {
        var core = running("s")
        #expect(core.cluster.view("n1")?.slotsReserved == 1)
        let end = SandboxEnd(reason: .killed, node: "n1", message: "killed by its tenant")
        let killed = core.handle(.sandbox(.kill(sandboxID: "s")), now: at(1))
        #expect(
            killed == [
                .sandbox(.kill(sandboxID: "s", nodeID: "n1", reason: "killed by its tenant")),
                .log(.sandbox(.ended(sandboxID: "s", end))),
            ]
        )
        #expect(core.handle(.sandbox(.kill(sandboxID: "s")), now: at(1.1)).isEmpty, "killed twice")
        #expect(core.cluster.view("n1")?.slotsReserved == 1)
        #expect(
            core.handle(.sandbox(.endCommitted(sandboxID: "s")), now: at(1.2)) == [
                .sandbox(.ended(sandboxID: "s", end))
            ]
        )
        #expect(core.cluster.view("n1")?.slotsReserved == 0)
        #expect(core.sandboxes.isEmpty)
    }

    @Test("a sandbox its node reports dead ends DIED, one its node killed at its timeout TIMED_OUT; no kill is sent")
    func endedOnNode() {
        var core = running("s")
        let died = core.handle(.sandbox(.diedOnNode(sandboxID: "s", nodeID: "n1", message: "agent died")), now: at(1))
        #expect(
            died == [
                .log(.sandbox(.ended(sandboxID: "s", SandboxEnd(reason: .died, node: "n1", message: "agent died"))))
            ]
        )
        core = running("t")
        let other = core.handle(.sandbox(.timedOutOnNode(sandboxID: "t", nodeID: "n2", message: "x")), now: at(1))
        #expect(other.isEmpty, "a report from a node that does not hold it changes nothing")
        let timedOut = core.handle(.sandbox(.timedOutOnNode(sandboxID: "t", nodeID: "n1", message: "late")), now: at(1))
        let end = SandboxEnd(reason: .timedOut, node: "n1", message: "late")
        #expect(timedOut == [.log(.sandbox(.ended(sandboxID: "t", end)))])
        #expect(
            core.handle(.sandbox(.endCommitted(sandboxID: "t")), now: at(1.1)) == [
                .sandbox(.ended(sandboxID: "t", end))
            ]
        )
        #expect(core.cluster.view("n1")?.slotsReserved == 0)
    }

    @Test("its timeout kills it; setting it again extends it, never past its maximum lifetime")
    func timeouts() {
        var core = running("s", timeout: .seconds(10), lifetime: .seconds(30))
        for second in stride(from: 2.0, through: 28, by: 2) {
            _ = core.handle(.heartbeat(nodeID: "n1", base.heartbeat()), now: at(second))
        }
        _ = core.handle(.sandbox(.setTimeout(sandboxID: "s", timeout: .seconds(20))), now: at(5))
        #expect(core.handle(.tick, now: at(24.9)).isEmpty, "extended to 25 s")
        let extended = core.handle(.sandbox(.setTimeout(sandboxID: "s", timeout: .seconds(60))), now: at(24.9))
        #expect(extended == [.log(.sandbox(.timeoutSet(sandboxID: "s", deadline: at(30))))], "capped at the lifetime")
        for second in stride(from: 25.0, to: 30, by: 0.25) {
            #expect(core.handle(.tick, now: at(second)).isEmpty, "still within its lifetime at \(second) s")
        }
        let ended = core.handle(.tick, now: at(30))
        let message = "its maximum lifetime of 30.0 seconds passed"
        #expect(
            ended == [
                .sandbox(.kill(sandboxID: "s", nodeID: "n1", reason: message)),
                .log(.sandbox(.ended(sandboxID: "s", SandboxEnd(reason: .timedOut, node: "n1", message: message)))),
            ],
            "\(ended)"
        )
    }

    @Test("a sandbox on a node that goes down ends LOST; one no node has room for fails after the create timeout")
    func lostAndFailed() {
        var core = running("s")
        _ = core.handle(.heartbeat(nodeID: "n1", base.heartbeat(slots: 1)), now: at(1))
        _ = core.handle(.sandbox(.admitted(spec("t"))), now: at(1))
        #expect(core.handle(.sandbox(.committed(sandboxID: "t")), now: at(1)).isEmpty, "n1 is full")
        let down = core.handle(.tick, now: at(6.5))
        #expect(down.contains(.log(.nodeDown(nodeID: "n1"))))
        #expect(
            down.contains {
                if case .log(.sandbox(.ended("s", let end))) = $0 { return end.reason == .lost }
                return false
            },
            "\(down)"
        )
        let failed = core.handle(.tick, now: at(11))
        #expect(
            failed.contains {
                if case .log(.sandbox(.ended("t", let end))) = $0 { return end.reason == .failed }
                return false
            },
            "\(failed)"
        )
    }

    @Test("after a restart: a sandbox its node reports is kept; one it does not is lost; an unknown one is killed")
    func restored() {
        var core = SchedulerCore(
            config: SchedulerCore.Config(),
            cluster: ClusterState(ttl: .seconds(3), grace: .seconds(2))
        )
        _ = core.handle(.sandbox(.restored(spec("kept"), createdAt: at(-10), node: "n1", deadline: at(50))), now: at(0))
        _ = core.handle(.sandbox(.restored(spec("gone"), createdAt: at(-10), node: "n1", deadline: at(50))), now: at(0))
        var heartbeat = base.heartbeat(slots: 2)
        heartbeat.sandboxes = ["kept", "stray"]
        let joined = core.handle(.heartbeat(nodeID: "n1", heartbeat), now: at(0.5))
        #expect(
            joined == [
                .sandbox(
                    .kill(
                        sandboxID: "stray",
                        nodeID: "n1",
                        reason: "the scheduler no longer places this sandbox on this node"
                    )
                )
            ]
        )
        // The one it lists holds its slot; the one it does not list (its end may have been decided
        // and never stored before the restart) holds none.
        #expect(core.cluster.view("n1")?.slotsReserved == 1, "only the listed restored sandbox holds a slot")
        _ = core.handle(.heartbeat(nodeID: "n1", heartbeat), now: at(4.9))
        let settled = core.handle(.tick, now: at(5))
        #expect(core.sandboxes["kept"]?.phase == .running(node: "n1", deadline: at(50)))
        #expect(
            settled.contains {
                if case .log(.sandbox(.ended("gone", let end))) = $0 { return end.reason == .lost }
                return false
            },
            "\(settled)"
        )
    }
}

/// A node agent that restarts (an upgrade) keeping its sandboxes: the new process re-adopts them and
/// lists them from its first heartbeat on, with a new incarnation.
extension SandboxCoreTests {
    static let memory: UInt64 = 256 << 20

    /// A sandbox of tenant a that holds 500 millicores and 256 MiB.
    func sized(_ id: String) -> CoreSandbox.Spec {
        CoreSandbox.Spec(
            id: id,
            tenant: "a",
            request: PlacementRequest(runtime: "null", cpuMillis: 500, memoryBytes: Self.memory),
            timeout: .seconds(60),
            maxLifetime: .seconds(3600)
        )
    }

    /// A core with n1 (incarnation 1, 4 slots) up.
    func coreWithNode() -> SchedulerCore {
        var core = SchedulerCore(
            config: SchedulerCore.Config(),
            cluster: ClusterState(ttl: .seconds(3), grace: .seconds(2))
        )
        _ = core.handle(.heartbeat(nodeID: "n1", base.heartbeat(slots: 4)), now: at(0))
        return core
    }

    /// Places sandbox `id` on n1 at 0 s; `answered`: n1 answers its start (it runs, deadline 60 s).
    func start(_ id: String, in core: inout SchedulerCore, answered: Bool = true) {
        _ = core.handle(.sandbox(.admitted(sized(id))), now: at(0))
        let placed = core.handle(.sandbox(.committed(sandboxID: id)), now: at(0))
        #expect(placed.contains(.sandbox(.start(sandboxID: id, nodeID: "n1"))), "\(placed)")
        if answered { _ = core.handle(.sandbox(.startAnswered(sandboxID: id, refusal: nil)), now: at(0.1)) }
    }

    /// n1's heartbeat after its agent restarted (incarnation 2), listing `sandboxes`.
    func restarted(listing sandboxes: [String]) -> Hangar_V1_NodeHeartbeat {
        var heartbeat = base.heartbeat(incarnation: "2", slots: 4)
        heartbeat.sandboxes = sandboxes
        return heartbeat
    }

    /// What n1 reserves: slots, millicores, bytes.
    func reserved(_ core: SchedulerCore) -> (slots: Int, cpu: UInt64, memory: UInt64) {
        let view = core.cluster.view("n1")
        return (view?.slotsReserved ?? -1, view?.cpuReserved ?? 0, view?.memoryReserved ?? 0)
    }

    @Test(
        "a running sandbox its restarted node lists in its first heartbeat runs on, reserved again, recorded re-adopted"
    )
    func readoptedAfterNodeRestart() {
        var core = coreWithNode()
        start("s", in: &core)
        #expect(core.sandboxes["s"]?.phase == .running(node: "n1", deadline: at(60)))
        // A job runs there too: the restart loses it (and its reservation) as before.
        _ = core.handle(.admitted(base.spec("j", maxAttempts: 1)), now: at(0.2))
        #expect(
            core.handle(.intakeCommitted(jobID: "j"), now: at(0.2)).contains(
                .assign(jobID: "j", attempt: 1, nodeID: "n1")
            )
        )
        #expect(reserved(core) == (2, 500, Self.memory))
        let restart = core.handle(.heartbeat(nodeID: "n1", restarted(listing: ["s"])), now: at(1))
        // For the sandbox no end, no kill: only the record of its re-adoption.
        #expect(restart.contains(.log(.sandbox(.readopted(sandboxID: "s", nodeID: "n1")))), "\(restart)")
        #expect(
            !restart.contains {
                switch $0 {
                case .log(.sandbox(.ended)), .sandbox: true
                default: false
                }
            },
            "\(restart)"
        )
        #expect(
            restart.contains {
                if case .log(.finished("j", let outcome)) = $0 { outcome.status == .lost } else { false }
            }
        )
        #expect(core.sandboxes["s"]?.phase == .running(node: "n1", deadline: at(60)), "same node, same deadline")
        // The restart dropped n1's reservations; the re-adopted sandbox's is taken again.
        #expect(reserved(core) == (1, 500, Self.memory), "\(reserved(core))")
        // Its tenant's usage was never given back: it counts once.
        #expect(core.queue.usage["a"] == FairQueue.Usage(running: 1, cpuMillis: 500, memoryBytes: Self.memory))
        // The new incarnation's next heartbeats take nothing more.
        #expect(core.handle(.heartbeat(nodeID: "n1", restarted(listing: ["s"])), now: at(2)).isEmpty)
        #expect(reserved(core) == (1, 500, Self.memory))
        // It ends as any running sandbox does, giving back exactly what it holds.
        let killed = core.handle(.sandbox(.kill(sandboxID: "s")), now: at(3))
        #expect(killed.first == .sandbox(.kill(sandboxID: "s", nodeID: "n1", reason: "killed by its tenant")))
        _ = core.handle(.sandbox(.endCommitted(sandboxID: "s")), now: at(3.1))
        #expect(reserved(core) == (0, 0, 0))
        #expect(core.queue.usage["a"] == FairQueue.Usage())
    }

    @Test(
        "a restarted node's sandbox it does not list, or one still starting, ends LOST as before; a listed one runs on"
    )
    func lostAfterNodeRestart() {
        var core = coreWithNode()
        start("gone", in: &core)
        start("kept", in: &core)
        start("new", in: &core, answered: false)  // the node may or may not have created it
        #expect(reserved(core) == (3, 1500, 3 * Self.memory))
        let restart = core.handle(.heartbeat(nodeID: "n1", restarted(listing: ["kept", "new"])), now: at(1))
        let lost = SandboxEnd(reason: .lost, node: "n1", message: "node n1 restarted; its state is gone")
        #expect(
            restart == [
                .log(.sandbox(.ended(sandboxID: "gone", lost))),
                .log(.sandbox(.readopted(sandboxID: "kept", nodeID: "n1"))),
                .log(.sandbox(.ended(sandboxID: "new", lost))),
            ],
            "\(restart)"
        )
        #expect(core.sandboxes["kept"]?.phase == .running(node: "n1", deadline: at(60)))
        #expect(reserved(core) == (1, 500, Self.memory), "only the re-adopted sandbox holds n1: \(reserved(core))")
        // The lost ones held only their tenant's usage (the restart dropped their reservations).
        for id in ["gone", "new"] {
            #expect(
                core.handle(.sandbox(.endCommitted(sandboxID: id)), now: at(1.2)) == [
                    .sandbox(.ended(sandboxID: id, lost))
                ]
            )
        }
        #expect(reserved(core) == (1, 500, Self.memory))
        #expect(core.queue.usage["a"] == FairQueue.Usage(running: 1, cpuMillis: 500, memoryBytes: Self.memory))
        // The node's answer to the lost one's start comes too late to matter; now that the core
        // forgot it, the node is told to kill it.
        #expect(core.handle(.sandbox(.startAnswered(sandboxID: "new", refusal: nil)), now: at(1.3)).isEmpty)
        let next = core.handle(.heartbeat(nodeID: "n1", restarted(listing: ["kept", "new"])), now: at(2))
        #expect(
            next == [
                .sandbox(
                    .kill(
                        sandboxID: "new",
                        nodeID: "n1",
                        reason: "the scheduler no longer places this sandbox on this node"
                    )
                )
            ],
            "\(next)"
        )
    }

    @Test(
        "a restored sandbox (scheduler recovery) its restarted node lists stays restored, reserved once, then runs on"
    )
    func restoredReadoptedAfterNodeRestart() {
        var core = SchedulerCore(
            config: SchedulerCore.Config(),
            cluster: ClusterState(ttl: .seconds(3), grace: .seconds(2))
        )
        _ = core.handle(.sandbox(.restored(sized("r"), createdAt: at(-10), node: "n1", deadline: at(50))), now: at(0))
        var first = base.heartbeat(slots: 4)
        first.sandboxes = ["r"]
        _ = core.handle(.heartbeat(nodeID: "n1", first), now: at(0.5))
        #expect(core.sandboxes["r"]?.phase == .restored(node: "n1", deadline: at(50), reserved: true))
        #expect(reserved(core) == (1, 500, Self.memory))
        let restart = core.handle(.heartbeat(nodeID: "n1", restarted(listing: ["r"])), now: at(1))
        #expect(restart == [.log(.sandbox(.readopted(sandboxID: "r", nodeID: "n1")))], "\(restart)")
        #expect(core.sandboxes["r"]?.phase == .restored(node: "n1", deadline: at(50), reserved: true))
        #expect(reserved(core) == (1, 500, Self.memory), "reserved again exactly once: \(reserved(core))")
        _ = core.handle(.heartbeat(nodeID: "n1", restarted(listing: ["r"])), now: at(4.9))
        #expect(core.handle(.tick, now: at(5)).isEmpty, "confirmed at the recovery deadline")
        #expect(core.sandboxes["r"]?.phase == .running(node: "n1", deadline: at(50)))
        #expect(reserved(core) == (1, 500, Self.memory))
        #expect(core.queue.usage["a"] == FairQueue.Usage(running: 1, cpuMillis: 500, memoryBytes: Self.memory))
    }
}
