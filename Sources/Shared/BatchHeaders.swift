/// How a batch of assignments is marked on `hangar.node.<node>.assign`: the NATS header
/// `Hangar-Assign: batch`, with an `AssignmentBatch` payload answered by an `AssignBatchReply`.
/// Without the header the payload is one `Assignment` answered by an `AssignReply`.
public enum AssignBatch {
    /// The header name.
    public static let header = "Hangar-Assign"
    /// The header value of a batch.
    public static let value = "batch"
}

/// How a batch of submissions is marked on `hangar.submit.<tenant>`: the NATS header
/// `Hangar-Submit: batch`, with a `SubmitBatchRequest` payload answered by a `SubmitBatchReply`.
public enum SubmitBatch {
    /// The header name.
    public static let header = "Hangar-Submit"
    /// The header value of a batch.
    public static let value = "batch"
    /// The most submissions one batch may carry.
    public static let maxCount = 1000
}
