import Foundation
import GRDB
import HangarShared
import Synchronization

/// The scheduler's SQLite store (WAL, through GRDB): jobs, attempts, results and an append-only audit.
/// Writes go through group commit: many operations share one transaction.
public final class Store: Sendable {
    let pool: DatabasePool
    let committer: GroupCommitter

    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    /// `linger`: how long writes queued as deferrable wait for company (see ``queue(_:deferrable:)``).
    public init(path: String, linger: Duration = .milliseconds(5)) throws {
        var configuration = Configuration()
        configuration.label = "hangar.store"
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        // Two schedulers sharing one new file migrate it at once: the slower one's migration
        // fails ("table … already exists") and is rolled back; once the faster one has committed,
        // the migrator sees every migration applied. A lock the busy timeout cannot wait out (two
        // transactions upgrading to write at once) is tried again the same way.
        var tries = 0
        while true {
            do {
                try Self.migrator.migrate(pool)
                break
            } catch let error as DatabaseError
                where [.SQLITE_ERROR, .SQLITE_BUSY].contains(error.resultCode) && tries < 50
            {
                tries += 1
                usleep(100_000)
            }
        }
        committer = GroupCommitter(pool: pool, linger: linger)
    }

    /// Applies `write` in the next group-committed transaction; returns once it is committed.
    public func write(_ write: StoreWrite) async throws {
        try await committer.submit(write)
    }

    /// Queues `write` for the next group commit without waiting for it. Writes queued this way and
    /// with `write(_:)` are applied in the order they were queued; `onError` hears of a failure.
    public func enqueue(_ write: StoreWrite, onError: @escaping @Sendable (any Error) -> Void) {
        committer.enqueue(write, .callback({ error in if let error { onError(error) } }))
    }

    /// Queues `write` for the next group commit without waiting for it; `completion` hears the
    /// outcome (nil: committed) on the committer's thread.
    public func queue(_ write: StoreWrite, whenCommitted completion: @escaping @Sendable ((any Error)?) -> Void) {
        committer.enqueue(write, .callback(completion))
    }

    /// Queues `writes` for the next group commit together (they share its transaction), without
    /// waiting for it; each one's completion hears its outcome (nil: committed) on the committer's
    /// thread. `deferrable`: nobody waits for them soon, so an idle store does not commit them alone
    /// at once but with the next write queued, or after a few milliseconds (see
    /// `GroupCommitter.enqueue(contentsOf:deferrable:)`).
    public func queue(
        _ writes: [(StoreWrite, whenCommitted: @Sendable ((any Error)?) -> Void)],
        deferrable: Bool = false
    ) {
        committer.enqueue(contentsOf: writes.lazy.map { ($0.0, .callback($0.whenCommitted)) }, deferrable: deferrable)
    }

    /// Returns once every write queued before this call is committed (or has failed), synced to
    /// disk: what a stopping scheduler awaits so that nothing it queued is lost when it exits.
    public func flush() async throws {
        try await committer.submit(.streamBatch([]))
    }

    /// Transactions committed so far and operations they carried (for tests and metrics).
    public var commitStatistics: (transactions: Int, operations: Int) { committer.statistics }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE jobs (
                        id TEXT PRIMARY KEY,
                        tenant TEXT NOT NULL,
                        request_id TEXT,
                        runtime TEXT NOT NULL,
                        template TEXT NOT NULL,
                        priority INTEGER NOT NULL,
                        status TEXT NOT NULL,
                        spec BLOB NOT NULL,
                        submitted_at INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL
                    );
                    CREATE UNIQUE INDEX jobs_tenant_request ON jobs(tenant, request_id) WHERE request_id IS NOT NULL;
                    CREATE INDEX jobs_status ON jobs(status);
                    CREATE TABLE attempts (
                        job_id TEXT NOT NULL REFERENCES jobs(id),
                        attempt INTEGER NOT NULL,
                        node_id TEXT NOT NULL,
                        status TEXT NOT NULL,
                        placed_at INTEGER NOT NULL,
                        finished_at INTEGER,
                        PRIMARY KEY (job_id, attempt)
                    );
                    CREATE TABLE results (
                        job_id TEXT PRIMARY KEY REFERENCES jobs(id),
                        tenant TEXT NOT NULL,
                        status TEXT NOT NULL,
                        exit_code INTEGER NOT NULL,
                        result BLOB NOT NULL,
                        finished_at INTEGER NOT NULL
                    );
                    CREATE TABLE audit (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        at INTEGER NOT NULL,
                        actor TEXT NOT NULL,
                        event TEXT NOT NULL,
                        job_id TEXT,
                        detail TEXT NOT NULL DEFAULT ''
                    );
                    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                        BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
                    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                        BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
                    """
            )
        }
        migrator.registerMigration("v2-node-controls") { db in
            try db.execute(
                sql: """
                    CREATE TABLE node_controls (
                        node_id TEXT PRIMARY KEY,
                        eligible INTEGER NOT NULL,
                        draining INTEGER NOT NULL,
                        drain_deadline INTEGER NOT NULL,
                        updated_by TEXT NOT NULL,
                        updated_at INTEGER NOT NULL
                    );
                    """
            )
        }
        migrator.registerMigration("v3-audit-chain") { db in
            try db.execute(sql: "ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT ''")
            try db.execute(sql: "DROP TRIGGER audit_no_update")
            var previous = AuditChain.genesis
            for row in try Row.fetchAll(db, sql: "SELECT seq, at, actor, event, job_id, detail FROM audit ORDER BY seq")
            {
                let hash = AuditChain.hash(
                    previous: previous,
                    canonical: AuditChain.canonical(
                        seq: row["seq"],
                        at: row["at"],
                        actor: row["actor"],
                        event: row["event"],
                        jobID: row["job_id"],
                        detail: row["detail"]
                    )
                )
                try db.execute(sql: "UPDATE audit SET hash = ? WHERE seq = ?", arguments: [hash, row["seq"] as Int64])
                previous = hash
            }
            try db.execute(
                sql: """
                    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                        BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
                    """
            )
        }
        migrator.registerMigration("v4-job-request") { db in
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN request BLOB")
        }
        migrator.registerMigration("v5-audit-checkpoint") { db in
            try AuditChain.createCheckpoint(db)
        }
        migrator.registerMigration("v6-sandboxes") { db in
            try SandboxWrite.createTable(db)
        }
        migrator.registerMigration("v7-api-keys") { db in
            try APIKeyWrite.createTable(db)
        }
        migrator.registerMigration("v8-store-log") { db in
            try StoreLogPosition.createTable(db)
        }
        return migrator
    }
}

/// An operator's settings for one node.
public struct NodeControl: Sendable, Equatable {
    public var eligible = true
    public var draining = false
    /// Unix ms; 0 = no deadline.
    public var drainDeadline: Int64 = 0

    public init(eligible: Bool = true, draining: Bool = false, drainDeadline: Int64 = 0) {
        self.eligible = eligible
        self.draining = draining
        self.drainDeadline = drainDeadline
    }
}

/// One change to the store. Each case also appends its audit event.
public enum StoreWrite: Sendable {
    /// A job was accepted.
    case jobAccepted(StoredJob)
    /// A job was refused after it had been accepted (e.g. no capacity within the queue timeout).
    /// An attempt was placed on a node.
    case attemptPlaced(jobID: String, attempt: UInt32, nodeID: String, at: Int64)
    /// An attempt ended without a result (refused by the node, or no answer).
    case attemptEnded(jobID: String, attempt: UInt32, status: String, detail: String)
    /// The job reached its terminal result (`encoded`: the result serialized, as stored).
    case jobFinished(Hangar_V1_Result, encoded: Data)
    /// An operator changed a node's eligibility or drain.
    case nodeControl(nodeID: String, control: NodeControl, actor: String, event: String)
    /// Any other audit event.
    case audit(actor: String, event: String, jobID: String?, detail: String)
    /// A result arrived for an attempt that is not current; kept in the audit only.
    case staleResult(jobID: String, attempt: UInt32, nodeID: String, status: String)
    /// A job taken from the intake stream: inserted and audited as accepted unless its id, or its
    /// tenant and request id, is already stored (a redelivery), so replays insert nothing.
    case intake(StoredJob)
    /// A stateful sandbox's state change (table `sandboxes`, audited).
    case sandbox(SandboxWrite)
    /// An E2B gateway API key was created or revoked (table `api_keys`, audited).
    case apiKey(APIKeyWrite)
    /// Writes taken from a stream in one batch: one transaction, synced to disk before it returns
    /// (the stream messages are acknowledged, and so deleted, right after).
    case streamBatch([StoreWrite])
    /// Retention: deletes stored results of jobs that finished before `before` (unix ms) and
    /// audit rows written before it, behind a checkpoint; `tally` hears what was removed.
    case prune(before: Int64, tally: PruneTally)
}

/// What one `prune` write removed, filled in when it is applied.
public final class PruneTally: Sendable {
    private let counts = Mutex(Store.Pruned(results: 0, auditRows: 0))

    /// An empty tally.
    public init() {}

    /// The rows the prune removed (zero until it is applied).
    public var pruned: Store.Pruned { counts.withLock { $0 } }

    func record(_ pruned: Store.Pruned) { counts.withLock { $0 = pruned } }
}

/// A job as the store keeps it.
public struct StoredJob: Sendable {
    public var id: String
    public var tenant: String
    public var requestID: String?
    public var spec: Hangar_V1_JobSpec
    public var priority: Int32
    public var submittedAt: Int64
    /// The tenant's request as submitted, so a restarted scheduler can queue the job again.
    public var request = Hangar_V1_SubmitRequest()
    /// `request` already serialized, when at hand: written as is instead of encoding it again.
    public var requestData: Data?
    /// `spec` already serialized (a replica applying the log writes the leader's bytes).
    public var specData: Data?

    public init(
        id: String,
        tenant: String,
        requestID: String?,
        spec: Hangar_V1_JobSpec,
        priority: Int32,
        submittedAt: Int64
    ) {
        self.id = id
        self.tenant = tenant
        self.requestID = requestID
        self.spec = spec
        self.priority = priority
        self.submittedAt = submittedAt
    }
}

extension StoreWrite {
    /// Whether the commit must reach the disk before returning (an acceptance the tenant is told of).
    var needsFullSync: Bool {
        switch self {
        case .jobAccepted, .intake, .streamBatch, .sandbox(.created): true
        default: false
        }
    }

    /// Whether this is an attempt's placement record (deferrable; see `Store.queue(_:deferrable:)`).
    var isAttemptPlaced: Bool {
        if case .attemptPlaced = self { return true }
        return false
    }

    /// Applies the change in the current transaction; `audit` is the audit chain's head within it
    /// (nil: not read yet); `now` (unix ms) is the time its rows record, the same for every write
    /// of a transaction, so that a replica applying the same log entry writes the same rows.
    func apply(_ db: Database, audit head: inout AuditChain.Head?, now: Int64) throws {
        switch self {
        case .jobAccepted(let job):
            try db.cachedStatement(
                sql: """
                    INSERT INTO jobs (id, tenant, request_id, runtime, template, priority, status, spec, submitted_at,
                        updated_at, request)
                    VALUES (?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                job.id, job.tenant, job.requestID, job.spec.runtime, job.spec.template, Int(job.priority),
                try job.specData ?? job.spec.serializedData(), job.submittedAt, now,
                try job.requestData ?? job.request.serializedData(),
            ])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "tenant:\(job.tenant)",
                event: "job.accepted",
                jobID: job.id,
                detail: job.spec.runtime
            )
        case .attemptPlaced(let jobID, let attempt, let nodeID, let at):
            try db.cachedStatement(
                sql: "INSERT INTO attempts (job_id, attempt, node_id, status, placed_at) VALUES (?, ?, ?, 'RUNNING', ?)"
            ).execute(arguments: [jobID, Int(attempt), nodeID, at])
            try db.cachedStatement(sql: "UPDATE jobs SET status = 'RUNNING', updated_at = ? WHERE id = ?").execute(
                arguments: [now, jobID])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "scheduler",
                event: "attempt.placed",
                jobID: jobID,
                detail: "attempt \(attempt) on \(nodeID)"
            )
        case .attemptEnded(let jobID, let attempt, let status, let detail):
            try db.cachedStatement(
                sql: "UPDATE attempts SET status = ?, finished_at = ? WHERE job_id = ? AND attempt = ?"
            ).execute(arguments: [status, now, jobID, Int(attempt)])
            try db.cachedStatement(sql: "UPDATE jobs SET status = 'QUEUED', updated_at = ? WHERE id = ?").execute(
                arguments: [now, jobID])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "scheduler",
                event: "attempt.ended",
                jobID: jobID,
                detail: "attempt \(attempt) \(status): \(detail)"
            )
        case .jobFinished(let result, let encoded):
            let status = result.status.displayName
            try db.cachedStatement(
                sql: "UPDATE attempts SET status = ?, finished_at = ? WHERE job_id = ? AND attempt = ?"
            ).execute(arguments: [status, now, result.jobID, Int(result.attempt)])
            try db.cachedStatement(sql: "UPDATE jobs SET status = ?, updated_at = ? WHERE id = ?").execute(arguments: [
                status, now, result.jobID,
            ])
            try insertResult(db, result, encoded: encoded)
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: result.nodeID.isEmpty ? "scheduler" : "node:\(result.nodeID)",
                event: "job.finished",
                jobID: result.jobID,
                detail: status
            )
        case .nodeControl(let nodeID, let control, let actor, let event):
            try db.cachedStatement(
                sql: """
                    INSERT INTO node_controls (node_id, eligible, draining, drain_deadline, updated_by, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(node_id) DO UPDATE SET eligible = excluded.eligible, draining = excluded.draining,
                        drain_deadline = excluded.drain_deadline, updated_by = excluded.updated_by,
                        updated_at = excluded.updated_at
                    """
            ).execute(arguments: [nodeID, control.eligible, control.draining, control.drainDeadline, actor, now])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: actor,
                event: event,
                jobID: nil,
                detail:
                    "\(nodeID) eligible=\(control.eligible) draining=\(control.draining) deadline=\(control.drainDeadline)"
            )
        case .audit(let actor, let event, let jobID, let detail):
            try AuditChain.append(db, head: &head, at: now, actor: actor, event: event, jobID: jobID, detail: detail)
        case .intake(let job):
            try db.cachedStatement(
                sql: """
                    INSERT INTO jobs (id, tenant, request_id, runtime, template, priority, status, spec, submitted_at,
                        updated_at, request)
                    VALUES (?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?)
                    ON CONFLICT DO NOTHING
                    """
            ).execute(arguments: [
                job.id, job.tenant, job.requestID, job.spec.runtime, job.spec.template, Int(job.priority),
                try job.specData ?? job.spec.serializedData(), job.submittedAt, now,
                try job.requestData ?? job.request.serializedData(),
            ])
            guard db.changesCount > 0 else { return }
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "tenant:\(job.tenant)",
                event: "job.accepted",
                jobID: job.id,
                detail: job.spec.runtime
            )
        case .streamBatch(let writes):
            for write in writes { try write.apply(db, audit: &head, now: now) }
        case .sandbox(let write):
            try write.apply(db, audit: &head, now: now)
        case .apiKey(let write):
            try write.apply(db, audit: &head, now: now)
        case .prune(let cutoff, let tally):
            try db.cachedStatement(sql: "DELETE FROM results WHERE finished_at < ?").execute(arguments: [cutoff])
            let results = db.changesCount
            let audit = try AuditChain.prune(db, before: cutoff, now: now)
            // The prune appended its own row: the next append of this transaction reads the head afresh.
            head = nil
            tally.record(Store.Pruned(results: results, auditRows: audit))
        case .staleResult(let jobID, let attempt, let nodeID, let status):
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "node:\(nodeID)",
                event: "result.late",
                jobID: jobID,
                detail: "attempt \(attempt) reported \(status) but is not the current attempt; ignored"
            )
        }
    }

    /// Stores `result`; `encoded` is it serialized, if it already was.
    private func insertResult(_ db: Database, _ result: Hangar_V1_Result, encoded: Data? = nil) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO results (job_id, tenant, status, exit_code, result, finished_at) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT(job_id) DO NOTHING
                """
        ).execute(arguments: [
            result.jobID, result.tenant, result.status.displayName, Int(result.exitCode),
            try encoded ?? result.serializedData(), result.finishedAtMs,
        ])
    }
}
