import HangarShared

/// Stateful sandboxes in the core (issue 16, the scheduler side): created, placed with the same
/// feasibility, warm affinity and tenant quotas as jobs (before queued jobs: a sandbox creation is
/// interactive), holding their reservation for their whole life, killed at their timeout (the node
/// enforces it; the core is the backstop), and ended LOST, never moved, when their node dies.
extension SchedulerCore {
    /// The tenant's sandboxes that are not ending (for its policy's maximum of live sandboxes).
    public func liveSandboxes(of tenant: String) -> Int {
        sandboxes.values.count { sandbox in
            guard sandbox.tenant == tenant else { return false }
            if case .ending = sandbox.phase { return false }
            return true
        }
    }

    mutating func apply(_ event: SandboxEvent, now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        switch event {
        case .admitted(let spec):
            guard sandboxes[spec.id] == nil else { return }
            sandboxes[spec.id] = CoreSandbox(spec: spec, createdAt: now, phase: .committing(killed: nil))
        case .committed(let id):
            guard case .committing(let killed) = sandboxes[id]?.phase else { return }
            if let killed {
                end(id, SandboxEnd(reason: .killed, node: nil, message: killed), &actions)
            } else {
                sandboxes[id]?.phase = .waiting
                sandboxesWaiting.append(id)
                placementMayChange = true
            }
        case .startAnswered(let id, let refusal):
            guard let sandbox = sandboxes[id], case .starting(let node, let deadline) = sandbox.phase else { return }
            if let refusal {
                cluster.markRefusing(node)
                let message = "node \(node) could not create it: \(refusal)"
                end(id, SandboxEnd(reason: .failed, node: node, message: message), holds: .usageAndNode(node), &actions)
            } else {
                sandboxes[id]?.phase = .running(node: node, deadline: deadline)
                actions.append(.log(.sandbox(.started(sandboxID: id, nodeID: node))))
            }
        case .setTimeout(let id, let timeout):
            guard let sandbox = sandboxes[id] else { return }
            let deadline = min(now + timeout, sandbox.endOfLife)
            switch sandbox.phase {
            case .starting(let node, _): sandboxes[id]?.phase = .starting(node: node, deadline: deadline)
            case .running(let node, _): sandboxes[id]?.phase = .running(node: node, deadline: deadline)
            case .restored(let node, _, let reserved):
                sandboxes[id]?.phase = .restored(node: node, deadline: deadline, reserved: reserved)
            default: return
            }
            actions.append(.log(.sandbox(.timeoutSet(sandboxID: id, deadline: deadline))))
        case .kill(let id):
            kill(id, reason: .killed, message: "killed by its tenant", &actions)
        case .diedOnNode(let id, let node, let message):
            endOnNode(id, SandboxEnd(reason: .died, node: node, message: message), &actions)
        case .timedOutOnNode(let id, let node, let message):
            endOnNode(id, SandboxEnd(reason: .timedOut, node: node, message: message), &actions)
        case .restored(let spec, let createdAt, let node, let deadline):
            guard sandboxes[spec.id] == nil else { return }
            var sandbox = CoreSandbox(spec: spec, createdAt: createdAt, phase: .waiting)
            if let node {
                sandbox.phase = .restored(node: node, deadline: deadline, reserved: false)
                queue.started(
                    tenant: spec.tenant,
                    cpuMillis: spec.request.cpuMillis,
                    memoryBytes: spec.request.memoryBytes
                )
                sandboxes[spec.id] = sandbox
                sandboxRecoveryDeadline = now + cluster.ttl + cluster.grace
                reserveRestoredSandboxes(on: node)
            } else {
                sandboxes[spec.id] = sandbox
                sandboxesWaiting.append(spec.id)
                placementMayChange = true
            }
        case .endCommitted(let id):
            guard let sandbox = sandboxes[id], case .ending(let end, let holds) = sandbox.phase else { return }
            give(holds, tenant: sandbox.tenant, request: sandbox.spec.request)
            sandboxes.removeValue(forKey: id)
            actions.append(.sandbox(.ended(sandboxID: id, end)))
        }
    }

    /// Ends the sandbox as its node `end.node` reported it gone (nothing to kill there).
    private mutating func endOnNode(_ id: String, _ end: SandboxEnd, _ actions: inout [CoreAction]) {
        guard let sandbox = sandboxes[id], let node = end.node else { return }
        switch sandbox.phase {
        case .starting(node, _), .running(node, _), .restored(node, _, reserved: true):
            self.end(id, end, holds: .usageAndNode(node), &actions)
        case .restored(node, _, reserved: false):
            self.end(id, end, holds: .usage, &actions)
        default:
            return
        }
    }

    /// Ends the sandbox for `reason`, telling its node to kill it if it has one.
    private mutating func kill(
        _ id: String,
        reason: SandboxEnd.Reason,
        message: String,
        _ actions: inout [CoreAction]
    ) {
        guard let sandbox = sandboxes[id] else { return }
        switch sandbox.phase {
        case .committing:
            sandboxes[id]?.phase = .committing(killed: message)
        case .waiting:
            sandboxesWaiting.removeAll { $0 == id }
            end(id, SandboxEnd(reason: reason, node: nil, message: message), &actions)
        case .starting(let node, _), .running(let node, _), .restored(let node, _, reserved: true):
            actions.append(.sandbox(.kill(sandboxID: id, nodeID: node, reason: message)))
            end(id, SandboxEnd(reason: reason, node: node, message: message), holds: .usageAndNode(node), &actions)
        case .restored(let node, _, reserved: false):
            actions.append(.sandbox(.kill(sandboxID: id, nodeID: node, reason: message)))
            end(id, SandboxEnd(reason: reason, node: node, message: message), holds: .usage, &actions)
        case .ending:
            return
        }
    }

    private mutating func end(
        _ id: String,
        _ end: SandboxEnd,
        holds: Hold = .nothing,
        _ actions: inout [CoreAction]
    ) {
        sandboxes[id]?.phase = .ending(end, holds: holds)
        actions.append(.log(.sandbox(.ended(sandboxID: id, end))))
    }

    /// Kills sandboxes a node holds that the core does not place there.
    func reconcileSandboxes(_ node: String, holding: [String], _ actions: inout [CoreAction]) {
        for id in holding {
            switch sandboxes[id]?.phase {
            case .starting(node, _), .running(node, _), .restored(node, _, _): continue
            case .ending(let end, _) where end.node == node: continue
            default:
                let reason = "the scheduler no longer places this sandbox on this node"
                actions.append(.sandbox(.kill(sandboxID: id, nodeID: node, reason: reason)))
            }
        }
    }

    /// Every sandbox on `node` is lost with it. `reservationsDropped`: the cluster already forgot
    /// the node's reservations (it restarted); else they are given back when the ends are stored.
    /// `readopted`: the sandboxes the restarted node lists (it re-adopted them); those the core
    /// knows running there run on, reserved again on the node (their tenant's usage was never
    /// given back), and restored ones stay restored, to be reserved by `reserveRestoredSandboxes`.
    /// Both are recorded ``SandboxRecord/readopted(sandboxID:nodeID:)``. One still starting is lost
    /// all the same: the core cannot tell whether the node created it.
    mutating func loseSandboxes(
        on node: String,
        reason: String,
        reservationsDropped: Bool,
        readopted: Set<String> = [],
        _ actions: inout [CoreAction]
    ) {
        let holds: Hold = reservationsDropped ? .usage : .usageAndNode(node)
        for id in sandboxes.keys.sorted() {
            guard let sandbox = sandboxes[id] else { continue }
            let lost = SandboxEnd(reason: .lost, node: node, message: "\(reason); its state is gone")
            switch sandbox.phase {
            case .running(node, _) where reservationsDropped && readopted.contains(id):
                cluster.reserve(node, sandbox.spec.request)
                actions.append(.log(.sandbox(.readopted(sandboxID: id, nodeID: node))))
            case .restored(node, let deadline, _) where reservationsDropped && readopted.contains(id):
                // A reservation it held went with the restart: `reserveRestoredSandboxes`, next in
                // the heartbeat, takes it again, once.
                sandboxes[id]?.phase = .restored(node: node, deadline: deadline, reserved: false)
                actions.append(.log(.sandbox(.readopted(sandboxID: id, nodeID: node))))
            case .starting(node, _), .running(node, _), .restored(node, _, reserved: true):
                end(id, lost, holds: holds, &actions)
            case .restored(node, _, reserved: false):
                end(id, lost, holds: .usage, &actions)
            case .ending(let ended, .usageAndNode(node)) where reservationsDropped:
                sandboxes[id]?.phase = .ending(ended, holds: .usage)
            default:
                continue
            }
        }
    }

    /// Timeouts (the node kills a sandbox at its own; this is the backstop) and creations that
    /// found no node in time.
    mutating func tickSandboxes(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        if let deadline = sandboxRecoveryDeadline, now >= deadline {
            sandboxRecoveryDeadline = nil
            settleRestoredSandboxes(&actions)
        }
        for id in sandboxes.keys.sorted() {
            guard let sandbox = sandboxes[id] else { continue }
            switch sandbox.phase {
            case .starting(_, let deadline) where deadline <= now, .running(_, let deadline) where deadline <= now,
                .restored(_, let deadline, _) where deadline <= now:
                let message =
                    deadline >= sandbox.endOfLife
                    ? "its maximum lifetime of \(sandbox.spec.maxLifetime) passed" : "its timeout passed"
                kill(id, reason: .timedOut, message: message, &actions)
            case .waiting where now - sandbox.createdAt >= min(config.sandboxCreateTimeout, sandbox.spec.maxLifetime):
                sandboxesWaiting.removeAll { $0 == id }
                let why = sandbox.waitingBecause.isEmpty ? "no node fits" : sandbox.waitingBecause
                let message = "no node had room within \(config.sandboxCreateTimeout): \(why)"
                end(id, SandboxEnd(reason: .failed, node: nil, message: message), &actions)
            default:
                continue
            }
        }
    }

    /// Reserves `node` for the restored sandboxes its heartbeats list (during recovery only). One
    /// it does not list is not counted against it: the store may still place there a sandbox
    /// whose end the previous scheduler decided but never stored (its node restarted), and a
    /// node's room must not go to sandboxes it no longer holds. Unlisted at the recovery deadline,
    /// it is lost.
    mutating func reserveRestoredSandboxes(on node: String) {
        guard sandboxRecoveryDeadline != nil, let listed = cluster.records[node]?.heartbeat.sandboxes,
            !listed.isEmpty
        else { return }
        for id in listed {
            guard let sandbox = sandboxes[id], case .restored(node, let deadline, reserved: false) = sandbox.phase
            else { continue }
            cluster.reserve(node, sandbox.spec.request)
            sandboxes[id]?.phase = .restored(node: node, deadline: deadline, reserved: true)
        }
    }

    /// After the recovery grace: a restored sandbox its node lists runs on; any other is lost.
    private mutating func settleRestoredSandboxes(_ actions: inout [CoreAction]) {
        for id in sandboxes.keys.sorted() {
            guard let sandbox = sandboxes[id], case .restored(let node, let deadline, let reserved) = sandbox.phase
            else { continue }
            let listed = cluster.records[node]?.heartbeat.sandboxes.contains(id) ?? false
            if cluster.isUp(node) && listed && reserved {
                sandboxes[id]?.phase = .running(node: node, deadline: deadline)
            } else {
                let lost = SandboxEnd(
                    reason: .lost,
                    node: node,
                    message: "after a scheduler restart node \(node) did not report it; its state is gone"
                )
                end(id, lost, holds: reserved ? .usageAndNode(node) : .usage, &actions)
            }
        }
    }

    /// Places waiting sandboxes in arrival order while they fit (their tenant's CPU and memory
    /// quotas count them like running jobs).
    mutating func placeSandboxes(now: ContinuousClock.Instant, _ actions: inout [CoreAction]) {
        guard !sandboxesWaiting.isEmpty else { return }
        var stillWaiting: [String] = []
        for id in sandboxesWaiting {
            guard var sandbox = sandboxes[id], case .waiting = sandbox.phase else { continue }
            let request = sandbox.spec.request
            let policy = config.tenants.policy(for: sandbox.tenant)
            let usage = queue.usage[sandbox.tenant] ?? FairQueue.Usage()
            if usage.cpuMillis + request.cpuMillis > policy.maxCPUMillis
                || usage.memoryBytes + request.memoryBytes > policy.maxMemoryBytes
            {
                sandbox.waitingBecause = "tenant '\(sandbox.tenant)' holds its CPU or memory quota"
                sandboxes[id] = sandbox
                stillWaiting.append(id)
                continue
            }
            switch cluster.place(request, policy: config.placementPolicy) {
            case .ranked(let nodes):
                let node = nodes[0]
                cluster.reserve(node, request)
                queue.started(tenant: sandbox.tenant, cpuMillis: request.cpuMillis, memoryBytes: request.memoryBytes)
                // Its timeout runs from its start: the wait for a node does not use it up.
                let deadline = min(now + sandbox.spec.timeout, sandbox.endOfLife)
                sandbox.phase = .starting(node: node, deadline: deadline)
                sandboxes[id] = sandbox
                actions.append(.log(.sandbox(.placed(sandboxID: id, nodeID: node))))
                actions.append(.sandbox(.start(sandboxID: id, nodeID: node)))
            case .wait(let why), .impossible(let why):
                sandbox.waitingBecause = why
                sandboxes[id] = sandbox
                stillWaiting.append(id)
            }
        }
        sandboxesWaiting = stillWaiting
    }
}
