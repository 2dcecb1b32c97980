/// The JetStream streams that make intake and results durable (see README, "Delivery guarantee").
public enum Streams {
    /// Accepted submissions, from the scheduler's admission until they are committed to SQLite.
    public static let submissions = "HANGAR_SUBMISSIONS"
    /// Node results, from the node until the scheduler has stored them.
    public static let results = "HANGAR_RESULTS"
    /// Stateful sandboxes' lifecycle events (`hangar.sbxevents.<tenant>.<sandbox>`), kept for
    /// replay from a sequence (limits retention: a tenant reads them through the scheduler's
    /// `events` verb, which keeps each tenant to its own subjects).
    public static let sandboxEvents = "HANGAR_SANDBOX_EVENTS"
    /// The schedulers' replicated store log: every store transaction of the leading scheduler, in
    /// order, which every scheduler applies to its own SQLite file (limits retention, see README
    /// "Cluster").
    public static let storeLog = "HANGAR_LOG"
    /// The durable pull consumer every scheduler instance shares on each stream.
    public static let consumer = "hangar-scheduler"
    /// The header carrying the job id the scheduler gave an intake message.
    public static let jobIDHeader = "Hangar-Job-Id"
    /// The header carrying when the scheduler admitted an intake message (Unix milliseconds).
    public static let submittedAtHeader = "Hangar-Submitted-At"
    /// The key-value bucket of the schedulers' leader lease (its stream is `KV_HANGAR_SCHEDULER`).
    public static let schedulerBucket = "HANGAR_SCHEDULER"
    /// Every stream, for the scheduler's permissions.
    public static let all = [submissions, results, sandboxEvents, storeLog]
}

extension Subjects {
    /// scheduler → its own intake stream: an admitted `SubmitRequest` (header `Hangar-Job-Id`),
    /// published only by the scheduler; the stream's message id is `<tenant>/<request id>`.
    public static func intake(tenant: String) -> String { "hangar.intake.\(tenant)" }
    /// scheduler → the store log stream: one store transaction (a `StoreLogEntry`), published only
    /// by the leading scheduler, after the last sequence it knows (`Nats-Expected-Last-Sequence`).
    public static let storeLog = "hangar.store.log"
    /// What the intake stream captures.
    public static let intakeWildcard = "hangar.intake.*"
}
