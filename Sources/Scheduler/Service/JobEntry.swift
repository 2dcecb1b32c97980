import HangarShared

/// A job the scheduler is working on (accepted, not yet finished).
struct JobEntry: Sendable {
    let id: String
    let submission: ValidatedSubmission
    let acceptedAt: ContinuousClock.Instant
    /// Reply subjects of tenants waiting for the result (wait mode, including duplicates).
    var waiters: [String]
    var attempt: UInt32 = 0
    var nodeID: String?
    var placedAt: ContinuousClock.Instant?
    var placementMilliseconds: UInt64 = 0
    var lastPlacementProblem = ""
    var finishing = false

    var requestKey: String? {
        submission.requestID.isEmpty ? nil : "\(submission.tenant)/\(submission.requestID)"
    }
}
