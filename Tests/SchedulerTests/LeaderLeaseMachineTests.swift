import Foundation
import HangarScheduler
import Testing

/// Times as offsets from one instant, so the rules read in milliseconds.
private let origin = ContinuousClock.now
private func at(_ milliseconds: Int) -> ContinuousClock.Instant { origin + .milliseconds(milliseconds) }

/// lease 600 ms (renew every 200 ms), margin 200 ms, poll 100 ms; a new key's terms start at 1.
private let settings = LeaderLeaseSettings(
    lease: .milliseconds(600),
    margin: .milliseconds(200),
    poll: .milliseconds(100),
    firstTerm: 1
)

@Suite("Leader lease state machine: the rules, without I/O")
struct LeaderLeaseMachineTests {
    /// A machine that read an absent key at 0, created it (term 1) at 0 and got revision 10 at 5 ms.
    private func leader(holder: String = "a") -> LeaderLeaseMachine {
        var machine = LeaderLeaseMachine(holder: holder, settings: settings)
        #expect(machine.next(at: at(0)) == .read)
        machine.observed(.absent, at: at(0))
        #expect(machine.next(at: at(0)) == .write(.create(LeaderRecord(holder: holder, term: 1))))
        machine.written(revision: 10, at: at(5))
        #expect(machine.role == .leader(term: 1))
        return machine
    }

    @Test("a fresh lease reads first, creates an absent key with term 1, and leads on success")
    func createsAbsentKey() {
        let machine = leader()
        #expect(machine.highestTerm == 1)
        // The lease runs from when the write was sent (0), not when it was answered (5).
        #expect(machine.leaderDeadline == at(600))
    }

    @Test("the leader renews every lease/3 by compare-and-set on its own last revision, same term")
    func renews() {
        var machine = leader()
        #expect(machine.next(at: at(100)) == .wait(until: at(200)))
        let renewal = LeaderLeaseMachine.Write.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 10)
        #expect(machine.next(at: at(200)) == .write(renewal))
        machine.written(revision: 11, at: at(450))
        #expect(machine.role == .leader(term: 1))
        // Sent at 200: leader until 800, whatever the answer's delay was.
        #expect(machine.leaderDeadline == at(800))
        #expect(machine.next(at: at(450)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 11)))
    }

    @Test(
        "a refused renewal steps the leader down at once; it reads who holds the key, and another's write makes it standby"
    )
    func refusedRenewalStepsDown() {
        var machine = leader()
        _ = machine.next(at: at(200))
        machine.refused(at: at(210))
        #expect(machine.role == .suspended(term: 1))
        #expect(!machine.role.isLeader)
        #expect(machine.leaderDeadline == nil)
        #expect(machine.next(at: at(210)) == .read)
        machine.observed(.present(revision: 11, record: LeaderRecord(holder: "b", term: 2)), at: at(215))
        #expect(machine.role == .standby)
        #expect(machine.highestTerm == 2)
        // Watching revision 11 like any standby: no write before lease + margin.
        #expect(machine.next(at: at(315)) == .read)
        machine.observed(.present(revision: 11, record: LeaderRecord(holder: "b", term: 2)), at: at(315))
        #expect(machine.next(at: at(1015)) == .write(.update(LeaderRecord(holder: "a", term: 3), expectedRevision: 11)))
    }

    @Test("a failed renewal (no answer) suspends the leader at once; after a poll it tries to take its record back")
    func failedRenewalSuspends() {
        var machine = leader()
        _ = machine.next(at: at(200))
        machine.failed(at: at(250))
        #expect(machine.role == .suspended(term: 1))
        #expect(machine.next(at: at(250)) == .wait(until: at(350)))
        #expect(machine.next(at: at(350)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 10)))
    }

    @Test("the key's stream elects a leader for longer than the lease: the holder keeps its term and leads again first")
    func outlivesBucketElection() {
        var machine = leader()
        let own = LeaderLeaseMachine.Write.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 10)
        #expect(machine.next(at: at(200)) == .write(own))
        machine.failed(at: at(210))  // "no responders": nothing was stored
        var time = 310
        // Every poll for 4 s (over six leases), the same compare-and-set on its own revision fails.
        while time < 4_300 {
            #expect(machine.next(at: at(time)) == .write(own))
            #expect(!machine.role.isLeader)
            machine.failed(at: at(time + 5))
            time += 105
        }
        #expect(machine.next(at: at(time)) == .write(own))
        machine.written(revision: 11, at: at(time + 5))
        #expect(machine.role == .leader(term: 1))
        #expect(machine.leaderDeadline == at(time + 600))
        #expect(machine.highestTerm == 1)
    }

    @Test(
        "a write that landed though its answer was lost: the retry is refused, the read finds the own record, and that is taken back"
    )
    func lostAnswerLanded() {
        var machine = leader()
        _ = machine.next(at: at(200))
        machine.failed(at: at(250))  // it did land, as revision 11
        #expect(machine.next(at: at(350)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 10)))
        machine.refused(at: at(355))
        #expect(machine.role == .suspended(term: 1))
        #expect(machine.next(at: at(355)) == .read)
        machine.observed(.present(revision: 11, record: LeaderRecord(holder: "a", term: 1)), at: at(360))
        #expect(machine.role == .suspended(term: 1))
        #expect(machine.next(at: at(360)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 11)))
        machine.written(revision: 12, at: at(365))
        #expect(machine.role == .leader(term: 1))
    }

    @Test("a standby whose takeover answer was lost finds its own record and leads in that term")
    func lostTakeoverAnswer() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(0))
        #expect(machine.next(at: at(800)) == .write(.update(LeaderRecord(holder: "b", term: 2), expectedRevision: 7)))
        machine.failed(at: at(900))
        #expect(machine.role == .standby)
        // It reads before trying again, and finds its own write.
        #expect(machine.next(at: at(1000)) == .read)
        machine.observed(.present(revision: 8, record: LeaderRecord(holder: "b", term: 2)), at: at(1010))
        #expect(machine.role == .suspended(term: 2))
        #expect(machine.next(at: at(1010)) == .write(.update(LeaderRecord(holder: "b", term: 2), expectedRevision: 8)))
        machine.written(revision: 9, at: at(1020))
        #expect(machine.role == .leader(term: 2))
    }

    @Test("a renewal still out when the lease ends: the leader steps down at the deadline")
    func hangingRenewalExpires() {
        var machine = leader()
        _ = machine.next(at: at(200))
        // While the write is out, nothing else is done; the wait ends at the deadline.
        #expect(machine.next(at: at(300)) == .wait(until: at(600)))
        machine.expire(at: at(599))
        #expect(machine.role == .leader(term: 1))
        machine.expire(at: at(600))
        #expect(machine.role == .suspended(term: 1))
        // The answer arrives later than sent + lease: too late to lead on it...
        machine.written(revision: 11, at: at(900))
        #expect(machine.role == .suspended(term: 1))
        // ...but it is the key's latest write, its own: taken back at once, in the same term,
        // leading from the new write's send time.
        #expect(machine.next(at: at(900)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 11)))
        machine.written(revision: 12, at: at(950))
        #expect(machine.role == .leader(term: 1))
        #expect(machine.leaderDeadline == at(1500))
    }

    @Test("a renewal answered in time but after its successor was due still only counts from its send time")
    func leaseCountsFromSend() {
        var machine = leader()
        _ = machine.next(at: at(200))
        machine.written(revision: 11, at: at(799))
        #expect(machine.role == .leader(term: 1))
        #expect(machine.leaderDeadline == at(800))
        machine.expire(at: at(800))
        #expect(machine.role == .suspended(term: 1))
    }

    @Test("a renewal answered after the leader stepped down does not by itself make it leader again")
    func noReturnAfterStepDown() {
        var machine = leader()
        #expect(machine.next(at: at(200)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 10)))
        machine.expire(at: at(600))
        #expect(machine.role == .suspended(term: 1))
        // In time for its own lease (200 + 600), but the leader has stepped down already: it
        // leads again only by a new write, sent from now.
        machine.written(revision: 11, at: at(650))
        #expect(machine.role == .suspended(term: 1))
        #expect(machine.leaderDeadline == nil)
        #expect(machine.next(at: at(650)) == .write(.update(LeaderRecord(holder: "a", term: 1), expectedRevision: 11)))
        machine.written(revision: 12, at: at(660))
        #expect(machine.role == .leader(term: 1))
        #expect(machine.leaderDeadline == at(1250))
    }

    @Test("a leader that stops being asked (no next, no answers) is stepped down by expire")
    func expireWithoutSteps() {
        var machine = leader()
        machine.expire(at: at(10_000))
        #expect(machine.role == .suspended(term: 1))
        // next(at:) applies the same rule.
        var other = leader()
        _ = other.next(at: at(601))
        #expect(other.role == .suspended(term: 1))
    }

    @Test("a challenger takes over only after seeing one revision unchanged for lease + margin, with term + 1")
    func challengerWaitsForLapse() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        #expect(machine.next(at: at(0)) == .read)
        let held = LeaderLeaseMachine.Observation.present(revision: 7, record: LeaderRecord(holder: "a", term: 4))
        machine.observed(held, at: at(0))
        #expect(machine.highestTerm == 4)
        var time = 0
        // Polls every 100 ms, the key never changing: no write before 0 + 600 + 200.
        while time < 800 {
            #expect(machine.next(at: at(time)) == .wait(until: at(time + 100)))
            time += 100
            if time < 800 {
                #expect(machine.next(at: at(time)) == .read)
                machine.observed(held, at: at(time))
            }
        }
        #expect(machine.role == .standby)
        #expect(machine.next(at: at(800)) == .write(.update(LeaderRecord(holder: "b", term: 5), expectedRevision: 7)))
        machine.written(revision: 8, at: at(820))
        #expect(machine.role == .leader(term: 5))
        #expect(machine.leaderDeadline == at(1400))
    }

    @Test(
        "a new revision restarts the challenger's count; a failed read does not, but holds it off margin + poll after the next read"
    )
    func newRevisionResetsCount() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(0))
        _ = machine.next(at: at(100))
        machine.observed(.present(revision: 8, record: LeaderRecord(holder: "a", term: 1)), at: at(100))
        // 800 ms after the first read, but only 700 after revision 8 was first seen.
        #expect(machine.next(at: at(800)) == .read)
        machine.readFailed(at: at(800))
        #expect(machine.next(at: at(850)) == .wait(until: at(900)))
        // 900 = 100 + lease + margin, but the key was unreachable: read first.
        #expect(machine.next(at: at(900)) == .read)
        machine.observed(.present(revision: 8, record: LeaderRecord(holder: "a", term: 1)), at: at(900))
        // The count still runs from 100; the holder gets margin + poll (300 ms) to renew first.
        #expect(machine.next(at: at(1000)) == .read)
        machine.observed(.present(revision: 8, record: LeaderRecord(holder: "a", term: 1)), at: at(1000))
        #expect(machine.next(at: at(1100)) == .read)
        machine.observed(.present(revision: 8, record: LeaderRecord(holder: "a", term: 1)), at: at(1100))
        #expect(machine.next(at: at(1200)) == .write(.update(LeaderRecord(holder: "b", term: 2), expectedRevision: 8)))
    }

    @Test("a lost takeover leaves the challenger standby; it reads at once and counts again")
    func lostTakeover() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(0))
        #expect(machine.next(at: at(800)) == .write(.update(LeaderRecord(holder: "b", term: 2), expectedRevision: 7)))
        machine.refused(at: at(810))
        #expect(machine.role == .standby)
        #expect(machine.next(at: at(810)) == .read)
        machine.observed(.present(revision: 9, record: LeaderRecord(holder: "c", term: 2)), at: at(810))
        #expect(machine.highestTerm == 2)
        #expect(machine.next(at: at(1500)) == .read)
        machine.observed(.present(revision: 9, record: LeaderRecord(holder: "c", term: 2)), at: at(1500))
        #expect(machine.next(at: at(1610)) == .write(.update(LeaderRecord(holder: "b", term: 3), expectedRevision: 9)))
    }

    @Test("a failed takeover is retried after a poll, on the same revision (the compare-and-set keeps it safe)")
    func failedTakeoverRetries() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(0))
        let takeover = LeaderLeaseMachine.Write.update(LeaderRecord(holder: "b", term: 2), expectedRevision: 7)
        #expect(machine.next(at: at(800)) == .write(takeover))
        machine.failed(at: at(900))
        #expect(machine.next(at: at(900)) == .wait(until: at(1000)))
        // It reads first, and lets the holder have margin + poll to take its record back.
        #expect(machine.next(at: at(1000)) == .read)
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(1000))
        #expect(machine.next(at: at(1100)) == .read)
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(1100))
        #expect(machine.next(at: at(1200)) == .read)
        machine.observed(.present(revision: 7, record: LeaderRecord(holder: "a", term: 1)), at: at(1200))
        #expect(machine.next(at: at(1300)) == .write(takeover))
    }

    @Test("a create that lost to another creator: standby, reads the winner, no term of its own")
    func lostCreate() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.absent, at: at(0))
        #expect(machine.next(at: at(0)) == .write(.create(LeaderRecord(holder: "b", term: 1))))
        machine.refused(at: at(3))
        #expect(machine.role == .standby)
        #expect(machine.next(at: at(3)) == .read)
    }

    @Test("a value that is not a record is taken over too, above the highest term seen")
    func unreadableRecord() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.present(revision: 3, record: LeaderRecord(holder: "a", term: 6)), at: at(0))
        _ = machine.next(at: at(100))
        machine.observed(.present(revision: 4, record: nil), at: at(100))
        #expect(machine.next(at: at(900)) == .write(.update(LeaderRecord(holder: "b", term: 7), expectedRevision: 4)))
    }

    @Test("a deleted key (absent after a holder) is created above the highest term seen")
    func deletedKey() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        _ = machine.next(at: at(0))
        machine.observed(.present(revision: 3, record: LeaderRecord(holder: "a", term: 6)), at: at(0))
        _ = machine.next(at: at(100))
        machine.observed(.absent, at: at(100))
        #expect(machine.next(at: at(100)) == .write(.create(LeaderRecord(holder: "b", term: 7))))
    }

    @Test("terms never go back: a key created from absent starts at the first term, above any term seen")
    func firstTerm() {
        let seeded = LeaderLeaseSettings(
            lease: .milliseconds(600),
            margin: .milliseconds(200),
            poll: .milliseconds(100),
            firstTerm: 1_000
        )
        var machine = LeaderLeaseMachine(holder: "b", settings: seeded)
        _ = machine.next(at: at(0))
        machine.observed(.absent, at: at(0))
        #expect(machine.next(at: at(0)) == .write(.create(LeaderRecord(holder: "b", term: 1_000))))
        machine.refused(at: at(1))
        _ = machine.next(at: at(1))
        machine.observed(.present(revision: 3, record: LeaderRecord(holder: "a", term: 2_000)), at: at(1))
        _ = machine.next(at: at(101))
        machine.observed(.absent, at: at(101))
        #expect(machine.next(at: at(101)) == .write(.create(LeaderRecord(holder: "b", term: 2_001))))
        // By default the first term is the Unix time in seconds, so a bucket recreated later starts higher.
        let now = UInt64(Date().timeIntervalSince1970)
        let byDefault = LeaderLeaseSettings().firstTerm
        #expect(byDefault >= now - 5 && byDefault <= now + 5)
    }

    @Test("answers without a write out are ignored")
    func strayAnswers() {
        var machine = LeaderLeaseMachine(holder: "b", settings: settings)
        machine.written(revision: 5, at: at(0))
        machine.refused(at: at(0))
        machine.failed(at: at(0))
        #expect(machine.role == .standby)
        #expect(machine.next(at: at(0)) == .read)
    }

    @Test("settings that cannot keep leaders apart are named")
    func badSettings() {
        #expect(LeaderLeaseSettings().problem == nil)
        #expect(LeaderLeaseSettings(margin: .zero).problem?.contains("margin") == true)
        #expect(LeaderLeaseSettings(lease: .zero).problem?.contains("lease") == true)
        #expect(LeaderLeaseSettings(poll: .zero).problem?.contains("poll") == true)
    }

    @Test("the record's stored form round-trips; other values are not records")
    func recordCoding() {
        let record = LeaderRecord(holder: "host-12-ab", term: 42)
        #expect(LeaderRecord(decoding: record.encoded()) == record)
        #expect(LeaderRecord(decoding: Data("not json".utf8)) == nil)
        #expect(LeaderRecord(decoding: Data("{\"holder\":\"x\"}".utf8)) == nil)
    }

    @Test(
        "simulated cluster: delays, stalls, lost answers, register outages, clock rates ±1 %, kills — never two leaders, terms rise",
        arguments: 0..<20
    )
    func simulation(seed: UInt64) {
        var simulation = LeaseSimulation(seed: seed)
        simulation.run()
        let violations = Array(simulation.violations.prefix(3))
        #expect(violations.isEmpty)
        #expect(simulation.terms.count >= 2, "a leader was killed, so a takeover must have happened")
        #expect(simulation.terms == simulation.terms.sorted() && Set(simulation.terms).count == simulation.terms.count)
        #expect(simulation.outages > 0, "the register was unavailable for longer than a lease at least once")
        #expect(simulation.leadersAtEnd == 1, "after the faults stop, one leader")
    }
}

/// A deterministic simulation of three schedulers over one compare-and-set register, in 5 ms ticks
/// of true time. Each scheduler's clock runs at its own rate; requests take 1-60 ms each way (5 %
/// of them up to 1.5 s: a partition or a stalled server); 3 % of answers are lost (the write may still have been applied); the leader is killed at random
/// and replaced by a new process. Checks that no two live schedulers are leader at the same tick,
/// and that one leads once the faults stop.
private struct LeaseSimulation {
    struct Operation {
        enum Kind {
            case read
            case write(LeaderLeaseMachine.Write)
        }
        var kind: Kind
        var appliesAt: Int
        var answersAt: Int
        var lost: Bool
        var outcome: Outcome? = nil
    }

    enum Outcome {
        case observed(LeaderLeaseMachine.Observation)
        case written(UInt64)
        case refused
        case unavailable
    }

    struct Process {
        var machine: LeaderLeaseMachine
        var rate: Double
        var startedAt: Int
        var operation: Operation?
        var alive = true
    }

    var random: SplitMix
    var processes: [Process] = []
    var register: (revision: UInt64, value: Data)?
    var revision: UInt64 = 0
    var violations: [String] = []
    var terms: [UInt64] = []
    /// Who led in which term, in order; a leader that takes its own record back is not a new one.
    var leaderships: [(holder: String, term: UInt64)] = []
    var reclaims = 0
    var outages = 0
    /// Outages of the register (a stream electing a leader): every request applied meanwhile fails
    /// without effect, as "no responders" does.
    var outageUntil = -1
    var nextOutage = 2_000
    var leadersAtEnd = 0
    var spawned = 0
    /// Kills and lost answers stop here; the end is checked 6 s later.
    let faultsEnd = 30_000
    let lease = LeaderLeaseSettings(lease: .milliseconds(600), margin: .milliseconds(200), poll: .milliseconds(100))

    init(seed: UInt64) {
        random = SplitMix(seed: seed)
    }

    mutating func spawn(at now: Int) {
        spawned += 1
        let rate = 0.99 + Double(random.next() % 2001) / 100_000
        processes.append(
            Process(machine: LeaderLeaseMachine(holder: "s\(spawned)", settings: lease), rate: rate, startedAt: now)
        )
    }

    /// The process's own clock at true time `now` (ms).
    func local(_ process: Process, _ now: Int) -> ContinuousClock.Instant {
        origin + .microseconds(Int((Double(now - process.startedAt) * process.rate * 1000).rounded(.down)) + 1_000_000)
    }

    mutating func run() {
        for _ in 0..<3 { spawn(at: 0) }
        let end = faultsEnd + 6_000
        var nextKill = 3_000 + Int(random.next() % 3_000)
        for now in stride(from: 0, through: end, by: 5) {
            // The server applies requests in the order they arrive.
            for index in processes.indices where processes[index].operation != nil {
                guard var operation = processes[index].operation, operation.outcome == nil,
                    operation.appliesAt <= now
                else { continue }
                operation.outcome = apply(operation.kind, at: now)
                processes[index].operation = operation
            }
            for index in processes.indices where processes[index].alive {
                var process = processes[index]
                let wasLeader = process.machine.role.isLeader
                let time = local(process, now)
                process.machine.expire(at: time)  // the driver's timer
                if let operation = process.operation, let outcome = operation.outcome, operation.answersAt <= now {
                    process.operation = nil
                    switch (operation.kind, outcome, operation.lost) {
                    case (.read, _, true), (.read, .unavailable, _): process.machine.readFailed(at: time)
                    case (.write, .unavailable, _): process.machine.failed(at: time)
                    case (.read, .observed(let seen), false): process.machine.observed(seen, at: time)
                    case (.write, _, true): process.machine.failed(at: time)
                    case (.write, .written(let revision), false):
                        process.machine.written(revision: revision, at: time)
                        if !wasLeader, case .leader(let term) = process.machine.role {
                            if let last = leaderships.last, last.holder == process.machine.holder, last.term == term {
                                reclaims += 1  // took its own record back (rule 4): same leader, same term
                            } else {
                                terms.append(term)
                                leaderships.append((process.machine.holder, term))
                            }
                        }
                    case (.write, _, false): process.machine.refused(at: time)
                    default: break
                    }
                }
                if process.operation == nil {
                    switch process.machine.next(at: time) {
                    case .read: process.operation = makeOperation(.read, now: now)
                    case .write(let write): process.operation = makeOperation(.write(write), now: now)
                    case .wait: break
                    }
                }
                processes[index] = process
            }
            let leaders = processes.filter { $0.alive && $0.machine.role.isLeader }
            if leaders.count > 1 {
                violations.append("at \(now) ms: \(leaders.map { "\($0.machine.holder) \($0.machine.role)" })")
            }
            if now >= nextKill && now < faultsEnd {
                if let index = processes.firstIndex(where: { $0.alive && $0.machine.role.isLeader }) {
                    processes[index].alive = false  // kill -9: no step-down, no more renewals
                    spawn(at: now)
                }
                nextKill = now + 1_500 + Int(random.next() % 4_000)
            }
            // Now and then the register's stream elects a leader: 0.7-2.5 s (longer than the lease).
            if now < faultsEnd && now >= nextOutage {
                outageUntil = now + 700 + Int(random.next() % 1_800)
                nextOutage = outageUntil + 2_000 + Int(random.next() % 6_000)
                outages += 1
            }
        }
        leadersAtEnd = processes.filter { $0.alive && $0.machine.role.isLeader }.count
    }

    mutating func makeOperation(_ kind: Operation.Kind, now: Int) -> Operation {
        let faults = now < faultsEnd
        // 5 %: a slow path (a partition, a stalled server): up to 1.5 s each way.
        let slow = faults && random.next() % 100 < 5
        let there = 1 + Int(random.next() % (slow ? 1_500 : 60))
        let back = 1 + Int(random.next() % (slow ? 1_500 : 60))
        let lost = faults && random.next() % 100 < 3
        return Operation(kind: kind, appliesAt: now + there, answersAt: now + there + back, lost: lost)
    }

    mutating func apply(_ kind: Operation.Kind, at now: Int) -> Outcome {
        if now < outageUntil { return .unavailable }
        switch kind {
        case .read:
            guard let register else { return .observed(.absent) }
            return .observed(.present(revision: register.revision, record: LeaderRecord(decoding: register.value)))
        case .write(.create(let record)):
            guard register == nil else { return .refused }
            return store(record)
        case .write(.update(let record, let expected)):
            guard register?.revision == expected else { return .refused }
            return store(record)
        }
    }

    mutating func store(_ record: LeaderRecord) -> Outcome {
        revision += 1
        register = (revision, record.encoded())
        return .written(revision)
    }
}

/// A small seeded generator, so each simulation run is the same every time.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E5B9
        z = (z ^ (z >> 27)) &* 0x94D1_049B_133E_D4EB
        return z ^ (z >> 31)
    }
}
