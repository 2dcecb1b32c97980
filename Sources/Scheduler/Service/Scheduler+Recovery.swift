import Foundation
import HangarShared

extension Scheduler {
    /// Rebuilds the work of a previous scheduler process from the store and hands it to the core:
    /// queued jobs are queued again; running attempts are kept, so the node's result (which it
    /// resends until acknowledged) is accepted; those no node confirms within TTL + grace are lost
    /// and retried (``JobPhase/restored``).
    func recover() async throws {
        let unfinished = try await store.unfinishedJobs()
        guard !unfinished.isEmpty else { return }
        var requeued = 0
        var running = 0
        for job in unfinished {
            let entry = self.entry(
                for: job.request,
                tenant: job.tenant,
                jobID: job.id,
                trace: .start(),
                invalid: "after a scheduler restart the job no longer passes validation"
            )
            jobs[job.id] = entry.entry
            if let key = entry.entry.requestKey { byRequest[key] = job.id }
            let node = job.running ? job.nodeID : nil
            if node == nil { requeued += 1 } else { running += 1 }
            handle(.restored(entry.spec, attempt: job.attempt, node: node))
        }
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

    /// The entry and core spec of a job this process did not admit (read back from the store or
    /// the intake stream), validated again under today's rules: one that no longer passes is
    /// accepted all the same and ends ERROR with `invalid` (never dropped, never REJECTED).
    func entry(
        for request: Hangar_V1_SubmitRequest,
        tenant: String,
        jobID: String,
        trace: TraceContext,
        invalid: String
    ) -> (entry: JobEntry, spec: CoreJob.Spec) {
        let policy = tenants.policy(for: tenant)
        if case .success(let submission) = config.validator.validate(request, tenant: tenant, policy: policy) {
            var entry = JobEntry(
                id: jobID,
                submission: submission,
                request: placementRequest(for: submission, jobID: jobID),
                acceptedAt: .now,
                waiters: []
            )
            entry.trace = trace
            entry.durable = true
            return (entry, entry.spec)
        }
        var entry = JobEntry(
            id: jobID,
            submission: ValidatedSubmission(
                tenant: tenant,
                requestID: request.requestID,
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
        entry.trace = trace
        entry.durable = true
        var spec = entry.spec
        spec.invalid = invalid
        return (entry, spec)
    }
}
