/// How a batch of assignments is marked on `hangar.node.<node>.assign`: the NATS header
/// `Hangar-Assign: batch`, with an `AssignmentBatch` payload answered by an `AssignBatchReply`.
/// Without the header the payload is one `Assignment` answered by an `AssignReply`.
public enum AssignBatch {
    /// The header name.
    public static let header = "Hangar-Assign"
    /// The header value of a batch.
    public static let value = "batch"
}
