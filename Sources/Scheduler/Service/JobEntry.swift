import HangarShared

/// A job the scheduler is working on (accepted, not yet finished).
struct JobEntry: Sendable {
    let id: String
    let submission: ValidatedSubmission
    let request: PlacementRequest
    let acceptedAt: ContinuousClock.Instant
    /// Its place in the tenant's queue, kept when it goes back there.
    var sequence: UInt64 = 0
    /// Reply subjects of tenants waiting for the result (wait mode, including duplicates).
    var waiters: [String]
    /// The current attempt (the fencing epoch); 0 before the first placement.
    var attempt: UInt32 = 0
    /// Attempts lost to dead or drained nodes; retries stop at `submission.maxAttempts`.
    var losses: UInt32 = 0
    /// The node of the current attempt when that attempt was declared LOST: until a later attempt is
    /// placed, that node's result for it is still the job's outcome (see `storeResults`).
    var lostOn: String?
    var nodeID: String?
    var placedAt: ContinuousClock.Instant?
    var placementMilliseconds: UInt64 = 0
    var lastPlacementProblem = ""
    var finishing = false
    /// Restored from the store after a scheduler restart while its attempt was running; confirmed or
    /// declared lost once the node has had time to report.
    var recovered = false
    /// The attempt holds a reservation on `nodeID` in the cluster state.
    var reserved = false
    /// The W3C trace of the submission (from its `traceparent` header, else new); assignments carry it.
    var trace = TraceContext.start()
    /// The submission is in the intake stream (PubAck received). Until then a repeated request id
    /// is not answered (the publish may still fail); its reply subject waits in `pendingAcks`.
    var durable = false
    var pendingAcks: [String] = []
    /// The intake consumer has committed the job to SQLite; only then is it queued for placement.
    var committed = false
    /// Cancelled before it was committed: ends CANCELLED as soon as it is.
    var cancelRequested = false
    /// Taken from the intake stream after a restart, it no longer passes validation: rejected once
    /// committed.
    var invalidAfterRestart = false

    /// The serialized request's size, counted in the tenant's queued bytes while the job lives here
    /// (0 for jobs restored after a restart, which were counted by no budget of this process).
    var bytes = 0

    var tenant: String { submission.tenant }

    var requestKey: String? {
        submission.requestID.isEmpty ? nil : "\(submission.tenant)/\(submission.requestID)"
    }
}
