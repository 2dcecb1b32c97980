import Foundation
import HangarNATS
import HangarShared
import Logging
import Synchronization

/// Where the lease lives: the one key of the leader lease, read and written by compare-and-set.
/// ``KeyValueLeaderStore`` is the real one (a JetStream key-value bucket); tests may wrap it to
/// cut a scheduler off.
public protocol LeaderLeaseStore: Sendable {
    /// The key's latest value and revision, or nil if it is absent.
    func read() async throws -> KeyValueEntry?
    /// Writes the key only if it is absent; the new revision.
    func create(_ value: Data) async throws(KeyValueWriteError) -> UInt64
    /// Writes the key only if it is still at `expectedRevision`; the new revision.
    func update(_ value: Data, expectedRevision: UInt64) async throws(KeyValueWriteError) -> UInt64
}

/// The `leader` key of the `HANGAR_SCHEDULER` key-value bucket.
public struct KeyValueLeaderStore: LeaderLeaseStore {
    /// The bucket the schedulers share.
    public static let bucketName = Streams.schedulerBucket
    /// The lease's key in it.
    public static let key = "leader"

    public let bucket: KeyValueBucket

    /// Uses `bucket` (normally the one ``open(_:replicas:)`` returns).
    public init(bucket: KeyValueBucket) {
        self.bucket = bucket
    }

    /// Creates or binds the `HANGAR_SCHEDULER` bucket with `replicas` copies.
    public static func open(_ jetStream: JetStream, replicas: Int = 1) async throws -> KeyValueLeaderStore {
        KeyValueLeaderStore(bucket: try await jetStream.keyValueBucket(bucketName, replicas: replicas))
    }

    public func read() async throws -> KeyValueEntry? {
        try await bucket.get(Self.key)
    }

    public func create(_ value: Data) async throws(KeyValueWriteError) -> UInt64 {
        try await bucket.create(Self.key, value: value)
    }

    public func update(_ value: Data, expectedRevision: UInt64) async throws(KeyValueWriteError) -> UInt64 {
        try await bucket.update(Self.key, value: value, expectedRevision: expectedRevision)
    }
}

/// Runs the leader lease (``LeaderLeaseMachine``, whose `///` states the rules) against a store,
/// on this process's monotonic clock, and publishes every role change on ``roles``.
///
/// A renewal that is still waiting for the server when the lease runs out does not hold the
/// leader back: a timer steps it down at the deadline (rule 2), whatever the write does later.
/// Ending ``run()`` (cancelling its task) stops renewing at once, as a dead process would; a
/// leader (or suspended one) publishes `.standby` as it ends, and ``roles`` finishes.
public actor LeaderLease {
    /// Every role change, starting from the first one (a new lease is standby until it wins).
    public nonisolated let roles: AsyncStream<LeaderRoleChange>
    private let continuation: AsyncStream<LeaderRoleChange>.Continuation
    private let store: any LeaderLeaseStore
    private var machine: LeaderLeaseMachine
    private var published: LeaderRole = .standby
    /// While leader: when the lease ends by this process's clock, unless renewed.
    private var leaseEnds: ContinuousClock.Instant?
    /// ``leaseEnds`` for ``holds(at:)``, as nanoseconds after ``epoch``; `Int64.min` when not leader.
    private nonisolated let leaseEndsNanoseconds = Atomic<Int64>(Int64.min)
    private nonisolated let epoch = ContinuousClock.now
    private let logger: Logger

    /// A lease for the scheduler `holder` (unique per process, e.g. host, pid and a random part).
    public init(
        store: any LeaderLeaseStore,
        holder: String,
        settings: LeaderLeaseSettings = LeaderLeaseSettings(),
        logger: Logger = Logger(label: "hangar.scheduler.lease")
    ) throws {
        if let problem = settings.problem {
            throw LeaderLeaseError.badSettings(problem)
        }
        self.store = store
        self.holder = holder
        self.machine = LeaderLeaseMachine(holder: holder, settings: settings)
        self.logger = logger
        (roles, continuation) = AsyncStream.makeStream(of: LeaderRoleChange.self, bufferingPolicy: .unbounded)
    }

    /// The role now.
    public var role: LeaderRole { published }
    /// The highest term read or written (a standby's view of the current term).
    public var highestTerm: UInt64 { machine.highestTerm }
    /// This process's holder id.
    public nonisolated let holder: String

    /// A holder id for this process: host name, process id and a random part.
    public static func makeHolderID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-"
            + UUID().uuidString.prefix(8).lowercased()
    }

    /// Keeps or seeks the lease until the task is cancelled.
    public func run() async {
        let clock = ContinuousClock()
        while !Task.isCancelled {
            let step = machine.next(at: clock.now)
            publish()
            switch step {
            case .read:
                do {
                    let entry = try await store.read()
                    machine.observed(
                        entry.map { .present(revision: $0.revision, record: LeaderRecord(decoding: $0.value)) }
                            ?? .absent,
                        at: clock.now
                    )
                } catch {
                    logger.debug("reading the leader lease failed", metadata: ["error": "\(error)"])
                    machine.readFailed(at: clock.now)
                }
            case .write(let write):
                let watchdog = startWatchdog(clock: clock)
                let result: Result<UInt64, KeyValueWriteError>
                do {
                    switch write {
                    case .create(let record):
                        result = .success(try await store.create(record.encoded()))
                    case .update(let record, let expected):
                        result = .success(try await store.update(record.encoded(), expectedRevision: expected))
                    }
                } catch {
                    result = .failure(error)
                }
                watchdog?.cancel()
                let now = clock.now
                switch result {
                case .success(let revision): machine.written(revision: revision, at: now)
                case .failure(.keyExists), .failure(.wrongRevision): machine.refused(at: now)
                case .failure(.failed(let error)):
                    logger.warning("writing the leader lease failed", metadata: ["error": "\(error)"])
                    machine.failed(at: now)
                }
            case .wait(let until):
                try? await clock.sleep(until: until)
            }
            publish()
        }
        if published != .standby {
            published = .standby
            continuation.yield(LeaderRoleChange(role: .standby, at: .now))
        }
        continuation.finish()
    }

    /// While a leader's write is out, steps it down at its deadline (the write may hang).
    private func startWatchdog(clock: ContinuousClock) -> Task<Void, Never>? {
        guard let deadline = machine.leaderDeadline else { return nil }
        return Task { [weak self] in
            do {
                try await clock.sleep(until: deadline)
            } catch {
                return
            }
            await self?.expire()
        }
    }

    private func expire() {
        machine.expire(at: .now)
        publish()
    }

    private func publish() {
        let role = machine.role
        if role.isLeader, let deadline = machine.leaderDeadline {
            leaseEnds = deadline
            let offset = epoch.duration(to: deadline).components
            leaseEndsNanoseconds.store(
                offset.seconds * 1_000_000_000 + offset.attoseconds / 1_000_000_000,
                ordering: .sequentiallyConsistent
            )
        } else if !role.isLeader {
            leaseEndsNanoseconds.store(Int64.min, ordering: .sequentiallyConsistent)
        }
        guard role != published else { return }
        let previous = published
        published = role
        logger.notice(
            "scheduler lease: \(previous) -> \(published)",
            metadata: ["holder": "\(machine.holder)", "term": "\(machine.highestTerm)"]
        )
        // A lapsed lease ended at its deadline by this process's clock, even when this runs later
        // (a starved or paused process): that instant is when it stopped being leader.
        let now = ContinuousClock.now
        let at = previous.isLeader && !role.isLeader ? min(now, leaseEnds ?? now) : now
        continuation.yield(LeaderRoleChange(role: published, at: at))
    }

    /// Whether this process holds the lease at `now` by its own clock: what a leader checks before
    /// it acts, so that one whose lease lapsed while it was starved (the step-down not yet run)
    /// does not act on it. Safe to call from any thread.
    public nonisolated func holds(at now: ContinuousClock.Instant = .now) -> Bool {
        let ends = leaseEndsNanoseconds.load(ordering: .sequentiallyConsistent)
        guard ends != Int64.min else { return false }
        return epoch.duration(to: now) < .nanoseconds(ends)
    }
}

/// A role change of a ``LeaderLease`` and when it happened on this process's monotonic clock.
public struct LeaderRoleChange: Sendable, Equatable {
    public let role: LeaderRole
    public let at: ContinuousClock.Instant

    /// A change to `role` at `at`.
    public init(role: LeaderRole, at: ContinuousClock.Instant) {
        self.role = role
        self.at = at
    }
}

/// A lease that cannot start.
public enum LeaderLeaseError: Error, CustomStringConvertible, Equatable {
    case badSettings(String)

    public var description: String {
        switch self {
        case .badSettings(let problem): "leader lease settings: \(problem)"
        }
    }
}
