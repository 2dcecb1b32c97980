import CoreMetrics
import GRDB
import Synchronization

/// Batches store writes: callers queue operations; one writer drains the queue, applying all that
/// waited into a single transaction, and resumes every caller once it is committed. Under load a
/// transaction carries many operations; when idle each waits for nobody.
final class GroupCommitter: Sendable {
    /// Who hears about the commit: an awaiting caller, or a fire-and-forget callback.
    enum Completion: Sendable {
        case continuation(CheckedContinuation<Void, any Error>)
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
        var transactions = 0
        var applied = 0
    }

    private let pool: DatabasePool
    private let state = Mutex(Pending())
    private let maxBatch = 2048

    init(pool: DatabasePool) {
        self.pool = pool
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
        let startDrain = state.withLock { state in
            state.operations.append((write, completion))
            if state.draining { return false }
            state.draining = true
            return true
        }
        if startDrain {
            Task.detached { await self.drain() }
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
                for operation in operations { try operation.apply(db, audit: &head) }
                return .commit
            }
        }
    }

    private func drain() async {
        while true {
            let batch: [(StoreWrite, Completion)] = state.withLock { state in
                guard !state.operations.isEmpty else {
                    state.draining = false
                    return []
                }
                let count = min(state.operations.count, maxBatch)
                defer { state.operations.removeFirst(count) }
                return Array(state.operations.prefix(count))
            }
            if batch.isEmpty { return }
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
}
