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

/// How a batch of node results is marked on `hangar.node.<node>.result`: the NATS header
/// `Hangar-Results: batch`, with an `AttemptResultBatch` payload. Without the header the payload is
/// one `AttemptResult`.
public enum ResultBatch {
    /// The header name.
    public static let header = "Hangar-Results"
    /// The header value of a batch.
    public static let value = "batch"
    /// The most results one message carries.
    public static let maxCount = 256
    /// The most payload bytes one batch message carries (well below nats-server's default
    /// `max_payload` of 1 MiB); a larger result travels alone.
    public static let maxBytes = 256 * 1024
}

/// How a batch of admitted submissions is marked on `hangar.intake.<tenant>`: the NATS header
/// `Hangar-Intake: batch`, with an `IntakeBatch` payload. Without the header the payload is one
/// `SubmitRequest` whose job id is in the header `Hangar-Job-Id`.
public enum IntakeBatch {
    /// The header name.
    public static let header = "Hangar-Intake"
    /// The header value of a batch.
    public static let value = "batch"
    /// The most submissions one message carries.
    public static let maxCount = 256
    /// The most payload bytes one batch message carries; a larger submission travels alone.
    public static let maxBytes = 256 * 1024
}
