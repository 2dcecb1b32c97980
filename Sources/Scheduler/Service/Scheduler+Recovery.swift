import Foundation
import HangarShared

extension Scheduler {
    /// Rebuilds the work of a previous scheduler process from the store: queued jobs are queued
    /// again; running attempts are kept, so the node's result (which it resends until acknowledged)
    /// is accepted; those no node confirms within TTL + grace are lost and retried.
    func recover() async throws {
        let unfinished = try await store.unfinishedJobs()
        guard !unfinished.isEmpty else { return }
        var requeued = 0
        var running = 0
        for job in unfinished {
            let policy = tenants.policy(for: job.tenant)
            guard
                case .success(let submission) = config.validator.validate(
                    job.request,
                    tenant: job.tenant,
                    policy: policy
                )
            else {
                var entry = JobEntry(
                    id: job.id,
                    submission: ValidatedSubmission(
                        tenant: job.tenant,
                        requestID: job.request.requestID,
                        spec: Hangar_V1_JobSpec(),
                        priority: 0,
                        labels: [:],
                        wait: false,
                        maxAttempts: 1,
                        backoff: .zero
                    ),
                    request: PlacementRequest(runtime: ""),
                    acceptedAt: .now,
                    waiters: []
                )
                entry.attempt = job.attempt
                entry.durable = true
                entry.committed = true
                // Accepted, so never REJECTED: it cannot run under today's rules.
                finishWithoutNode(
                    entry,
                    status: .error,
                    message: "after a scheduler restart the job no longer passes validation"
                )
                continue
            }
            var entry = JobEntry(
                id: job.id,
                submission: submission,
                request: placementRequest(for: submission, jobID: job.id),
                acceptedAt: .now,
                waiters: []
            )
            entry.attempt = job.attempt
            entry.durable = true  // read back from the store
            entry.committed = true
            if let key = entry.requestKey { byRequest[key] = job.id }
            if job.running, let nodeID = job.nodeID {
                entry.nodeID = nodeID
                entry.placedAt = .now
                entry.recovered = true
                queue.started(
                    tenant: entry.tenant,
                    cpuMillis: entry.request.cpuMillis,
                    memoryBytes: entry.request.memoryBytes
                )
                jobs[job.id] = entry
                running += 1
            } else {
                jobs[job.id] = entry
                entry.sequence = queue.enqueue(tenant: entry.tenant, jobID: job.id, priority: submission.priority)
                jobs[job.id]?.sequence = entry.sequence
                requeued += 1
            }
        }
        recoveryDeadline = .now + config.nodeTTL + config.nodeGrace
        logger.notice("recovered unfinished jobs", metadata: ["queued": "\(requeued)", "running": "\(running)"])
        try? await store.write(
            .audit(
                actor: "scheduler",
                event: "scheduler.recovered",
                jobID: nil,
                detail: "queued \(requeued), running \(running)"
            )
        )
    }

    /// After the recovery grace: a restored attempt whose node is not up, or does not list it as
    /// running, is lost (and retried by policy).
    func settleRecovered(now: ContinuousClock.Instant) {
        guard let deadline = recoveryDeadline, now >= deadline else { return }
        recoveryDeadline = nil
        for entry in jobs.values where entry.recovered {
            jobs[entry.id]?.recovered = false
            guard let nodeID = entry.nodeID else { continue }
            let listed =
                cluster.records[nodeID]?.heartbeat.runningJobs.contains("\(entry.id)/\(entry.attempt)") ?? false
            if cluster.isUp(nodeID) && listed {
                cluster.reserve(nodeID, entry.request)
                jobs[entry.id]?.reserved = true
            } else {
                loseAttempt(
                    entry.id,
                    reason: "after a scheduler restart node \(nodeID) did not confirm attempt \(entry.attempt)"
                )
            }
        }
    }
}
