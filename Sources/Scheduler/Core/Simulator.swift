import HangarShared
import HeapModule

/// A deterministic simulation of a cluster around ``SchedulerCore`` (the TigerBeetle VOPR /
/// FoundationDB way): simulated time, simulated nodes and a simulated network, every fault drawn
/// from one seeded generator, and the core's invariants checked after every step. The same seed
/// replays the same history exactly; a failure names its seed and step.
///
/// Faults: nodes that crash (never report), restart (a new incarnation; some re-adopt their
/// sandboxes and list them from their first heartbeat on), or pause (stop heartbeating, then
/// deliver their results late); attempts acknowledged and then vanished (never run, never
/// reported: only the heartbeats no longer listing them tell); assignment answers lost (the shell's timeout refuses them while
/// the node may still run the job); results delivered twice or late; slow and failed store commits;
/// cancels; and scheduler restarts: the core is thrown away with everything in flight to it, and a
/// new one is rebuilt from what the simulated store holds (``CoreEvent/restored(_:attempt:node:)``),
/// while the intake and results streams deliver again what was not acknowledged.
/// After the fault phase everything heals and the run goes on until every job has ended.
public struct Simulator {
    /// How big a run is.
    public struct Settings: Sendable {
        public var nodes = 3
        public var slots = 4
        public var jobs = 200
        public var tenants = ["a", "b"]
        /// Simulated time during which faults happen and jobs arrive.
        public var faultPhase: Duration = .seconds(60)
        /// Whether faults happen at all (the fairness check runs without).
        public var faults = true
        /// Short, so that histories reach it: jobs expire, and lost ones wait past it.
        public var queueTimeout: Duration = .seconds(6)
        /// Stateful sandboxes created during the fault phase (timeouts of 1-20 s, set again at
        /// random, some killed by their tenant, the rest timed out; a lifetime of 30 s at most).
        public var sandboxes = 30

        public init() {}
    }

    /// A broken invariant: which, at which step, with the seed that replays it.
    public struct Violation: Error, CustomStringConvertible {
        public let seed: UInt64
        public let step: Int
        public let message: String
        public var description: String { "seed \(seed), step \(step): \(message)" }
    }

    /// What a run did.
    public struct Report: Sendable {
        public var steps = 0
        public var ended: [Hangar_V1_JobStatus: Int] = [:]
        /// The tenant of each placement, in order (for the fairness check).
        public var placements: [String] = []
        /// Scheduler restarts, and jobs the restarted cores took over from their store.
        public var schedulerRestarts = 0
        /// How the sandboxes ended.
        public var sandboxesEnded: [SandboxEnd.Reason: Int] = [:]
        public var restoredJobs = 0
        /// Attempts acknowledged by their node that then vanished (never ran, never reported).
        public var vanishedAttempts = 0
        /// Running sandboxes a restarted node re-adopted, which the core kept.
        public var readoptedSandboxes = 0
    }

    private enum Happening {
        case submit(Int)
        /// An event for the core of scheduler incarnation `epoch` (lost if that one has stopped).
        case core(CoreEvent, epoch: Int)
        /// A message from a durable stream (a node's result): delivered to whichever core runs.
        case stream(CoreEvent)
        case schedulerRestart
        case createSandbox(Int)
        case heartbeat(node: Int)
        case nodeFinishes(node: Int, incarnation: Int, jobID: String, attempt: UInt32)
        /// The node sends its report of an attempt that ended (waiting while the node is paused).
        case nodeReports(node: Int, incarnation: Int, jobID: String, attempt: UInt32, status: Hangar_V1_JobStatus)
        case crash(node: Int)
        case restart(node: Int)
        case pause(node: Int, for: Duration)
        case resume(node: Int)
        case tick
    }

    private struct Scheduled: Comparable {
        var at: Duration
        var order: Int
        var happening: Happening
        static func < (lhs: Scheduled, rhs: Scheduled) -> Bool { (lhs.at, lhs.order) < (rhs.at, rhs.order) }
        static func == (lhs: Scheduled, rhs: Scheduled) -> Bool { (lhs.at, lhs.order) == (rhs.at, rhs.order) }
    }

    /// What the simulated store holds of one job (written by the core's log records as they commit).
    private struct StoredJob {
        var spec: CoreJob.Spec
        var attempt: UInt32 = 0
        /// The node of the attempt placed and not yet lost, refused or ended.
        var runningOn: String?
        var finished = false
    }

    private struct SimNode {
        var id: String
        var alive = true
        var beating = true
        var incarnation = 1
        /// `job/attempt` of what it runs, listed in its heartbeats.
        var running: Set<String> = []
        /// The sandboxes it holds, listed in its heartbeats.
        var holding: Set<String> = []
    }

    public let seed: UInt64
    public let settings: Settings
    private var random: SplitMix64
    private var core: SchedulerCore
    private var pending = Heap<Scheduled>()
    private var order = 0
    private var now: Duration = .zero
    private let origin = ContinuousClock.now
    private var nodes: [SimNode]
    private var submitted: [String: String] = [:]  // job → tenant
    /// Jobs a tenant asked to cancel: the only ones that may end CANCELLED.
    private var cancelRequested: Set<String> = []
    private var specs: [String: CoreJob.Spec] = [:]
    private var endedCount: [String: Int] = [:]
    private var report = Report()
    /// The scheduler's incarnation: events in flight to an earlier one are lost with it.
    private var epoch = 0
    private var store: [String: StoredJob] = [:]
    /// Results whose job's end is not committed yet: the results stream delivers them again to a
    /// restarted scheduler (they are acknowledged only once the end is in the store).
    private var unacknowledged: [String: CoreEvent] = [:]
    /// A restarted core is being fed the store's jobs one by one.
    private var restoring = false
    /// What the simulated store holds of each sandbox.
    private struct StoredSandbox {
        var spec: CoreSandbox.Spec
        var createdAt: ContinuousClock.Instant
        var node: String?
        var deadline: ContinuousClock.Instant
        var ended = false
    }
    private var sandboxSpecs: [String: (spec: CoreSandbox.Spec, createdAt: ContinuousClock.Instant)] = [:]
    private var sandboxStore: [String: StoredSandbox] = [:]
    private var sandboxEndedCount: [String: Int] = [:]
    /// During a restarted node's first heartbeat: the sandboxes it holds that the core still had
    /// starting there (it cannot tell whether the node created them, so they may end LOST).
    private var startingAtRestart: Set<String> = []

    /// A simulation of `settings` driven by `seed`.
    public init(seed: UInt64, settings: Settings = Settings()) {
        self.seed = seed
        self.settings = settings
        random = SplitMix64(seed: seed)
        core = Self.newCore(settings)
        nodes = (0..<settings.nodes).map { SimNode(id: "n\($0)") }
    }

    private static func newCore(_ settings: Settings) -> SchedulerCore {
        var config = SchedulerCore.Config()
        config.queueTimeout = settings.queueTimeout
        config.unlistedGrace = .seconds(10)  // scaled down, as the node TTL
        return SchedulerCore(config: config, cluster: ClusterState(ttl: .seconds(3), grace: .seconds(2)))
    }

    /// Runs to the end; throws the first broken invariant.
    public mutating func run() throws -> Report {
        for index in 0..<settings.nodes { schedule(.heartbeat(node: index), in: .zero) }
        for job in 0..<settings.jobs {
            schedule(.submit(job), in: millis(random.next(below: milliseconds(settings.faultPhase))))
        }
        for sandbox in 0..<settings.sandboxes {
            schedule(.createSandbox(sandbox), in: millis(random.next(below: milliseconds(settings.faultPhase))))
        }
        if settings.faults {
            var at: Duration = .seconds(2)
            while at < settings.faultPhase {
                at += millis(1000 + random.next(below: 4000))
                let node = Int(random.next(below: UInt64(settings.nodes)))
                switch random.next(below: 4) {
                case 0: pending.insert(Scheduled(at: at, order: next(), happening: .crash(node: node)))
                case 1: pending.insert(Scheduled(at: at, order: next(), happening: .restart(node: node)))
                case 2: pending.insert(Scheduled(at: at, order: next(), happening: .schedulerRestart))
                default:
                    let pause = millis(2000 + random.next(below: 6000))
                    pending.insert(Scheduled(at: at, order: next(), happening: .pause(node: node, for: pause)))
                }
            }
        }
        schedule(.tick, in: .milliseconds(250))
        let horizon = settings.faultPhase + settings.queueTimeout * 4 + .seconds(120)
        while let item = pending.popMin() {
            now = item.at
            if now > horizon { break }
            report.steps += 1
            try step(item.happening)
            if now > settings.faultPhase && core.jobs.isEmpty && submitted.count == settings.jobs
                && core.sandboxes.isEmpty && sandboxSpecs.count == settings.sandboxes
            {
                break
            }
        }
        try expect(core.jobs.isEmpty, "jobs never ended: \(core.jobs.keys.sorted().prefix(5)) …")
        try expect(core.sandboxes.isEmpty, "sandboxes never ended: \(core.sandboxes.keys.sorted().prefix(5)) …")
        for id in sandboxSpecs.keys {
            try expect(sandboxEndedCount[id] == 1, "sandbox \(id) ended \(sandboxEndedCount[id] ?? 0) times")
        }
        for (job, _) in submitted {
            try expect(endedCount[job] == 1, "job \(job) ended \(endedCount[job] ?? 0) times")
        }
        return report
    }

    // MARK: One step

    private mutating func step(_ happening: Happening) throws {
        switch happening {
        case .submit(let number):
            let id = "j\(number)"
            let tenant = settings.tenants[number % settings.tenants.count]
            submitted[id] = tenant
            let spec = CoreJob.Spec(
                id: id,
                tenant: tenant,
                request: PlacementRequest(runtime: "null", tieBreak: random.next()),
                maxAttempts: 3
            )
            specs[id] = spec
            try apply(.admitted(spec))
            // The intake publish may fail (the tenant is refused); else the commit comes later.
            if settings.faults && random.next(below: 50) == 0 {
                submitted.removeValue(forKey: id)
                try apply(.intakeFailed(jobID: id))
            } else {
                schedule(toCore: .intakeCommitted(jobID: id), in: millis(1 + random.next(below: 20)))
                if settings.faults && random.next(below: 20) == 0 {
                    cancelRequested.insert(id)
                    schedule(toCore: .cancel(jobID: id, reason: "cancelled"), in: millis(random.next(below: 3000)))
                }
            }
        case .core(let event, let eventEpoch):
            if eventEpoch == epoch {
                if case .intakeCommitted(let id) = event { store[id] = StoredJob(spec: specs[id]!) }
                if case .sandbox(.committed(let id)) = event, let (spec, createdAt) = sandboxSpecs[id] {
                    let deadline = min(createdAt + spec.timeout, createdAt + spec.maxLifetime)
                    sandboxStore[id] = StoredSandbox(spec: spec, createdAt: createdAt, deadline: deadline)
                }
                try apply(event)
            } else if case .intakeCommitted(let id) = event, store[id] == nil {
                // The intake stream delivers the submission again to the new scheduler.
                try apply(.admitted(specs[id]!))
                schedule(toCore: .intakeCommitted(jobID: id), in: millis(1 + random.next(below: 20)))
            } else if case .sandbox(.committed(let id)) = event, sandboxStore[id] == nil {
                // So does a sandbox creation's.
                try apply(.sandbox(.admitted(sandboxSpecs[id]!.spec)))
                schedule(toCore: .sandbox(.committed(sandboxID: id)), in: millis(1 + random.next(below: 20)))
            }
        case .createSandbox(let number):
            let id = "s\(number)"
            let spec = CoreSandbox.Spec(
                id: id,
                tenant: settings.tenants[number % settings.tenants.count],
                request: PlacementRequest(runtime: "null", tieBreak: random.next()),
                timeout: millis(1000 + random.next(below: 19_000)),
                maxLifetime: .seconds(30)
            )
            sandboxSpecs[id] = (spec, origin + now)
            try apply(.sandbox(.admitted(spec)))
            schedule(toCore: .sandbox(.committed(sandboxID: id)), in: millis(1 + random.next(below: 20)))
            // The tenant sets its timeout again, or kills it, at some point.
            switch random.next(below: 4) {
            case 0:
                schedule(toCore: .sandbox(.kill(sandboxID: id)), in: millis(random.next(below: 10_000)))
            case 1:
                let timeout = millis(1000 + random.next(below: 40_000))
                schedule(
                    toCore: .sandbox(.setTimeout(sandboxID: id, timeout: timeout)),
                    in: millis(random.next(below: 10_000))
                )
            default:
                break
            }
        case .stream(let event):
            try apply(event)
        case .schedulerRestart:
            try restartScheduler()
        case .heartbeat(let index):
            let node = nodes[index]
            if node.alive && node.beating {
                let beat = heartbeat(node)
                var readopting: [String] = []
                if let known = core.cluster.records[node.id]?.heartbeat.incarnation, known != beat.incarnation {
                    // Its first heartbeat since it restarted: what it re-adopted and the core knows
                    // running there runs on; what the core had starting there may be lost.
                    for id in node.holding.sorted() {
                        switch core.sandboxes[id]?.phase {
                        case .running(node.id, _): readopting.append(id)
                        case .starting(node.id, _): startingAtRestart.insert(id)
                        default: break
                        }
                    }
                }
                defer { startingAtRestart = [] }
                try apply(.heartbeat(nodeID: node.id, beat))
                for id in readopting {
                    var kept = false
                    if case .running(node.id, _) = core.sandboxes[id]?.phase { kept = true }
                    try expect(kept, "sandbox \(id) re-adopted by restarted node \(node.id) was not kept running")
                }
            }
            if node.alive { schedule(.heartbeat(node: index), in: .seconds(1)) }
        case .nodeFinishes(let index, let incarnation, let jobID, let attempt):
            let node = nodes[index]
            guard node.alive, node.incarnation == incarnation else { break }  // died with it
            // Killed meanwhile (the scheduler told it to): that report is already on its way.
            guard nodes[index].running.remove("\(jobID)/\(attempt)") != nil else { break }
            try step(
                .nodeReports(node: index, incarnation: incarnation, jobID: jobID, attempt: attempt, status: .succeeded)
            )
        case .nodeReports(let index, let incarnation, let jobID, let attempt, let status):
            let node = nodes[index]
            guard node.alive, node.incarnation == incarnation else { break }  // died with it
            if !node.beating {
                // Paused: the result waits until it resumes (a late result).
                schedule(
                    .nodeReports(node: index, incarnation: incarnation, jobID: jobID, attempt: attempt, status: status),
                    in: .seconds(1)
                )
                break
            }
            let result = CoreEvent.result(jobID: jobID, attempt: attempt, nodeID: node.id, status: status)
            try apply(result)
            if settings.faults && random.next(below: 10) == 0 {
                schedule(.stream(result), in: millis(random.next(below: 5000)))  // delivered again
            }
        case .crash(let index):
            if now < settings.faultPhase {
                nodes[index].alive = false
                nodes[index].holding = []
                schedule(.restart(node: index), in: millis(3000 + random.next(below: 10_000)))
            }
        case .restart(let index):
            let wasAlive = nodes[index].alive
            nodes[index].alive = true
            nodes[index].beating = true
            nodes[index].incarnation += 1
            nodes[index].running = []
            // A node that restarts (not one that crashed) may re-adopt the sandboxes it held.
            if !wasAlive || random.next(below: 2) == 0 { nodes[index].holding = [] }
            if !wasAlive { schedule(.heartbeat(node: index), in: .zero) }
        case .pause(let index, let duration):
            guard now < settings.faultPhase else { break }
            nodes[index].beating = false
            schedule(.resume(node: index), in: duration)
        case .resume(let index):
            nodes[index].beating = true
        case .tick:
            try apply(.tick)
            schedule(.tick, in: .milliseconds(250))
        }
    }

    /// The scheduler process dies and a new one starts: events in flight to the old core are lost,
    /// the new core is rebuilt from the store, and the streams deliver again what was not
    /// acknowledged (submissions not yet committed arrive as their pending commits come due).
    private mutating func restartScheduler() throws {
        guard now < settings.faultPhase else { return }
        epoch += 1
        report.schedulerRestarts += 1
        core = Self.newCore(settings)
        restoring = true
        for id in store.keys.sorted() {
            guard let stored = store[id], !stored.finished else { continue }
            report.restoredJobs += 1
            try apply(.restored(stored.spec, attempt: stored.attempt, node: stored.runningOn))
        }
        restoring = false
        try checkInvariants()
        for id in sandboxStore.keys.sorted() {
            guard let stored = sandboxStore[id], !stored.ended else { continue }
            report.restoredJobs += 1
            let restored = SandboxEvent.restored(
                stored.spec,
                createdAt: stored.createdAt,
                node: stored.node,
                deadline: stored.deadline
            )
            try apply(.sandbox(restored))
        }
        for id in unacknowledged.keys.sorted() {
            schedule(.stream(unacknowledged[id]!), in: millis(1 + random.next(below: 50)))
        }
    }

    /// Feeds the core, checks the invariants, and performs its actions in the simulated world.
    private mutating func apply(_ event: CoreEvent) throws {
        let actions = core.handle(event, now: origin + now)
        var finishedHere: Set<String> = []
        for action in actions {
            switch action {
            case .assign(let jobID, let attempt, let nodeID):
                report.placements.append(submitted[jobID] ?? "?")
                let index = nodes.firstIndex { $0.id == nodeID }!
                let node = nodes[index]
                if node.alive && core.cluster.records[nodeID]?.heartbeat.incarnation != heartbeat(node).incarnation {
                    // Placed on the node's earlier life: the restarted node refuses it (fencing).
                    schedule(
                        toCore: .assignAnswered(jobID: jobID, attempt: attempt, refusal: "incarnation"),
                        in: millis(1)
                    )
                    continue
                }
                if settings.faults && random.next(below: 30) == 0 {
                    // The answer is lost: the shell's timeout refuses it, though the node runs it.
                    schedule(
                        toCore: .assignAnswered(jobID: jobID, attempt: attempt, refusal: "timeout"),
                        in: .seconds(2)
                    )
                } else if node.alive {
                    schedule(toCore: .assignAnswered(jobID: jobID, attempt: attempt, refusal: nil), in: millis(1))
                    if settings.faults && random.next(below: 40) == 0 {
                        // Acknowledged, then gone without a trace (the node lost it, or its result
                        // never reached the stream): only its absence from the heartbeats tells.
                        report.vanishedAttempts += 1
                        continue
                    }
                } else {
                    schedule(
                        toCore: .assignAnswered(jobID: jobID, attempt: attempt, refusal: "timeout"),
                        in: .seconds(2)
                    )
                    continue
                }
                nodes[index].running.insert("\(jobID)/\(attempt)")
                let run = millis(100 + random.next(below: 3000))
                schedule(
                    .nodeFinishes(node: index, incarnation: node.incarnation, jobID: jobID, attempt: attempt),
                    in: run
                )
            case .cancelOnNode(let jobID, let attempt, let nodeID, _):
                // The node kills the attempt if it still runs it, and reports it CANCELLED.
                let index = nodes.firstIndex { $0.id == nodeID }!
                if nodes[index].alive, nodes[index].running.remove("\(jobID)/\(attempt)") != nil {
                    schedule(
                        .nodeReports(
                            node: index,
                            incarnation: nodes[index].incarnation,
                            jobID: jobID,
                            attempt: attempt,
                            status: .cancelled
                        ),
                        in: millis(1 + random.next(below: 50))
                    )
                }
            case .sandbox(.start(let id, let nodeID)):
                let index = nodes.firstIndex { $0.id == nodeID }!
                if nodes[index].alive
                    && core.cluster.records[nodeID]?.heartbeat.incarnation != heartbeat(nodes[index]).incarnation
                {
                    // Meant for the node's earlier life: the restarted node refuses it (fencing).
                    schedule(toCore: .sandbox(.startAnswered(sandboxID: id, refusal: "incarnation")), in: millis(1))
                } else if nodes[index].alive && !(settings.faults && random.next(below: 30) == 0) {
                    nodes[index].holding.insert(id)
                    schedule(toCore: .sandbox(.startAnswered(sandboxID: id, refusal: nil)), in: millis(1))
                    if settings.faults && random.next(below: 15) == 0 {
                        // Its agent dies on the node some time later.
                        let event = SandboxEvent.diedOnNode(sandboxID: id, nodeID: nodeID, message: "agent died")
                        schedule(toCore: .sandbox(event), in: millis(random.next(below: 10_000)))
                    }
                } else {
                    schedule(toCore: .sandbox(.startAnswered(sandboxID: id, refusal: "timeout")), in: .seconds(2))
                }
            case .sandbox(.kill(let id, let nodeID, _)):
                if let index = nodes.firstIndex(where: { $0.id == nodeID }) { nodes[index].holding.remove(id) }
            case .sandbox(.ended(let id, let end)):
                sandboxStore[id]?.ended = true
                sandboxEndedCount[id, default: 0] += 1
                report.sandboxesEnded[end.reason, default: 0] += 1
                try expect(sandboxEndedCount[id] == 1, "sandbox \(id) ended twice")
            case .log(.sandbox(.placed(let id, let nodeID))):
                sandboxStore[id]?.node = nodeID
            case .log(.sandbox(.timeoutSet(let id, let deadline))):
                sandboxStore[id]?.deadline = deadline
            case .log(.sandbox(.readopted(let id, let nodeID))):
                let index = nodes.firstIndex { $0.id == nodeID }!
                try expect(nodes[index].holding.contains(id), "sandbox \(id) re-adopted but node \(nodeID) lacks it")
                report.readoptedSandboxes += 1
            case .log(.sandbox(.ended(let id, let end))):
                if end.reason == .lost, let node = end.node {
                    // Lost only with its node: down, restarted (re-adopting it only if it was
                    // still starting), or not holding it after a restart.
                    let index = nodes.firstIndex { $0.id == node }!
                    try expect(
                        !nodes[index].alive || !nodes[index].beating || !nodes[index].holding.contains(id)
                            || core.cluster.view(node)?.up == false || report.schedulerRestarts > 0
                            || startingAtRestart.contains(id),
                        "sandbox \(id) ended LOST while its node \(node) runs it and reports"
                    )
                }
                let delay = millis(1 + random.next(below: settings.faults ? 500 : 5))
                schedule(toCore: .sandbox(.endCommitted(sandboxID: id)), in: delay)
            case .log(.finished(let jobID, let outcome)):
                try expect(finishedHere.insert(jobID).inserted, "job \(jobID) finished twice in one step")
                let latest = core.jobs[jobID]?.attempts ?? 0
                if outcome.node != nil {
                    // Fencing: a counted result is of the latest attempt sent.
                    try expect(
                        outcome.attempt == latest,
                        "job \(jobID) ended by attempt \(outcome.attempt), latest \(latest)"
                    )
                }
                try expect(outcome.status != .rejected, "accepted job \(jobID) ended REJECTED")
                try expect(
                    outcome.status != .cancelled || cancelRequested.contains(jobID),
                    "job \(jobID) ended CANCELLED though no tenant cancelled it"
                )
                try expect(
                    outcome.status != .expired || core.jobs[jobID]?.losses == 0,
                    "job \(jobID) expired although it already ran (an attempt was lost)"
                )
                if outcome.node != nil, case .result = event { unacknowledged[jobID] = event }
                // The store commits it a little later, or fails to (then the core writes it again).
                let delay = millis(1 + random.next(below: settings.faults ? 500 : 5))
                if settings.faults && random.next(below: 20) == 0 {
                    schedule(toCore: .finishFailed(jobID: jobID), in: delay)
                } else {
                    schedule(toCore: .finishCommitted(jobID: jobID), in: delay)
                }
            case .log(.attemptPlaced(let jobID, let attempt, let nodeID)):
                store[jobID]?.attempt = attempt
                store[jobID]?.runningOn = nodeID
            case .log(.attemptLost(let jobID, _, _, _)), .log(.attemptRefused(let jobID, _, _, _)):
                store[jobID]?.runningOn = nil
            case .log:
                break
            case .ended(let jobID, let outcome):
                store[jobID]?.finished = true
                store[jobID]?.runningOn = nil
                unacknowledged.removeValue(forKey: jobID)
                endedCount[jobID, default: 0] += 1
                report.ended[outcome.status, default: 0] += 1
                try expect(endedCount[jobID] == 1, "job \(jobID) ended twice")
            case .paused(let pause):
                // The simulated scheduler ticks every 250 ms of simulated time: it never pauses.
                try expect(false, "the core reported a pause of \(pause) though every tick was on time")
            }
        }
        try checkInvariants()
    }

    /// Reservations equal the running attempts on every node, and never exceed its slots; the core
    /// holds every job the store has not seen end.
    private func checkInvariants() throws {
        var running: [String: Int] = [:]
        for job in core.jobs.values {
            switch job.phase {
            case .running(_, let node, _), .restored(_, let node, reserved: true),
                .finishing(_, _, holds: .usageAndNode(let node)):
                running[node, default: 0] += 1
            default: break
            }
        }
        for sandbox in core.sandboxes.values {
            switch sandbox.phase {
            case .starting(let node, let deadline), .running(let node, let deadline):
                running[node, default: 0] += 1
                // The core is the backstop of a sandbox's timeout: never a tick (250 ms) late.
                try expect(
                    deadline > origin + now - .milliseconds(260),
                    "sandbox \(sandbox.id) runs \(origin + now - deadline) past its deadline"
                )
                try expect(deadline <= sandbox.endOfLife, "sandbox \(sandbox.id) outlives its maximum lifetime")
            case .restored(let node, _, reserved: true), .ending(_, holds: .usageAndNode(let node)):
                running[node, default: 0] += 1
            default: break
            }
        }
        for (id, job) in core.jobs {
            // Nothing accepted is lost: every job the store has and has not ended is in the core
            // (checked below for the store's side) and the core never forgets a committed one.
            if case .committing = job.phase { continue }
            try expect(store[id] != nil, "job \(id) is placed but the store never committed it")
        }
        for (id, stored) in store where !stored.finished && !restoring {
            try expect(core.jobs[id] != nil, "job \(id) is in the store, unfinished, but the core lost it")
        }
        for view in core.cluster.views {
            let held = running[view.id] ?? 0
            try expect(
                view.slotsReserved == held,
                "node \(view.id) reserves \(view.slotsReserved) slots for \(held) attempts"
            )
            try expect(
                view.slots == 0 || held <= view.slots,
                "node \(view.id) runs \(held) attempts in \(view.slots) slots"
            )
        }
    }

    // MARK: Helpers

    private func heartbeat(_ node: SimNode) -> Hangar_V1_NodeHeartbeat {
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.nodeID = node.id
        heartbeat.incarnation = "\(node.id)-\(node.incarnation)"
        heartbeat.capacity.cpuMillis = 8000
        heartbeat.capacity.memoryBytes = 8 << 30
        heartbeat.capacity.slotsTotal = UInt32(settings.slots)
        var null = Hangar_V1_RuntimeAvailability()
        null.name = "null"
        null.available = true
        heartbeat.runtimes = [null]
        heartbeat.templates = [TemplateName.host]
        heartbeat.health = .healthy
        heartbeat.runningJobs = node.running.sorted()
        heartbeat.sandboxes = node.holding.sorted()
        return heartbeat
    }

    private mutating func schedule(toCore event: CoreEvent, in delay: Duration) {
        schedule(.core(event, epoch: epoch), in: delay)
    }

    private mutating func schedule(_ happening: Happening, in delay: Duration) {
        pending.insert(Scheduled(at: now + delay, order: next(), happening: happening))
    }

    private mutating func next() -> Int {
        order += 1
        return order
    }

    private func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw Violation(seed: seed, step: report.steps, message: message()) }
    }

    private func millis(_ value: UInt64) -> Duration { .milliseconds(Int64(value)) }
    private func milliseconds(_ duration: Duration) -> UInt64 { UInt64(duration.components.seconds * 1000) }
}

/// SplitMix64: a small, fast, seedable generator; the simulator's only source of randomness.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<bound (bound > 0).
    mutating func next(below bound: UInt64) -> UInt64 { bound == 0 ? 0 : next() % bound }
}
