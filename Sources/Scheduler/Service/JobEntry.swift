import Foundation
import HangarShared

/// What the scheduler's I/O shell keeps about a job the core works on (accepted, not yet ended):
/// who waits for it and what to tell them. Where the job is in its life is the core's
/// (``SchedulerCore/jobs``, ``JobPhase``).
struct JobEntry: Sendable {
    let id: String
    let submission: ValidatedSubmission
    let request: PlacementRequest
    /// When it was accepted and placed, kept as ``Moment``s: with `ContinuousClock.Instant`s here
    /// the entry's layout would be known only at run time (see ``Moment``), and every copy or field
    /// read of it would cost more.
    @StoredAsMoment private(set) var acceptedAt: ContinuousClock.Instant
    /// Reply subjects of tenants waiting for the result (wait mode, including duplicates).
    var waiters: [String]
    @StoredAsOptionalMoment var placedAt: ContinuousClock.Instant? = nil
    var placementMilliseconds: UInt64 = 0
    /// The W3C trace of the submission (from its `traceparent` header, else new); assignments carry it.
    var trace = TraceContext.start()
    /// The submission is in the intake stream (PubAck received). Until then a repeated request id
    /// is not answered (the publish may still fail); its reply subject waits in `pendingAcks`.
    var durable = false
    var pendingAcks: [String] = []
    /// The job's result once the core decided its end (built from the node's report, or from the
    /// core's outcome), serialized once: stored, published and put in the replies as these bytes.
    var result: (result: Hangar_V1_Result, encoded: Data)?

    /// The serialized request's size, counted in the tenant's queued bytes while the job lives here
    /// (0 for jobs restored after a restart, which were counted by no budget of this process).
    var bytes = 0
    /// Where the intake stream acknowledged the submission (its sequence there) and what it was
    /// sent (the serialized request), kept until the submission is in the store: should the stream
    /// lose it, it is published again (`Scheduler.recoverLostIntake`).
    var intake: (sequence: UInt64, request: Data)?

    var tenant: String { submission.tenant }

    var requestKey: String? {
        submission.requestID.isEmpty ? nil : "\(submission.tenant)/\(submission.requestID)"
    }

    /// The core's view of the job: what admission decided.
    var spec: CoreJob.Spec {
        CoreJob.Spec(
            id: id,
            tenant: tenant,
            priority: submission.priority,
            request: request,
            maxAttempts: submission.maxAttempts,
            backoff: submission.backoff
        )
    }
}

/// One node's report of one attempt of a job.
struct ReportKey: Hashable, Sendable {
    var jobID: String
    var attempt: UInt32
    var nodeID: String
}
