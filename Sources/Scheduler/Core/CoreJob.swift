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
        /// Why the job can no longer run (read back from the stream or the store, it fails today's
        /// validation): accepted, so it ends ERROR with this message once it is in the store.
        public var invalid: String?

        /// A job spec.
        public init(
            id: String,
            tenant: String,
            priority: Int32 = 0,
            request: PlacementRequest,
            maxAttempts: UInt32 = 3,
            backoff: Duration = .milliseconds(100),
            invalid: String? = nil
        ) {
            self.id = id
            self.tenant = tenant
            self.priority = priority
            self.request = request
            self.maxAttempts = maxAttempts
            self.backoff = backoff
            self.invalid = invalid
        }
    }

    public let spec: Spec
    /// When it was accepted (kept as a ``Moment``, so that a job's layout is known at compile time).
    @StoredAsMoment public private(set) var acceptedAt: ContinuousClock.Instant
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

    /// Whether its current attempt is running (or restored) on `node`.
    func isOn(_ node: String) -> Bool {
        switch phase {
        case .running(_, node, _), .restored(_, node, _): true
        default: false
        }
    }
}

/// An attempt declared LOST whose node may still deliver its result: until a later attempt is sent,
/// that result is the job's outcome.
public struct LostAttempt: Sendable, Equatable {
    public var attempt: UInt32
    public var node: String
}

/// An attempt its node's heartbeats stopped listing, first missed at `since`.
struct UnlistedAttempt: Sendable, Equatable {
    var attempt: UInt32
    var node: String
    @StoredAsMoment var since: ContinuousClock.Instant
}

/// Where a job is. Each case carries what only that phase has, so no combination of flags can say
/// two things at once (a job cannot be queued and hold a reservation, or finish twice).
public enum JobPhase: Sendable, Equatable {
    /// Admitted and in the intake stream; not yet committed to the store, so not placed.
    /// `cancelled`: cancelled meanwhile (why); it ends CANCELLED as soon as it is committed.
    case committing(cancelled: String?)
    /// In its tenant's queue, waiting for a node.
    case queued(lost: LostAttempt?)
    /// Waiting out a retry backoff after an attempt was lost.
    case backingOff(until: Moment, lost: LostAttempt)
    /// Attempt `attempt` holds a reservation on `node`; `admitted` once the node acknowledged it.
    case running(attempt: UInt32, node: String, admitted: Bool)
    /// Restored after a scheduler restart while attempt `attempt` ran on `node`: it counts in its
    /// tenant's usage, and holds a reservation on the node once the node has joined (`reserved`);
    /// the node must confirm it (its heartbeat lists it) within TTL + grace, else it is lost. Its
    /// result counts meanwhile.
    case restored(attempt: UInt32, node: String, reserved: Bool)
    /// Its end is decided and being committed (the ``LogRecord/finished`` record); the waiters hear
    /// it once the store has it. `storeFailed`: the last write failed; the next tick writes it again.
    /// `holds`: what its attempt keeps until then, so that until the store knows the attempt ended
    /// nothing else takes its place (a restarted scheduler rebuilds the node's load from the store).
    case finishing(CoreOutcome, storeFailed: Bool, holds: Hold)
}

/// What a job's attempt holds: its share of its tenant's usage, and its reservation on the node
/// once the core knows the node.
public enum Hold: Sendable, Equatable {
    case nothing
    case usage
    case usageAndNode(String)
}

/// How a job ended.
public struct CoreOutcome: Sendable, Equatable {
    public var status: Hangar_V1_JobStatus
    /// The attempt whose result this is (0 when it ended without one).
    public var attempt: UInt32
    public var node: String?
    public var message: String
}

/// Queries of the core's jobs by id, on the dictionary itself: the shell asks `core.jobs.…`, which
/// copies only this dictionary out of the actor (a method of the core would copy the whole core).
extension [String: CoreJob] {
    /// Whether job `id` is here (a lookup without copying the job out).
    public func knows(_ id: String) -> Bool { index(forKey: id) != nil }

    /// Whether the store has job `id` (it is past ``JobPhase/committing``).
    public func isCommitted(_ id: String) -> Bool {
        guard let phase = self[id]?.phase else { return false }
        if case .committing = phase { return false }
        return true
    }

    /// How many attempts job `id` was sent so far (nil: not here).
    public func attempts(of id: String) -> UInt32? { self[id]?.attempts }
}
