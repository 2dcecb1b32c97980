import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Places queued jobs while some fit: the tenant with the smallest weighted dominant share goes
    /// first, its highest-priority job first. Jobs of a shape that found no node wait for the next
    /// heartbeat, result or operator action.
    func pump() {
        guard queue.totalQueued > 0 else { return }
        let totals = cluster.totals
        var blockedShapes: [PlacementRequest: String] = [:]
        var blockedTenants: Set<String> = []
        let tenants = self.tenants
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
            guard var entry = jobs[item.jobID], entry.nodeID == nil else {
                _ = queue.pop(tenant: tenant)
                continue
            }
            let policy = tenants.policy(for: tenant)
            let usage = queue.usage[tenant] ?? FairQueue.Usage()
            if usage.cpuMillis + entry.request.cpuMillis > policy.maxCPUMillis
                || usage.memoryBytes + entry.request.memoryBytes > policy.maxMemoryBytes
            {
                entry.lastPlacementProblem =
                    "tenant '\(tenant)' holds its CPU or memory quota; waiting for its jobs to finish"
                jobs[entry.id] = entry
                blockedTenants.insert(tenant)
                continue
            }
            let shape = entry.request.shape
            if let why = blockedShapes[shape] {
                jobs[entry.id]?.lastPlacementProblem = why
                blockedTenants.insert(tenant)
                continue
            }
            switch cluster.place(entry.request, policy: config.placementPolicy) {
            case .ranked(let nodes):
                _ = queue.pop(tenant: tenant)
                start(&entry, on: nodes[0])
            case .wait(let why), .impossible(let why):
                // An accepted job never ends REJECTED: one no node could run now (its nodes left
                // since it was admitted) waits like any other and ends EXPIRED at its deadline.
                blockedShapes[shape] = why
                jobs[entry.id]?.lastPlacementProblem = why
                blockedTenants.insert(tenant)
            }
        }
    }

    /// Reserves `nodeID` for the job's next attempt and sends the assignment.
    private func start(_ entry: inout JobEntry, on nodeID: String) {
        let now = ContinuousClock.now
        cluster.reserve(nodeID, entry.request)
        queue.started(tenant: entry.tenant, cpuMillis: entry.request.cpuMillis, memoryBytes: entry.request.memoryBytes)
        entry.attempt += 1
        entry.nodeID = nodeID
        entry.lostOn = nil
        entry.reserved = true
        entry.placedAt = now
        jobs[entry.id] = entry
        counters.placed(after: entry.acceptedAt.duration(to: now))
        var assignment = Hangar_V1_Assignment()
        assignment.jobID = entry.id
        assignment.tenant = entry.tenant
        assignment.attempt = entry.attempt
        assignment.spec = entry.submission.spec
        assignment.assignedAtMs = unixMilliseconds()
        send(assignment, to: nodeID, decidedAt: now, trace: entry.trace.child())
    }

    /// Gives back what the job's current attempt holds on its node.
    func releaseAttempt(_ entry: inout JobEntry) {
        guard let nodeID = entry.nodeID else { return }
        if entry.reserved { cluster.release(nodeID, entry.request) }
        entry.reserved = false
        queue.finished(tenant: entry.tenant, cpuMillis: entry.request.cpuMillis, memoryBytes: entry.request.memoryBytes)
        entry.nodeID = nil
        jobs[entry.id] = entry
    }

    /// Puts a job back in its tenant's queue, at its old place.
    func requeue(_ entry: JobEntry) {
        queue.enqueue(
            tenant: entry.tenant,
            jobID: entry.id,
            priority: entry.submission.priority,
            sequence: entry.sequence
        )
    }

    nonisolated func dispatch(
        _ assignment: Hangar_V1_Assignment,
        to nodeID: String,
        decidedAt: ContinuousClock.Instant,
        trace: TraceContext? = nil
    ) async {
        let jobID = assignment.jobID
        let attempt = assignment.attempt
        // Queued now, before the assignment leaves, so it is applied before the attempt's result
        // (the group committer keeps queue order); dispatch does not wait for the commit.
        let logger = self.logger
        store.enqueue(.attemptPlaced(jobID: jobID, attempt: attempt, nodeID: nodeID, at: unixMilliseconds())) { error in
            logger.error("could not record attempt", metadata: ["job.id": "\(jobID)", "error": "\(error)"])
        }
        do {
            let answer = try await control.request(
                Subjects.assign(node: nodeID),
                payload: try assignment.serializedData(),
                headers: trace.map { [TraceContext.header: $0.traceparent] } ?? [:],
                timeout: config.assignTimeout
            )
            let decoded = try Hangar_V1_AssignReply(serializedBytes: answer.payload)
            switch decoded.outcome {
            case .ack:
                await assigned(jobID: jobID, attempt: attempt, decidedAt: decidedAt)
            case .refused(let refused):
                await assignmentFailed(
                    jobID: jobID,
                    attempt: attempt,
                    nodeID: nodeID,
                    reason: "refused (\(refused.reason)): \(refused.message)"
                )
            case nil:
                await assignmentFailed(jobID: jobID, attempt: attempt, nodeID: nodeID, reason: "empty reply")
            }
        } catch {
            await assignmentFailed(jobID: jobID, attempt: attempt, nodeID: nodeID, reason: "\(error)")
        }
    }

    func assigned(jobID: String, attempt: UInt32, decidedAt: ContinuousClock.Instant) {
        guard var entry = jobs[jobID], entry.attempt == attempt else { return }
        entry.placementMilliseconds = decidedAt.milliseconds(until: .now)
        jobs[jobID] = entry
        counters.dispatched(milliseconds: entry.placementMilliseconds)
    }

    /// The node refused or did not answer: skip it until its next heartbeat and try the next one.
    func assignmentFailed(jobID: String, attempt: UInt32, nodeID: String, reason: String) async {
        cluster.markRefusing(nodeID)
        counters.assignmentFailed()
        logger.info(
            "assignment failed; placing again",
            metadata: ["job.id": "\(jobID)", "attempt": "\(attempt)", "node.id": "\(nodeID)", "reason": "\(reason)"]
        )
        guard var entry = jobs[jobID], entry.attempt == attempt, entry.nodeID == nodeID, !entry.finishing else {
            return
        }
        releaseAttempt(&entry)
        requeue(entry)
        pump()
        try? await store.write(.attemptEnded(jobID: jobID, attempt: attempt, status: "REFUSED", detail: reason))
    }
}
