import CoreMetrics
import GRDB
import HangarShared
import Synchronization

/// Batches store writes: callers queue operations; one writer drains the queue, applying all that
/// waited into a single transaction, and resumes every caller once it is committed. Under load a
/// transaction carries many operations; when idle each waits for nobody.
final class GroupCommitter: Sendable {
    /// Who hears about the commit: an awaiting caller, or a fire-and-forget callback.
    enum Completion: Sendable {
        /// `indirect`: a `CheckedContinuation`'s layout is the concurrency library's to change, and
        /// boxed it leaves this enum's layout known at compile time (see ``Moment``).
        indirect case continuation(CheckedContinuation<Void, any Error>)
        case callback(@Sendable ((any Error)?) -> Void)

        func resume() {
            switch self {
            case .continuation(let continuation): continuation.resume()
            case .callback(let callback): callback(nil)
            }
        }

        func resume(throwing error: any Error) {
            switch self {
            case .continuation(let continuation): continuation.resume(throwing: error)
            case .callback(let callback): callback(error)
            }
        }
    }

    private struct Pending {
        var operations: [(StoreWrite, Completion)] = []
        var draining = false
        /// A drain is due `linger` after deferrable writes were left waiting alone.
        var lingering = false
        /// Where in `operations` the last write that is not deferrable is (nil: there is none, so
        /// what waits may wait for company).
        var lastUrgent: Int?
        var transactions = 0
        var applied = 0
    }

    private enum DrainStart { case none, drain, linger }

    private let pool: DatabasePool
    private let state = Mutex(Pending())
    private let maxBatch = 2048
    /// How long deferrable writes (see ``enqueue(contentsOf:deferrable:)``) queued to an idle
    /// committer wait for another write to share a transaction with.
    let linger: Duration
    /// Set while this store leads a replicated log (`Store.lead`): each batch is appended to the
    /// log before it is applied. Read and advanced only by the drain.
    let logWriter = Mutex<StoreLogWriter?>(nil)
    /// The apply of the last entry appended (logged mode): the next one waits for it.
    private let pendingApply = Mutex<Task<Void, Never>?>(nil)

    init(pool: DatabasePool, linger: Duration = .milliseconds(5)) {
        self.pool = pool
        self.linger = linger
    }

    var statistics: (transactions: Int, operations: Int) {
        state.withLock { ($0.transactions, $0.applied) }
    }

    func submit(_ write: StoreWrite) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            enqueue(write, .continuation(continuation))
        }
    }

    /// Queues `write` now, in the caller's order, without waiting for the commit.
    func enqueue(_ write: StoreWrite, _ completion: Completion) {
        enqueue(contentsOf: CollectionOfOne((write, completion)))
    }

    /// Queues `writes` now, in their order and together: the drain never takes only some of them
    /// (unless more than `maxBatch` wait), so they share one transaction.
    ///
    /// `deferrable`: nobody waits for these writes soon (a placement round's records), so the
    /// committer does not start a transaction for them alone: they go with the next write that is
    /// not deferrable (a stream batch, usually within milliseconds under load), or after `linger`.
    /// Queue order is kept either way; only when the transaction starts changes.
    func enqueue(contentsOf writes: some Collection<(StoreWrite, Completion)>, deferrable: Bool = false) {
        guard !writes.isEmpty else { return }
        let next = state.withLock { state -> DrainStart in
            state.operations.append(contentsOf: writes)
            if !deferrable { state.lastUrgent = state.operations.count - 1 }
            if state.draining { return .none }
            if deferrable { return Self.lingerIfIdle(&state) }
            state.draining = true
            return .drain
        }
        start(next)
    }

    /// Arms the linger for deferrable writes left waiting alone, unless it is armed already.
    private static func lingerIfIdle(_ state: inout Pending) -> DrainStart {
        if state.lingering { return .none }
        state.lingering = true
        return .linger
    }

    private func start(_ start: DrainStart) {
        switch start {
        case .none: break
        case .drain: Task.detached { await self.drain() }
        case .linger:
            Task.detached {
                try? await Task.sleep(for: self.linger)
                let startDrain = self.state.withLock { state in
                    state.lingering = false
                    if state.draining || state.operations.isEmpty { return false }
                    state.draining = true
                    return true
                }
                if startDrain { await self.drain(takingDeferrable: true) }
            }
        }
    }

    /// Applies `operations` in one transaction. A batch that accepts a job commits with
    /// `synchronous = FULL` (the WAL is fsynced before the tenant hears `Accepted`, so a power
    /// loss cannot take back an acknowledged job); others with NORMAL (durable across a process
    /// crash; a power loss may lose the last results, which nodes resend until acknowledged).
    private static func commit(_ operations: [StoreWrite], in pool: DatabasePool) async throws {
        let full = operations.contains { $0.needsFullSync }
        try await pool.writeWithoutTransaction { db in
            if full { try db.cachedStatement(sql: "PRAGMA synchronous = FULL").execute() }
            defer { if full { try? db.cachedStatement(sql: "PRAGMA synchronous = NORMAL").execute() } }
            try db.inTransaction(.immediate) {
                var head: AuditChain.Head?
                let now = HangarShared.unixMilliseconds()
                for operation in operations { try operation.apply(db, audit: &head, now: now) }
                return .commit
            }
        }
    }

    /// Commits what waits, a transaction at a time, until nothing does, or only deferrable writes
    /// do (they linger for company then), unless `takingDeferrable` (the linger is over): then the
    /// first transaction takes them.
    private func drain(takingDeferrable: Bool = false) async {
        var takingDeferrable = takingDeferrable
        while true {
            var linger = DrainStart.none
            let batch: [(StoreWrite, Completion)] = state.withLock { state in
                guard !state.operations.isEmpty, takingDeferrable || state.lastUrgent != nil else {
                    state.draining = false
                    if !state.operations.isEmpty { linger = Self.lingerIfIdle(&state) }
                    return []
                }
                let count = min(state.operations.count, maxBatch)
                defer {
                    state.operations.removeFirst(count)
                    state.lastUrgent = state.lastUrgent.flatMap { $0 >= count ? $0 - count : nil }
                }
                return Array(state.operations.prefix(count))
            }
            takingDeferrable = false
            if batch.isEmpty {
                start(linger)
                return
            }
            if let writer = logWriter.withLock({ $0 }) {
                await commitLogged(batch, writer)
                continue
            }
            do {
                let started = ContinuousClock.now
                let operations = batch.map(\.0)
                try await Self.commit(operations, in: pool)
                CoreMetrics.Timer(label: "hangar_store_commit_seconds").recordNanoseconds(
                    started.duration(to: .now).nanoseconds
                )
                state.withLock {
                    $0.transactions += 1
                    $0.applied += batch.count
                }
                for (_, continuation) in batch { continuation.resume() }
            } catch {
                // One bad operation must not fail the others: retry each alone.
                for (operation, continuation) in batch {
                    do {
                        try await Self.commit([operation], in: pool)
                        state.withLock {
                            $0.transactions += 1
                            $0.applied += 1
                        }
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
            }
        }
    }

    /// Appends `batch` to the replicated log, then applies it; each caller hears its own write's
    /// outcome once its entry is applied. A batch too large for one log entry goes as several.
    ///
    /// Pipelined: entries are applied in order by a chain of tasks, one at a time, and the next
    /// entry is appended while the one before it is being applied (the append waits for a
    /// majority of the servers, the apply for the disk), so the two waits overlap.
    private func commitLogged(_ batch: [(StoreWrite, Completion)], _ writer: StoreLogWriter) async {
        let started = ContinuousClock.now
        let at = HangarShared.unixMilliseconds()
        if let deposed = writer.deposed {
            for (_, completion) in batch { completion.resume(throwing: deposed) }
            return
        }
        let (entries, refused) = writer.entries(for: batch.map(\.0), at: at)
        var settled = Set(refused.map(\.0))
        for (index, error) in refused { batch[index].1.resume(throwing: error) }
        var position = writer.position
        do {
            for (entry, indexes) in entries {
                let sequence = try await writer.append(entry, after: &position, committer: self)
                position = sequence
                logWriter.withLock { $0?.position = sequence }
                // The entry before this one is applied first (it may still be applying while this
                // one was appended).
                await awaitPendingApply()
                let writes = indexes.map { batch[$0].0 }
                let completions = indexes.map { batch[$0].1 }
                settled.formUnion(indexes)
                let term = writer.term
                let task = Task {
                    let outcomes = await self.applyLogged(term: term, at: at, writes: writes, sequence: sequence)
                    self.logWriter.withLock { $0?.applied = sequence }
                    for (completion, outcome) in zip(completions, outcomes) {
                        if let outcome { completion.resume(throwing: outcome) } else { completion.resume() }
                    }
                    self.state.withLock {
                        $0.transactions += 1
                        $0.applied += writes.count
                    }
                    CoreMetrics.Timer(label: "hangar_store_commit_seconds").recordNanoseconds(
                        started.duration(to: .now).nanoseconds
                    )
                }
                pendingApply.withLock { $0 = task }
            }
        } catch {
            // Not in the log (unreachable for too long, or deposed): the rest was not appended.
            for index in batch.indices where !settled.contains(index) { batch[index].1.resume(throwing: error) }
        }
    }

    /// Waits until the last entry handed to the apply chain is applied.
    func awaitPendingApply() async {
        let task = pendingApply.withLock { $0 }
        await task?.value
    }

    /// Applies log entry `sequence` (`writes` decoded from it), retrying while the database fails
    /// as a whole (a full disk, an I/O error): the entry is in the log already, so it must be
    /// applied before any later one. Returns each write's own outcome (nil: applied).
    func applyLogged(term: UInt64, at: Int64, writes: [StoreWrite], sequence: UInt64) async -> [(any Error)?] {
        var delay = Duration.milliseconds(100)
        while true {
            do {
                return try await Self.applyEntry(term: term, at: at, writes: writes, sequence: sequence, in: pool)
            } catch {
                CoreMetrics.Counter(label: "hangar_store_log_apply_failures_total").increment()
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// Applies one log entry in one transaction, with the store's log position, unless the store
    /// applied it already. A write that fails on its own (a constraint, an encoding) is undone
    /// alone and reported; any other failure undoes the whole entry and is thrown.
    static func applyEntry(
        term: UInt64,
        at: Int64,
        writes: [StoreWrite],
        sequence: UInt64,
        in pool: DatabasePool
    ) async throws -> [(any Error)?] {
        let full = writes.contains { $0.needsFullSync }
        return try await pool.writeWithoutTransaction { db in
            if full { try db.cachedStatement(sql: "PRAGMA synchronous = FULL").execute() }
            defer { if full { try? db.cachedStatement(sql: "PRAGMA synchronous = NORMAL").execute() } }
            do {
                return try apply(term: term, at: at, writes: writes, sequence: sequence, db: db, alone: false)
            } catch let error as DatabaseError where !error.isWriteOwnFailure {
                throw error
            } catch let error as StoreLogGapError {
                throw error
            } catch {
                return try apply(term: term, at: at, writes: writes, sequence: sequence, db: db, alone: true)
            }
        }
    }

    /// One try at an entry's transaction: all writes together (`alone` false: any failure throws),
    /// or each in a savepoint of its own (`alone`: a write's own failure is recorded).
    private static func apply(
        term: UInt64,
        at: Int64,
        writes: [StoreWrite],
        sequence: UInt64,
        db: Database,
        alone: Bool
    ) throws -> [(any Error)?] {
        var outcomes = [(any Error)?](repeating: nil, count: writes.count)
        try db.inTransaction(.immediate) {
            let applied = try StoreLogPosition.read(db)
            if applied.sequence >= sequence { return .commit }
            guard applied.sequence + 1 == sequence else {
                throw StoreLogGapError(needed: applied.sequence + 1, first: sequence)
            }
            var head: AuditChain.Head?
            for (index, write) in writes.enumerated() {
                if !alone {
                    try write.apply(db, audit: &head, now: at)
                    continue
                }
                do {
                    try db.inSavepoint {
                        try write.apply(db, audit: &head, now: at)
                        return .commit
                    }
                } catch let error as DatabaseError where !error.isWriteOwnFailure {
                    throw error
                } catch {
                    outcomes[index] = error
                    head = nil
                }
            }
            try StoreLogPosition.write(db, sequence: sequence, term: term)
            return .commit
        }
        return outcomes
    }
}

extension DatabaseError {
    /// A failure of the write itself (the same on every replica), not of the database.
    var isWriteOwnFailure: Bool { resultCode == .SQLITE_CONSTRAINT }
}
