import HangarShared

/// The scheduler's decisions about jobs as a pure state machine: events in (with the time), actions
/// out. No I/O, no clock, no randomness: the same events at the same times give the same actions,
/// which is what lets ``Simulator`` drive it through thousands of fault histories and replay any one
/// from its seed.
///
/// It owns each accepted job's lifecycle (``JobPhase``), the fair queue, the cluster's reservations,
/// failure detection, retries, cancel and the queue deadline. Admission checks (validation, rate and
/// byte budgets) happen before a job reaches it; the store, NATS and replies are the shell's.
///
/// Rules it makes exact:
/// - a result counts only for the job's current attempt, or for an attempt declared LOST while no
///   later attempt was sent; any other is logged ``LogRecord/resultLate`` and changes nothing;
/// - an accepted job never ends REJECTED: past its queue deadline it ends EXPIRED, and a job that
///   already ran (an attempt was lost) is retried by its policy, never expired.
public struct SchedulerCore: Sendable {
    /// Settings of the core.
    public struct Config: Sendable {
        public var queueTimeout: Duration = .seconds(30)
        public var placementPolicy: PlacementPolicy = .spread
        public var tenants = TenantDirectory()
        /// How many ended jobs are remembered, to tell a duplicate of their result from a late one.
        public var endedMemory = 100_000
        /// How long a sandbox creation waits for a node with room before it fails.
        public var sandboxCreateTimeout: Duration = .seconds(10)
        /// How long an attempt may go unlisted by the heartbeats of its node (which is up, and
        /// lists what it runs and what it is still reporting) before it is declared LOST: its
        /// assignment or its result went missing. Longer than a result takes from the node's
        /// PubAck to the core, redelivery after the results consumer's ack wait (10 s) included.
        public var unlistedGrace: Duration = .seconds(30)

        public init() {}
    }

    public private(set) var config: Config
    public internal(set) var cluster: ClusterState
    public internal(set) var queue = FairQueue()
    public private(set) var jobs: [String: CoreJob] = [:]
    /// Stateful sandboxes (see ``CoreSandbox``), and the order waiting ones are placed in.
    public internal(set) var sandboxes: [String: CoreSandbox] = [:]
    var sandboxesWaiting: [String] = []
    /// When restored sandboxes must have been confirmed by their nodes.
    @StoredAsOptionalMoment var sandboxRecoveryDeadline: ContinuousClock.Instant? = nil
    /// Operator settings per node, applied when the node (re)joins.
    public private(set) var controls: [String: NodeControl] = [:]
    /// When a draining node's remaining attempts are killed.
    private var drainDeadlines: [String: ContinuousClock.Instant] = [:]
    /// When restored attempts must have been confirmed by their nodes (see ``JobPhase/restored``).
    @StoredAsOptionalMoment private var recoveryDeadline: ContinuousClock.Instant? = nil
    /// Attempts their node's latest heartbeat did not list, and since when (see `checkUnlisted`).
    private var unlisted: [String: UnlistedAttempt] = [:]
    /// When `checkUnlisted` runs next (once a second is enough against a grace of seconds).
    @StoredAsOptionalMoment private var nextUnlistedCheck: ContinuousClock.Instant? = nil
    /// When the last tick ran: a gap much longer than the tick interval is a pause of the
    /// scheduler itself (see `excusePause`).
    @StoredAsOptionalMoment private var lastTick: ContinuousClock.Instant? = nil
    /// The counted attempt (and node) of recently ended jobs. Read by the shell as `core.endedJobs`:
    /// a stored property, so that only it is copied out of the actor (calling a method of the core
    /// there copies the whole core).
    public private(set) var endedJobs: EndedJobs
    /// Something happened since the last placement round that could let a queued job fit (a job
    /// queued, resources given back, a node's report or setting, the tenants' policies). Without it
    /// a round would decide exactly what the last one did, so it is skipped.
    var placementMayChange = false

    /// A core with no jobs and no nodes.
    public init(config: Config, cluster: ClusterState) {
        self.config = config
        self.cluster = cluster
        self.endedJobs = EndedJobs(limit: config.endedMemory)
    }

    // The shell reads these through `core.jobs` and `core.endedJobs` (see `endedJobs`).

    /// Whether the core works on job `id` (a lookup without copying the job out).
    public func knows(_ id: String) -> Bool { jobs.knows(id) }

    /// Whether `id` ended recently (its result may come again as a duplicate).
    public func remembers(_ id: String) -> Bool { endedJobs.remembers(id) }

    /// Whether the store has the job (it is past ``JobPhase/committing``).
    public func isCommitted(_ id: String) -> Bool { jobs.isCommitted(id) }

    /// How many attempts job `id` was sent so far (nil: the core does not work on it), read in place.
    public func attempts(of id: String) -> UInt32? { jobs.attempts(of: id) }

    /// Job `id`'s phase (the optimizer copies only the phase out; see `Dictionary.inPlace`).
    func phase(of id: String) -> JobPhase? { jobs[id]?.phase }

    /// Whether `id`'s attempt `attempt` on `node` is one the core still counts on (a node that
    /// runs any other is told to kill it).
    public func owns(_ id: String, attempt: UInt32, node: String) -> Bool {
        switch phase(of: id) {
        case .running(attempt, node, _), .restored(attempt, node, _): return true
        case .finishing(let outcome, _, _): return outcome.attempt == attempt && outcome.node == node
        default: return false
        }
    }

    /// Applies one event at time `now`; returns what the shell must do, in order.
    public mutating func handle(_ event: CoreEvent, now: ContinuousClock.Instant) -> [CoreAction] {
        var actions: [CoreAction] = []
        apply(event, now: now, &actions)
        pump(now: now, &actions)
        return actions
    }

    /// Applies several events that arrived together (a stream batch) at time `now`, placing once
    /// after all of them; the same as handling them one by one, except that jobs freed or queued
    /// by later events of the batch are considered in the same placement round.
    public mutating func handle(_ events: [CoreEvent], now: ContinuousClock.Instant) -> [CoreAction] {
        var actions: [CoreAction] = []
        for event in events { apply(event, now: now, &actions) }
        pump(now: now, &actions)
        return actions
    }

    private mutating func apply(_ event: CoreEvent, now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        switch event {
        case .admitted(let spec):
            guard !knows(spec.id) else { break }
            jobs[spec.id] = CoreJob(spec: spec, acceptedAt: now, phase: .committing(cancelled: nil))
        case .intakeFailed(let id):
            if case .committing = phase(of: id) { jobs.removeValue(forKey: id) }
        case .intakeCommitted(let id):
            guard let index = jobs.index(forKey: id),
                case .committing(let cancelled) = jobs.inPlace(at: index, { $0.phase })
            else { break }
            if let cancelled {
                finish(id, CoreOutcome(status: .cancelled, attempt: 0, node: nil, message: cancelled), &actions)
            } else if let invalid = jobs.inPlace(at: index, { $0.spec.invalid }) {
                finish(id, CoreOutcome(status: .error, attempt: 0, node: nil, message: invalid), &actions)
            } else {
                enqueue(id, lost: nil)
            }
        case .restored(let spec, let attempt, let node):
            restore(spec, attempt: attempt, node: node, now: now, &actions)
        case .heartbeat(let nodeID, let heartbeat):
            placementMayChange = true
            switch cluster.record(heartbeat, from: nodeID, at: now) {
            case .joined:
                if let control = controls[nodeID] { apply(control, to: nodeID) }
            case .returned:
                actions.append(.log(.nodeUp(nodeID: nodeID)))
            case .restarted:
                // It runs none of our jobs any more, and the cluster dropped its reservations.
                for (id, job) in jobs {
                    if case .finishing(let outcome, let failed, .usageAndNode(nodeID)) = job.phase {
                        jobs[id]?.phase = .finishing(outcome, storeFailed: failed, holds: .usage)
                    }
                }
                loseAttempts(on: nodeID, reason: "node \(nodeID) restarted", now: now, &actions)
                // The sandboxes it re-adopted (listed from its first heartbeat on) run on, reserved
                // again: after the attempts, whose release of the dropped reservations (stopping at
                // zero) must not take theirs.
                loseSandboxes(
                    on: nodeID,
                    reason: "node \(nodeID) restarted",
                    reservationsDropped: true,
                    readopted: Set(heartbeat.sandboxes),
                    &actions
                )
            case .alive:
                break
            }
            reserveRestored(on: nodeID)
            reserveRestoredSandboxes(on: nodeID)
            reconcile(nodeID, running: heartbeat.runningJobs, &actions)
            reconcileSandboxes(nodeID, holding: heartbeat.sandboxes, &actions)
        case .assignAnswered(let id, let attempt, let refusal):
            guard let index = jobs.index(forKey: id),
                case .running(attempt, let node, _) = jobs.inPlace(at: index, { $0.phase })
            else { break }
            if let refusal {
                release(id)
                cluster.markRefusing(node)
                actions.append(.log(.attemptRefused(jobID: id, attempt: attempt, nodeID: node, reason: refusal)))
                enqueue(id, lost: nil)
            } else {
                jobs.values[index].phase = .running(attempt: attempt, node: node, admitted: true)
            }
        case .result(let id, let attempt, let node, let status):
            acceptResult(id, attempt: attempt, node: node, status: status, &actions)
        case .finishCommitted(let id):
            guard let index = jobs.index(forKey: id),
                case .finishing(let outcome, _, let holds) = jobs.inPlace(at: index, { $0.phase })
            else { break }
            let job = jobs.remove(at: index).value
            give(holds, tenant: job.spec.tenant, request: job.spec.request)
            endedJobs.remember(id, LostAttempt(attempt: outcome.attempt, node: outcome.node ?? ""))
            actions.append(.ended(jobID: id, outcome))
        case .finishFailed(let id):
            guard let index = jobs.index(forKey: id),
                case .finishing(let outcome, _, let holds) = jobs.inPlace(at: index, { $0.phase })
            else { break }
            jobs.values[index].phase = .finishing(outcome, storeFailed: true, holds: holds)
        case .cancel(let id, let reason):
            cancel(id, reason: reason, &actions)
        case .nodeControl(let nodeID, let control, let deadline):
            placementMayChange = true
            controls[nodeID] = control
            drainDeadlines[nodeID] = control.draining ? deadline : nil
            apply(control, to: nodeID)
        case .tenantsChanged(let tenants):
            placementMayChange = true
            config.tenants = tenants
        case .tick:
            tick(now: now, &actions)
            tickSandboxes(now: now, &actions)
        case .sandbox(let event):
            apply(event, now: now, &actions)
        }
    }

    // MARK: Transitions

    private mutating func acceptResult(
        _ id: String,
        attempt: UInt32,
        node: String,
        status: Hangar_V1_JobStatus,
        _ actions: inout [CoreAction]
    ) {
        let counted = CoreOutcome(status: status, attempt: attempt, node: node, message: "")
        let phase = phase(of: id)
        switch phase {
        case .running(attempt, node, _), .restored(attempt, node, _):
            // Its reservation is given back once the store has the result.
            finish(id, counted, holds: Self.hold(of: phase), &actions)
            return
        // A lost attempt's CANCELLED is never the outcome: no tenant cancelled it (a tenant's cancel
        // ends a job waiting to retry at once), its node killed it because the core told it to
        // (the node came back still running an attempt the core had given up) or as it stopped.
        case .queued(let lost?)
        where lost == LostAttempt(attempt: attempt, node: node) && jobs[id]?.attempts == attempt
            && status != .cancelled:
            // Declared LOST, no later attempt sent: its result is the outcome; the retry is off.
            queue.remove(tenant: jobs[id]!.tenant, jobID: id)
            placementMayChange = true  // it may have blocked its tenant's queue
            finish(id, counted, &actions)
            return
        case .backingOff(_, let lost) where lost == LostAttempt(attempt: attempt, node: node) && status != .cancelled:
            finish(id, counted, &actions)
            return
        case .finishing(let outcome, _, _) where outcome.attempt == attempt && outcome.node == node:
            return  // the same result again
        default:
            // A resend of the counted one.
            if endedJobs.countedAttempt(of: id) == LostAttempt(attempt: attempt, node: node) { return }
        }
        actions.append(.log(.resultLate(jobID: id, attempt: attempt, nodeID: node, status: status)))
    }

    private mutating func cancel(_ id: String, reason: String, _ actions: inout [CoreAction]) {
        guard var job = jobs[id] else { return }
        let cancelled = CoreOutcome(status: .cancelled, attempt: job.attempts, node: nil, message: reason)
        switch job.phase {
        case .committing:
            job.phase = .committing(cancelled: reason)
            jobs[id] = job
        case .queued:
            queue.remove(tenant: job.tenant, jobID: id)
            placementMayChange = true  // it may have blocked its tenant's queue
            finish(id, cancelled, &actions)
        case .backingOff:
            finish(id, cancelled, &actions)
        case .running(let attempt, let node, _), .restored(let attempt, let node, _):
            actions.append(.cancelOnNode(jobID: id, attempt: attempt, nodeID: node, reason: reason))
            let outcome = CoreOutcome(status: .cancelled, attempt: attempt, node: node, message: reason)
            finish(id, outcome, holds: hold(of: id), &actions)
        case .finishing:
            break
        }
    }

    private mutating func restore(
        _ spec: CoreJob.Spec,
        attempt: UInt32,
        node: String?,
        now: ContinuousClock.Instant,
        _ actions: inout [CoreAction]
    ) {
        guard jobs[spec.id] == nil else { return }
        var job = CoreJob(spec: spec, acceptedAt: now, phase: .queued(lost: nil))
        job.attempts = attempt
        jobs[spec.id] = job
        if let invalid = spec.invalid {
            // Accepted, so never REJECTED: it cannot run under today's rules.
            finish(spec.id, CoreOutcome(status: .error, attempt: attempt, node: nil, message: invalid), &actions)
        } else if let node {
            jobs[spec.id]?.phase = .restored(attempt: attempt, node: node, reserved: false)
            queue.started(tenant: spec.tenant, cpuMillis: spec.request.cpuMillis, memoryBytes: spec.request.memoryBytes)
            recoveryDeadline = now + cluster.ttl + cluster.grace
            reserveRestored(on: node)
        } else {
            // Its next attempt skips a number: the previous scheduler may have sent attempt
            // `attempt + 1` without its record reaching the store, and that attempt's result (a
            // node told to kill it reports CANCELLED) must never pass for the new one's.
            jobs[spec.id]?.attempts = attempt + 1
            enqueue(spec.id, lost: nil)
        }
    }

    /// The shell ticks every 250 ms; a gap of more than this between two ticks is a pause.
    static let pauseThreshold = Duration.seconds(1)
    /// The interval the shell ticks at (what a gap is measured against).
    static let tickInterval = Duration.milliseconds(250)

    /// After a pause of the scheduler (ticks more than `pauseThreshold` apart: its process was
    /// stopped, or starved on a loaded machine), heartbeats that arrived during it may still wait
    /// to be handled, and none could be heard: the nodes get the pause back before their silence
    /// is judged, so a stalled scheduler does not declare live nodes down (and lose their jobs).
    private mutating func excusePause(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        defer { lastTick = now }
        guard let last = lastTick, now - last > Self.pauseThreshold else { return }
        let pause = now - last - Self.tickInterval
        cluster.excuse(pause, now: now)
        unlisted.removeAll()  // heartbeats it could not hear may have listed them
        actions.append(.paused(pause))
    }

    private mutating func tick(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        excusePause(now: now, &actions)
        for node in cluster.detectDown(at: now) {
            actions.append(.log(.nodeDown(nodeID: node)))
            loseSandboxes(
                on: node,
                reason: "node \(node) stopped sending heartbeats",
                reservationsDropped: false,
                &actions
            )
            loseAttempts(on: node, reason: "node \(node) stopped sending heartbeats", now: now, &actions)
        }
        checkUnlisted(now: now, &actions)
        for (node, deadline) in drainDeadlines.sorted(by: { $0.key < $1.key }) where deadline <= now {
            drainDeadlines[node] = nil
            actions.append(.log(.drainDeadlinePassed(nodeID: node)))
            let reason = "the drain deadline of node \(node) passed"
            for id in ids(where: { $0.isOn(node) }) {
                switch jobs[id]?.phase {
                case .running(let attempt, node, _), .restored(let attempt, node, _):
                    actions.append(.cancelOnNode(jobID: id, attempt: attempt, nodeID: node, reason: reason))
                default: break
                }
            }
            loseAttempts(on: node, reason: reason, now: now, &actions)
        }
        if let deadline = recoveryDeadline, now >= deadline {
            recoveryDeadline = nil
            settleRestored(now: now, &actions)
        }
        let moment = Moment(now)
        let due = ids { job in
            switch job.phase {
            case .backingOff(let until, _): until <= moment
            case .queued: job.losses == 0 && now - job.acceptedAt >= config.queueTimeout
            case .finishing(_, let storeFailed, _): storeFailed
            default: false
            }
        }
        for id in due {
            guard let job = jobs[id] else { continue }
            switch job.phase {
            case .backingOff(let until, let lost) where until <= moment:
                enqueue(id, lost: lost)
            case .queued where job.losses == 0 && now - job.acceptedAt >= config.queueTimeout:
                queue.remove(tenant: job.tenant, jobID: id)
                placementMayChange = true  // it may have blocked its tenant's queue
                let why = job.waitingBecause.isEmpty ? "no node fits" : job.waitingBecause
                finish(
                    id,
                    CoreOutcome(
                        status: .expired,
                        attempt: job.attempts,
                        node: nil,
                        message: "no capacity within \(config.queueTimeout): \(why)"
                    ),
                    &actions
                )
            case .finishing(let outcome, storeFailed: true, let holds):
                finish(id, outcome, holds: holds, &actions)  // the store failed the last write: again
            default:
                break
            }
        }
    }

    /// After the recovery grace: a restored attempt its node lists as running is confirmed (and
    /// reserved again); one whose node is not up or does not list it is lost.
    private mutating func settleRestored(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        for id in ids(where: { if case .restored = $0.phase { true } else { false } }) {
            guard let job = jobs[id], case .restored(let attempt, let node, let reserved) = job.phase else { continue }
            let listed = cluster.records[node]?.heartbeat.runningJobs.contains("\(id)/\(attempt)") ?? false
            if cluster.isUp(node) && listed && reserved {
                jobs[id]?.phase = .running(attempt: attempt, node: node, admitted: true)
            } else {
                lose(
                    id,
                    reason: "after a scheduler restart node \(node) did not confirm attempt \(attempt)",
                    now: now,
                    &actions
                )
            }
        }
    }

    /// Declares LOST every attempt whose node, up and heartbeating, has not listed it (neither
    /// running nor reporting its result) for `config.unlistedGrace`: its assignment or its result
    /// went missing, and without this the job would wait for ever. It is retried by its policy; a
    /// result of it that still comes counts while no later attempt was sent. A silent node is not
    /// judged here (its attempts are lost when it is declared down), nor a restored attempt
    /// (`settleRestored` confirms those).
    private mutating func checkUnlisted(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        if let next = nextUnlistedCheck, now < next { return }
        nextUnlistedCheck = now + .seconds(1)
        var stillUnlisted: [String: UnlistedAttempt] = [:]
        var overdue: [String] = []
        // What each up node's latest heartbeat lists (running or reporting), as a set, made once
        // per node: nil for a node that is not up.
        var listedBy: [String: (listed: Set<String>, lastSeen: ContinuousClock.Instant)?] = [:]
        for (id, job) in jobs {
            guard case .running(let attempt, let node, _) = job.phase else { continue }
            if listedBy.index(forKey: node) == nil {
                listedBy[node] =
                    cluster.isUp(node)
                    ? cluster.records[node].map { record in
                        (Set(record.heartbeat.runningJobs).union(record.heartbeat.reportingJobs), record.lastSeen)
                    } : nil
            }
            guard let (listed, lastSeen) = listedBy[node] ?? nil else { continue }
            if listed.contains("\(id)/\(attempt)") { continue }
            let known = unlisted[id].flatMap { $0.attempt == attempt && $0.node == node ? $0 : nil }
            let since = known?.since ?? now
            stillUnlisted[id] = UnlistedAttempt(attempt: attempt, node: node, since: since)
            // A heartbeat that came after it was first missed still does not list it.
            if now - since >= config.unlistedGrace && lastSeen > since { overdue.append(id) }
        }
        unlisted = stillUnlisted
        for id in overdue.sorted() {
            guard let missed = unlisted.removeValue(forKey: id) else { continue }
            lose(
                id,
                reason:
                    "node \(missed.node) has not listed attempt \(missed.attempt) as running or reporting for \(config.unlistedGrace): its assignment or its result went missing",
                now: now,
                &actions
            )
        }
    }

    /// Reserves the node for the restored attempts its heartbeats list (during recovery only):
    /// until they are confirmed, nothing else may take their place. One it does not list is not
    /// counted against it: the store may still place there an attempt the previous scheduler had
    /// given up (its loss decided, never stored), and a node's room must not go to work it no
    /// longer runs. Unlisted at the recovery deadline, it is lost.
    private mutating func reserveRestored(on nodeID: String) {
        guard recoveryDeadline != nil, let running = cluster.records[nodeID]?.heartbeat.runningJobs, !running.isEmpty
        else { return }
        for key in running {
            let parts = key.split(separator: "/")
            guard parts.count == 2, let attempt = UInt32(parts[1]) else { continue }
            let id = String(parts[0])
            guard let job = jobs[id], case .restored(attempt, nodeID, reserved: false) = job.phase else { continue }
            cluster.reserve(nodeID, job.spec.request)
            jobs[id]?.phase = .restored(attempt: attempt, node: nodeID, reserved: true)
        }
    }

    /// Kills sandboxes a node runs for attempts the core no longer assigns to it.
    private func reconcile(_ nodeID: String, running: [String], _ actions: inout [CoreAction]) {
        for key in running {
            let parts = key.split(separator: "/")
            guard parts.count == 2, let attempt = UInt32(parts[1]) else { continue }
            let id = String(parts[0])
            if owns(id, attempt: attempt, node: nodeID) { continue }
            actions.append(
                .cancelOnNode(
                    jobID: id,
                    attempt: attempt,
                    nodeID: nodeID,
                    reason: "the scheduler no longer assigns this attempt to this node"
                )
            )
        }
    }

    private mutating func loseAttempts(
        on node: String,
        reason: String,
        now: ContinuousClock.Instant,
        _ actions: inout [CoreAction]
    ) {
        for id in ids(where: { $0.isOn(node) }) {
            switch jobs[id]?.phase {
            case .running(_, node, _), .restored(_, node, _): lose(id, reason: reason, now: now, &actions)
            default: break
            }
        }
    }

    /// The job's running (or restored) attempt is LOST: retried after a backoff while its policy
    /// allows, else the job ends LOST with the reason.
    private mutating func lose(
        _ id: String,
        reason: String,
        now: ContinuousClock.Instant,
        _ actions: inout [CoreAction]
    ) {
        guard let phase = jobs[id]?.phase else { return }
        let attempt: UInt32
        let node: String
        switch phase {
        case .running(let a, let n, _), .restored(let a, let n, _): (attempt, node) = (a, n)
        default: return
        }
        release(id)
        var job = jobs[id]!
        job.losses += 1
        actions.append(.log(.attemptLost(jobID: id, attempt: attempt, nodeID: node, reason: reason)))
        let lost = LostAttempt(attempt: attempt, node: node)
        if job.losses < job.spec.maxAttempts {
            let wait = job.spec.backoff * (1 << min(Int(job.losses) - 1, 10))
            job.phase = .backingOff(until: Moment(now + wait), lost: lost)
            jobs[id] = job
        } else {
            jobs[id] = job
            let message =
                "\(reason); attempt \(attempt) lost and no retries left (max_attempts \(job.spec.maxAttempts))"
            finish(id, CoreOutcome(status: .lost, attempt: attempt, node: node, message: message), &actions)
        }
    }

    /// Places queued jobs while some fit: the tenant with the smallest weighted dominant share
    /// first, its highest-priority job first (as `Scheduler.pump`).
    private mutating func pump(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        guard placementMayChange else { return }
        placementMayChange = false
        placeSandboxes(now: now, &actions)  // interactive: before the jobs' queue
        guard queue.totalQueued > 0 else { return }
        let totals = cluster.totals
        let tenants = config.tenants
        var blockedShapes: [PlacementRequest: String] = [:]
        var blockedTenants: Set<String> = []
        while let tenant = queue.nextTenant(
            weight: { tenants.policy(for: $0).weight },
            totals: totals,
            allowed: { tenant, usage in
                !blockedTenants.contains(tenant) && usage.running < tenants.policy(for: tenant).maxConcurrent
            }
        ) {
            guard let item = queue.peek(tenant: tenant) else {
                blockedTenants.insert(tenant)
                continue
            }
            // The job is read and changed where it is (nothing below adds or removes jobs, so the
            // index stays valid): a copy of it and a second lookup cost more than the rest here.
            guard let index = jobs.index(forKey: item.jobID),
                let request = jobs.inPlace(
                    at: index,
                    { job -> PlacementRequest? in
                        if case .queued = job.phase { job.spec.request } else { nil }
                    }
                )
            else {
                _ = queue.pop(tenant: tenant)
                continue
            }
            let id = item.jobID
            let policy = tenants.policy(for: tenant)
            let usage = queue.usage[tenant] ?? FairQueue.Usage()
            if usage.cpuMillis + request.cpuMillis > policy.maxCPUMillis
                || usage.memoryBytes + request.memoryBytes > policy.maxMemoryBytes
            {
                jobs.values[index].waitingBecause =
                    "tenant '\(tenant)' holds its CPU or memory quota; waiting for its jobs to finish"
                blockedTenants.insert(tenant)
                continue
            }
            if let why = blockedShapes[request.shape] {
                jobs.values[index].waitingBecause = why
                blockedTenants.insert(tenant)
                continue
            }
            switch cluster.place(request, policy: config.placementPolicy) {
            case .ranked(let nodes):
                _ = queue.pop(tenant: tenant)
                let node = nodes[0]
                cluster.reserve(node, request)
                queue.started(tenant: tenant, cpuMillis: request.cpuMillis, memoryBytes: request.memoryBytes)
                let attempt = jobs.inPlace(at: index) { job in
                    job.attempts += 1
                    job.phase = .running(attempt: job.attempts, node: node, admitted: false)
                    return job.attempts
                }
                actions.append(.log(.attemptPlaced(jobID: id, attempt: attempt, nodeID: node)))
                actions.append(.assign(jobID: id, attempt: attempt, nodeID: node))
            case .wait(let why), .impossible(let why):
                blockedShapes[request.shape] = why
                jobs.values[index].waitingBecause = why
                blockedTenants.insert(tenant)
            }
        }
    }

    // MARK: Helpers

    /// The ids of the jobs `matching` says, sorted: the order in which the core acts on several
    /// jobs at once must not depend on the dictionary's (random per process) order, or a seed
    /// would not replay. Only the matches are sorted: a tick does not sort every job in flight.
    private func ids(where matching: (CoreJob) -> Bool) -> [String] {
        var matched: [String] = []
        for (id, job) in jobs where matching(job) { matched.append(id) }
        return matched.sorted()
    }

    private mutating func enqueue(_ id: String, lost: LostAttempt?) {
        placementMayChange = true
        guard let index = jobs.index(forKey: id) else { return }
        let (tenant, priority, known) = jobs.inPlace(at: index) { ($0.spec.tenant, $0.spec.priority, $0.sequence) }
        let sequence = queue.enqueue(tenant: tenant, jobID: id, priority: priority, sequence: known)
        jobs.inPlace(at: index) { job in
            job.sequence = sequence
            job.phase = .queued(lost: lost)
        }
    }

    /// What the job's running attempt holds: its share of its tenant's usage, and its reservation
    /// on the node (a restored attempt holds none until its node joins).
    func hold(of id: String) -> Hold { Self.hold(of: phase(of: id)) }

    /// What an attempt in `phase` holds (see `hold(of:)`).
    static func hold(of phase: JobPhase?) -> Hold {
        switch phase {
        case .running(_, let node, _), .restored(_, let node, reserved: true): .usageAndNode(node)
        case .restored: .usage
        default: .nothing
        }
    }

    /// Gives back what `hold` holds of `request` for `tenant`.
    mutating func give(_ hold: Hold, tenant: String, request: PlacementRequest) {
        placementMayChange = true
        switch hold {
        case .nothing: return
        case .usage: break
        case .usageAndNode(let node): cluster.release(node, request)
        }
        queue.finished(tenant: tenant, cpuMillis: request.cpuMillis, memoryBytes: request.memoryBytes)
    }

    /// Gives back what the job's running attempt holds, at once.
    private mutating func release(_ id: String) {
        guard let index = jobs.index(forKey: id) else { return }
        let (phase, tenant, request) = jobs.inPlace(at: index) { ($0.phase, $0.spec.tenant, $0.spec.request) }
        give(Self.hold(of: phase), tenant: tenant, request: request)
        jobs.values[index].phase = .queued(lost: nil)  // transient: every caller moves it on at once
    }

    private mutating func finish(
        _ id: String,
        _ outcome: CoreOutcome,
        holds: Hold = .nothing,
        _ actions: inout [CoreAction]
    ) {
        jobs[id]?.phase = .finishing(outcome, storeFailed: false, holds: holds)
        actions.append(.log(.finished(jobID: id, outcome)))
    }

    /// Applies an operator's node setting to the cluster view (the drain deadline is the core's).
    private mutating func apply(_ control: NodeControl, to nodeID: String) {
        cluster.setEligible(nodeID, control.eligible)
        cluster.setDraining(nodeID, control.draining, deadline: control.drainDeadline)
    }
}
