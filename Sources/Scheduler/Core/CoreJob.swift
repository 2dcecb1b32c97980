import HangarShared

/// One accepted job as ``SchedulerCore`` sees it: what it asks for and where it is in its life.
public struct CoreJob: Sendable, Equatable {
    /// What admission decided about the job (validated; the tenant from the subject).
    public struct Spec: Sendable, Equatable {
        public var id: String
        public var tenant: String
        public var priority: Int32
        public var request: PlacementRequest
        /// Attempts the job may have before a loss ends it LOST (1 = never retried).
        public var maxAttempts: UInt32
        /// The wait before the first retry, doubled for each further one.
        public var backoff: Duration

        /// A job spec.
        public init(
            id: String,
            tenant: String,
            priority: Int32 = 0,
            request: PlacementRequest,
            maxAttempts: UInt32 = 3,
            backoff: Duration = .milliseconds(100)
        ) {
            self.id = id
            self.tenant = tenant
            self.priority = priority
            self.request = request
            self.maxAttempts = maxAttempts
            self.backoff = backoff
        }
    }

    public let spec: Spec
    public let acceptedAt: ContinuousClock.Instant
    public internal(set) var phase: JobPhase
    /// Attempts sent so far; the latest is the fencing epoch a result must carry.
    public internal(set) var attempts: UInt32 = 0
    /// Attempts lost with their node.
    public internal(set) var losses: UInt32 = 0
    /// Its place in the tenant's queue, kept when it goes back there.
    var sequence: UInt64?
    /// Why it is still waiting, for the message when it expires.
    public internal(set) var waitingBecause = ""

    public var id: String { spec.id }
    public var tenant: String { spec.tenant }
}

/// An attempt declared LOST whose node may still deliver its result: until a later attempt is sent,
/// that result is the job's outcome.
public struct LostAttempt: Sendable, Equatable {
    public var attempt: UInt32
    public var node: String
}

/// Where a job is. Each case carries what only that phase has, so no combination of flags can say
/// two things at once (a job cannot be queued and hold a reservation, or finish twice).
public enum JobPhase: Sendable, Equatable {
    /// Admitted and in the intake stream; not yet committed to the store, so not placed.
    /// `cancelRequested`: it ends CANCELLED as soon as it is committed.
    case committing(cancelRequested: Bool)
    /// In its tenant's queue, waiting for a node.
    case queued(lost: LostAttempt?)
    /// Waiting out a retry backoff after an attempt was lost.
    case backingOff(until: ContinuousClock.Instant, lost: LostAttempt)
    /// Attempt `attempt` holds a reservation on `node`; `admitted` once the node acknowledged it.
    case running(attempt: UInt32, node: String, admitted: Bool)
    /// Its end is decided and being committed (the ``LogRecord/finished`` record); the waiters hear
    /// it once the store has it.
    case finishing(CoreOutcome)
}

/// How a job ended.
public struct CoreOutcome: Sendable, Equatable {
    public var status: Hangar_V1_JobStatus
    /// The attempt whose result this is (0 when it ended without one).
    public var attempt: UInt32
    public var node: String?
    public var message: String
}
