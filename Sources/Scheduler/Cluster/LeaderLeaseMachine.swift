import Foundation

/// What the `leader` key of the `HANGAR_SCHEDULER` bucket holds: which scheduler holds the lease
/// and in which term. No time is stored: a wall-clock "renewed at" written on one machine cannot be
/// trusted on another, so liveness is judged only by the key's revision changing, on each reader's
/// own monotonic clock.
public struct LeaderRecord: Sendable, Equatable, Codable {
    /// The holder's id: unique per scheduler process (a restarted scheduler is a new holder).
    public var holder: String
    /// Raised by one on every takeover; nodes refuse assignments from a lower term than they have seen.
    public var term: UInt64

    /// A record.
    public init(holder: String, term: UInt64) {
        self.holder = holder
        self.term = term
    }

    /// The stored form: `{"holder":…,"term":…}`.
    public func encoded() -> Data {
        (try? JSONEncoder().encode(self)) ?? Data()
    }

    /// Reads a stored value; nil if it is not a record (then a takeover uses the highest term seen).
    public init?(decoding data: Data) {
        guard let record = try? JSONDecoder().decode(LeaderRecord.self, from: data) else { return nil }
        self = record
    }
}

/// A scheduler's role under the lease.
public enum LeaderRole: Sendable, Equatable, CustomStringConvertible {
    /// Not the leader: must not consume intake, place, or send anything to nodes.
    case standby
    /// The leader in `term` (the term every assignment must carry).
    case leader(term: UInt64)
    /// Was leader in `term` (or wrote the key for it), but could not renew in time: the key's
    /// stream was electing a leader, the server was unreachable, or the answer came too late. Must
    /// not act, exactly like a standby; but as long as the key still holds its own last write,
    /// nobody else has led since, and it takes the lease back in the same `term` by a
    /// compare-and-set on that write (``LeaderLeaseMachine``, rule 4).
    case suspended(term: UInt64)

    /// True for `.leader`.
    public var isLeader: Bool {
        if case .leader = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .standby: "standby"
        case .leader(let term): "leader (term \(term))"
        case .suspended(let term): "suspended (term \(term), not acting)"
        }
    }
}

/// The durations of the lease.
public struct LeaderLeaseSettings: Sendable, Equatable {
    /// How long a successful write keeps its writer leader, measured on the writer's own clock from
    /// the moment it *sent* the write.
    public var lease: Duration
    /// How much longer than `lease` a challenger waits, on its own clock, after it first saw the
    /// key's current revision: covers the two clocks running at slightly different rates and the
    /// time between the holder's send and the challenger's read. Must be above zero.
    public var margin: Duration
    /// How often a standby reads the key.
    public var poll: Duration
    /// How often the leader renews (lease / 3: two renewals may fail or be slow before it lapses).
    public var renewEvery: Duration { lease / 3 }
    /// How often a suspended holder tries to take its record back (rule 4): the poll, at most
    /// 100 ms. A failed try is cheap ("no responders" answers at once), and the first write after
    /// the key's stream has a leader again wins.
    public var reclaimEvery: Duration { min(poll, .milliseconds(100)) }
    /// The least term a key created from absent gets (rule 5): by default the Unix time in seconds
    /// when the settings were made, so that terms keep rising across a lease bucket recreated from
    /// scratch (nodes keep the highest term they have seen, and refuse lower ones).
    public var firstTerm: UInt64

    /// Takeover after the leader's death within `lease + margin + poll` (4.5 s with these defaults).
    public init(
        lease: Duration = .seconds(3),
        margin: Duration = .seconds(1),
        poll: Duration = .milliseconds(500),
        firstTerm: UInt64 = UInt64(max(0, Date().timeIntervalSince1970))
    ) {
        self.lease = lease
        self.margin = margin
        self.poll = poll
        self.firstTerm = firstTerm
    }

    /// Why these settings cannot keep two leaders apart, or nil if they can.
    public var problem: String? {
        if lease <= .zero { return "the lease must be above zero" }
        if margin <= .zero { return "the margin must be above zero (it keeps the old leader's step-down first)" }
        if poll <= .zero { return "the poll interval must be above zero" }
        return nil
    }
}

/// The leader lease as a pure state machine: the caller passes the time (its own monotonic clock)
/// and the results of its reads and writes of the `leader` key; the machine says what to do next
/// and what the role is. No I/O, so every rule is tested without a server.
///
/// nats-server 2.9 has no per-key expiry, so the lease is kept by rewriting the key:
///
/// 1. **Holder renews.** The leader rewrites the key every `lease / 3` with the same record, as a
///    compare-and-set on the revision it last wrote. A successful write keeps it leader until
///    `sent + lease`, where `sent` is when that write was *sent* (its own clock).
/// 2. **Holder steps down at once** when a renewal is refused (someone else wrote the key), fails
///    (no answer, connection lost), or has not succeeded by `sent + lease` of the last successful
///    write, even while the renewal is still waiting for an answer.
/// 3. **Challenger takes over only after the lapse.** A standby reads the key every `poll`. It
///    takes over only when it has seen the key's revision unchanged for `lease + margin` on its
///    *own* monotonic clock, counted from the first read that showed that revision, by a
///    compare-and-set on exactly that revision with the term raised by one (at the first poll
///    after the lapse, so within `lease + margin + poll`). An absent key is created at once
///    (term: one above the highest seen). After a failed read or write it waits one `poll`; and
///    when the key answers again after failures, it waits `margin + poll` more before it takes over
///    (the count of the lapse still runs from its first read): the holder could not renew while
///    nobody could reach the key either, and gets the first chance to take its record back (rule 4).
///
/// 4. **A holder takes its own record back.** A leader that stepped down because a renewal failed
///    or came too late (not because it was refused) is ``LeaderRole/suspended(term:)``: it does not
///    act, and every `reclaimEvery` (the poll, at most 100 ms) it tries a compare-and-set of the same record on the revision of its
///    own last successful write. Success makes it leader again in the same term; a refusal makes it
///    read the key: if the key holds a later write of its own (a renewal that did land), it tries
///    on that revision; if anyone else's, it is standby. This is what lets a leader live through
///    the election of the key's own stream (nats-server's Raft waits 4-9 s before it campaigns)
///    even with a shorter lease: nobody can write the key meanwhile, and once the stream has a
///    leader again the holder usually writes first; if a challenger wins instead, it has waited
///    out the lapse as in rule 3.
/// 5. **Terms never go back.** A key created from absent gets a term above both the highest seen
///    and ``LeaderLeaseSettings/firstTerm`` (by default the creation's Unix time in seconds), so a
///    lease bucket recreated from scratch does not start again at a term nodes have seen already.
///
/// Why never two leaders: the revision a challenger replaces was written at or after the holder
/// sent it, and the challenger first saw it no earlier, so the holder's lease from that write ends
/// at least `margin` before the challenger's compare-and-set can succeed; any later renewal by the
/// holder would have changed the revision and made that compare-and-set fail. Two clocks need
/// only run at nearly the same *rate* (no synchronised wall clocks). A holder whose process stops
/// (`kill -9`) simply stops renewing; the standby takes over within `lease + margin + poll`. A
/// holder's compare-and-set on its own last write (rule 4) succeeds only if nobody has written the
/// key since, so nobody else has led since: it cannot overlap another leader either.
public struct LeaderLeaseMachine: Sendable {
    /// A write of the `leader` key that the caller must make and report on.
    public enum Write: Sendable, Equatable {
        /// Create the key (it was absent).
        case create(LeaderRecord)
        /// Compare-and-set: replace revision `expectedRevision` with the record.
        case update(LeaderRecord, expectedRevision: UInt64)

        /// The record written.
        public var record: LeaderRecord {
            switch self {
            case .create(let record), .update(let record, _): record
            }
        }
    }

    /// What the caller does next.
    public enum Step: Sendable, Equatable {
        /// Make this write, then call ``written(revision:at:)``, ``refused(at:)`` or ``failed(at:)``.
        case write(Write)
        /// Read the key, then call ``observed(_:at:)`` or ``readFailed(at:)``.
        case read
        /// Nothing to do until then (call ``next(at:)`` again).
        case wait(until: ContinuousClock.Instant)
    }

    /// What a read of the key found.
    public enum Observation: Sendable, Equatable {
        case absent
        /// The key at `revision`; `record` is nil if the value is not a record.
        case present(revision: UInt64, record: LeaderRecord?)
    }

    /// This scheduler's holder id.
    public let holder: String
    public let settings: LeaderLeaseSettings
    /// The role now (after the last call).
    public private(set) var role: LeaderRole = .standby
    /// The highest term read or written: a takeover goes above it.
    public private(set) var highestTerm: UInt64 = 0

    /// Leader: the revision of its last successful write and when that write was sent.
    /// Suspended: the revision of its own last write that it knows of (rule 4).
    private var heldRevision: UInt64 = 0
    private var leaseSentAt: ContinuousClock.Instant?
    /// Suspended: the key may have moved on (a refusal); read it before writing again.
    private var mustRead = false
    /// Standby: the revision last read, and when it was first read.
    private var watchedRevision: UInt64?
    private var watchedSince: ContinuousClock.Instant?
    private var keyAbsent = false
    /// Standby: a read or write failed since its last successful read (the key was unreachable).
    private var unreachable = false
    /// Standby: when the key answered again after being unreachable (see rule 3).
    private var reachableAgainAt: ContinuousClock.Instant?
    private var nextReadAt: ContinuousClock.Instant?
    /// The write handed out and not reported yet, and when it was handed out (= sent).
    private var pending: (write: Write, sentAt: ContinuousClock.Instant, renewal: Bool)?

    /// A standby that has read nothing yet: its first step is a read.
    public init(holder: String, settings: LeaderLeaseSettings) {
        self.holder = holder
        self.settings = settings
    }

    /// When the leader stops being leader unless a renewal succeeds first; nil when not leader.
    public var leaderDeadline: ContinuousClock.Instant? {
        guard role.isLeader, let leaseSentAt else { return nil }
        return leaseSentAt + settings.lease
    }

    /// Steps down (to suspended, rule 4) if the lease has lapsed by `now` (rule 2). Called by
    /// ``next(at:)``, and by the caller's timer while a renewal is waiting for its answer.
    public mutating func expire(at now: ContinuousClock.Instant) {
        if let deadline = leaderDeadline, now >= deadline { suspend() }
    }

    /// The next thing to do at `now`.
    public mutating func next(at now: ContinuousClock.Instant) -> Step {
        expire(at: now)
        if pending != nil {
            // A write is out: its answer comes first (the caller's timer covers the deadline).
            return .wait(until: leaderDeadline ?? now + settings.poll)
        }
        switch role {
        case .leader(let term):
            guard let leaseSentAt else { break }
            let renewAt = leaseSentAt + settings.renewEvery
            guard now >= renewAt else { return .wait(until: min(renewAt, leaseSentAt + settings.lease)) }
            return hand(.update(LeaderRecord(holder: holder, term: term), expectedRevision: heldRevision), at: now)
        case .suspended(let term):
            // Rule 4, on the poll's rhythm: take the own record back, or read what replaced it.
            if let nextReadAt, now < nextReadAt { return .wait(until: nextReadAt) }
            if mustRead { return .read }
            return hand(.update(LeaderRecord(holder: holder, term: term), expectedRevision: heldRevision), at: now)
        case .standby:
            break
        }
        if keyAbsent {
            return hand(.create(LeaderRecord(holder: holder, term: max(highestTerm + 1, settings.firstTerm))), at: now)
        }
        // Standby: act on the poll's rhythm (also the pause after a failed read or write).
        if let nextReadAt, now < nextReadAt { return .wait(until: nextReadAt) }
        if !unreachable, let revision = watchedRevision, let since = watchedSince,
            now >= since + settings.lease + settings.margin,
            reachableAgainAt.map({ now >= $0 + settings.margin + settings.poll }) ?? true
        {
            return hand(
                .update(LeaderRecord(holder: holder, term: highestTerm + 1), expectedRevision: revision),
                at: now
            )
        }
        return .read
    }

    /// A read found `observation` at `now`.
    public mutating func observed(_ observation: Observation, at now: ContinuousClock.Instant) {
        nextReadAt = now + settings.poll
        if unreachable {
            unreachable = false
            reachableAgainAt = now
        }
        if case .present(let revision, let record) = observation, let record, record.holder == holder {
            // Its own write (a renewal or takeover whose answer was lost or late): nobody has
            // written since, so it may take it back in that term at once (rule 4). A leader reads
            // only when it is not leading any more.
            if !role.isLeader {
                highestTerm = max(highestTerm, record.term)
                role = .suspended(term: record.term)
                heldRevision = revision
                leaseSentAt = nil
                mustRead = false
                keyAbsent = false
                watchedRevision = nil
                watchedSince = nil
                nextReadAt = now
            }
            return
        }
        if case .suspended = role {
            // Someone else's write, or none: the own record is gone; standby from here.
            role = .standby
            mustRead = false
            heldRevision = 0
        }
        switch observation {
        case .absent:
            keyAbsent = true
            watchedRevision = nil
            watchedSince = nil
        case .present(let revision, let record):
            keyAbsent = false
            if let record { highestTerm = max(highestTerm, record.term) }
            if watchedRevision != revision {
                // A new revision: the holder is alive as of now; count the lapse from here.
                watchedRevision = revision
                watchedSince = now
            }
        }
    }

    /// A read failed: try again after `poll`. What was seen before still counts (a takeover is a
    /// compare-and-set on that revision, so a write missed meanwhile makes it fail).
    public mutating func readFailed(at now: ContinuousClock.Instant) {
        nextReadAt = now + (role == .standby ? settings.poll : settings.reclaimEvery)
        if !role.isLeader { unreachable = true }
    }

    /// The write handed out succeeded at `revision`. It makes this scheduler leader until its
    /// send time plus the lease. An answer that arrives later than that, or a renewal answered
    /// after the leader already stepped down, leaves it suspended on that revision: its next step
    /// takes the record back (rule 4), and it leads from that write's send time.
    public mutating func written(revision: UInt64, at now: ContinuousClock.Instant) {
        guard let (write, sentAt, renewal) = pending else { return }
        pending = nil
        let term = write.record.term
        highestTerm = max(highestTerm, term)
        keyAbsent = false
        mustRead = false
        watchedRevision = nil
        watchedSince = nil
        heldRevision = revision
        if now < sentAt + settings.lease && (!renewal || role.isLeader) {
            role = .leader(term: term)
            leaseSentAt = sentAt
        } else {
            // Too late to lead on it; but it is the key's latest write, and its own.
            role = .suspended(term: term)
            leaseSentAt = nil
            nextReadAt = now
        }
    }

    /// The write handed out was refused: the key is not at the revision it expected. A leader
    /// steps down at once. Leader or suspended, it reads the key next (at once): only a write of
    /// its own may have moved it on (rule 4), otherwise it is standby.
    public mutating func refused(at now: ContinuousClock.Instant) {
        guard pending != nil else { return }
        pending = nil
        switch role {
        case .leader(let term), .suspended(let term):
            role = .suspended(term: term)
            leaseSentAt = nil
            mustRead = true
        case .standby:
            // The key moved on: read at once who holds it, and count any lapse from that read.
            watchedRevision = nil
            watchedSince = nil
        }
        keyAbsent = false
        nextReadAt = now
    }

    /// The write handed out failed (no answer, no stream leader, connection lost): a leader steps
    /// down at once to suspended and tries again after `poll`. The write may have landed; if so,
    /// the next try is refused and the read that follows finds its own record.
    public mutating func failed(at now: ContinuousClock.Instant) {
        guard pending != nil else { return }
        pending = nil
        if role.isLeader {
            suspend()
        } else if role == .standby {
            unreachable = true
        }
        keyAbsent = false
        nextReadAt = now + (role == .standby ? settings.poll : settings.reclaimEvery)
    }

    private mutating func hand(_ write: Write, at now: ContinuousClock.Instant) -> Step {
        pending = (write, now, role.isLeader)
        return .write(write)
    }

    /// Leader → suspended in the same term, keeping the revision of its last write (rule 4).
    private mutating func suspend() {
        guard case .leader(let term) = role else { return }
        role = .suspended(term: term)
        leaseSentAt = nil
        mustRead = false
    }
}
