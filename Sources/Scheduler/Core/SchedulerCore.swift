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

        public init() {}
    }

    public let config: Config
    public private(set) var cluster: ClusterState
    public private(set) var queue = FairQueue()
    public private(set) var jobs: [String: CoreJob] = [:]
    /// The counted attempt (and node) of recently ended jobs, oldest first out.
    private var ended: [String: LostAttempt] = [:]
    private var endedOrder: [String] = []
    private var endedHead = 0

    /// A core with no jobs and no nodes.
    public init(config: Config, cluster: ClusterState) {
        self.config = config
        self.cluster = cluster
    }

    /// Applies one event at time `now`; returns what the shell must do, in order.
    public mutating func handle(_ event: CoreEvent, now: ContinuousClock.Instant) -> [CoreAction] {
        var actions: [CoreAction] = []
        switch event {
        case .admitted(let spec):
            guard jobs[spec.id] == nil else { break }
            jobs[spec.id] = CoreJob(spec: spec, acceptedAt: now, phase: .committing(cancelRequested: false))
        case .intakeFailed(let id):
            if case .committing = jobs[id]?.phase { jobs.removeValue(forKey: id) }
        case .intakeCommitted(let id):
            guard case .committing(let cancelRequested) = jobs[id]?.phase else { break }
            if cancelRequested {
                finish(id, CoreOutcome(status: .cancelled, attempt: 0, node: nil, message: "cancelled"), &actions)
            } else {
                enqueue(id, lost: nil)
            }
        case .heartbeat(let nodeID, let heartbeat):
            if cluster.record(heartbeat, from: nodeID, at: now) == .restarted {
                // It runs nothing of ours any more.
                loseAttempts(on: nodeID, reason: "node \(nodeID) restarted", now: now, &actions)
            }
        case .assignAnswered(let id, let attempt, let admitted):
            guard var job = jobs[id], case .running(attempt, let node, _) = job.phase else { break }
            if admitted {
                job.phase = .running(attempt: attempt, node: node, admitted: true)
                jobs[id] = job
            } else {
                release(id)
                cluster.markRefusing(node)
                actions.append(.log(.attemptRefused(jobID: id, attempt: attempt, nodeID: node)))
                enqueue(id, lost: nil)
            }
        case .result(let id, let attempt, let node, let status):
            acceptResult(id, attempt: attempt, node: node, status: status, &actions)
        case .finishCommitted(let id):
            guard case .finishing(let outcome) = jobs[id]?.phase else { break }
            jobs.removeValue(forKey: id)
            remember(id, LostAttempt(attempt: outcome.attempt, node: outcome.node ?? ""))
            actions.append(.ended(jobID: id, outcome))
        case .cancel(let id):
            cancel(id, &actions)
        case .tick:
            tick(now: now, &actions)
        }
        pump(&actions)
        return actions
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
        switch jobs[id]?.phase {
        case .running(attempt, node, _):
            release(id)
            finish(id, counted, &actions)
            return
        case .queued(let lost?)
        where lost == LostAttempt(attempt: attempt, node: node) && jobs[id]?.attempts == attempt:
            // Declared LOST, no later attempt sent: its result is the outcome; the retry is off.
            queue.remove(tenant: jobs[id]!.tenant, jobID: id)
            finish(id, counted, &actions)
            return
        case .backingOff(_, let lost) where lost == LostAttempt(attempt: attempt, node: node):
            finish(id, counted, &actions)
            return
        case .finishing(let outcome) where outcome.attempt == attempt && outcome.node == node:
            return  // the same result again
        default:
            if ended[id] == LostAttempt(attempt: attempt, node: node) { return }  // a resend of the counted one
        }
        actions.append(.log(.resultLate(jobID: id, attempt: attempt, nodeID: node)))
    }

    private mutating func cancel(_ id: String, _ actions: inout [CoreAction]) {
        guard var job = jobs[id] else { return }
        let cancelled = CoreOutcome(status: .cancelled, attempt: job.attempts, node: nil, message: "cancelled")
        switch job.phase {
        case .committing:
            job.phase = .committing(cancelRequested: true)
            jobs[id] = job
        case .queued:
            queue.remove(tenant: job.tenant, jobID: id)
            finish(id, cancelled, &actions)
        case .backingOff:
            finish(id, cancelled, &actions)
        case .running(let attempt, let node, _):
            actions.append(.cancelOnNode(jobID: id, attempt: attempt, nodeID: node))
            release(id)
            finish(id, CoreOutcome(status: .cancelled, attempt: attempt, node: node, message: "cancelled"), &actions)
        case .finishing:
            break
        }
    }

    private mutating func tick(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        for node in cluster.detectDown(at: now) {
            actions.append(.log(.nodeDown(nodeID: node)))
            loseAttempts(on: node, reason: "node \(node) stopped sending heartbeats", now: now, &actions)
        }
        for id in jobs.keys.sorted() {
            guard let job = jobs[id] else { continue }
            switch job.phase {
            case .backingOff(let until, let lost) where until <= now:
                enqueue(id, lost: lost)
            case .queued where job.losses == 0 && now - job.acceptedAt >= config.queueTimeout:
                queue.remove(tenant: job.tenant, jobID: id)
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
            default:
                break
            }
        }
    }

    private mutating func loseAttempts(
        on node: String,
        reason: String,
        now: ContinuousClock.Instant,
        _ actions: inout [CoreAction]
    ) {
        for id in jobs.keys.sorted() {
            guard var job = jobs[id], case .running(let attempt, node, _) = job.phase else { continue }
            release(id)
            job = jobs[id]!
            job.losses += 1
            actions.append(.log(.attemptLost(jobID: id, attempt: attempt, nodeID: node, reason: reason)))
            let lost = LostAttempt(attempt: attempt, node: node)
            if job.losses < job.spec.maxAttempts {
                let wait = job.spec.backoff * (1 << min(Int(job.losses) - 1, 10))
                job.phase = .backingOff(until: now + wait, lost: lost)
                jobs[id] = job
            } else {
                jobs[id] = job
                let message =
                    "\(reason); attempt \(attempt) lost and no retries left (max_attempts \(job.spec.maxAttempts))"
                finish(id, CoreOutcome(status: .lost, attempt: attempt, node: node, message: message), &actions)
            }
        }
    }

    /// Places queued jobs while some fit: the tenant with the smallest weighted dominant share
    /// first, its highest-priority job first (as `Scheduler.pump`).
    private mutating func pump(_ actions: inout [CoreAction]) {
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
            guard var job = jobs[item.jobID], case .queued = job.phase else {
                _ = queue.pop(tenant: tenant)
                continue
            }
            let policy = tenants.policy(for: tenant)
            let usage = queue.usage[tenant] ?? FairQueue.Usage()
            let request = job.spec.request
            if usage.cpuMillis + request.cpuMillis > policy.maxCPUMillis
                || usage.memoryBytes + request.memoryBytes > policy.maxMemoryBytes
            {
                job.waitingBecause = "tenant '\(tenant)' holds its CPU or memory quota; waiting for its jobs to finish"
                jobs[job.id] = job
                blockedTenants.insert(tenant)
                continue
            }
            if let why = blockedShapes[request.shape] {
                job.waitingBecause = why
                jobs[job.id] = job
                blockedTenants.insert(tenant)
                continue
            }
            switch cluster.place(request, policy: config.placementPolicy) {
            case .ranked(let nodes):
                _ = queue.pop(tenant: tenant)
                let node = nodes[0]
                cluster.reserve(node, request)
                queue.started(tenant: tenant, cpuMillis: request.cpuMillis, memoryBytes: request.memoryBytes)
                job.attempts += 1
                job.phase = .running(attempt: job.attempts, node: node, admitted: false)
                jobs[job.id] = job
                actions.append(.log(.attemptPlaced(jobID: job.id, attempt: job.attempts, nodeID: node)))
                actions.append(.assign(jobID: job.id, attempt: job.attempts, nodeID: node))
            case .wait(let why), .impossible(let why):
                blockedShapes[request.shape] = why
                job.waitingBecause = why
                jobs[job.id] = job
                blockedTenants.insert(tenant)
            }
        }
    }

    // MARK: Helpers

    private mutating func enqueue(_ id: String, lost: LostAttempt?) {
        guard var job = jobs[id] else { return }
        job.sequence = queue.enqueue(tenant: job.tenant, jobID: id, priority: job.spec.priority, sequence: job.sequence)
        job.phase = .queued(lost: lost)
        jobs[id] = job
    }

    /// Gives back the reservation of the job's running attempt (its phase must be `running`).
    private mutating func release(_ id: String) {
        guard let job = jobs[id], case .running(_, let node, _) = job.phase else { return }
        let request = job.spec.request
        cluster.release(node, request)
        queue.finished(tenant: job.tenant, cpuMillis: request.cpuMillis, memoryBytes: request.memoryBytes)
        jobs[id]?.phase = .queued(lost: nil)  // transient: every caller moves it on at once
    }

    private mutating func finish(_ id: String, _ outcome: CoreOutcome, _ actions: inout [CoreAction]) {
        jobs[id]?.phase = .finishing(outcome)
        actions.append(.log(.finished(jobID: id, outcome)))
    }

    private mutating func remember(_ id: String, _ counted: LostAttempt) {
        ended[id] = counted
        endedOrder.append(id)
        if endedOrder.count - endedHead > config.endedMemory {
            ended.removeValue(forKey: endedOrder[endedHead])
            endedHead += 1
            if endedHead > config.endedMemory {
                endedOrder.removeFirst(endedHead)
                endedHead = 0
            }
        }
    }
}
