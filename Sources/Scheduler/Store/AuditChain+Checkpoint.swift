import GRDB

/// Retention for the audit chain: rows up to a checkpoint may be pruned. The checkpoint keeps the
/// seq and hash of the last pruned row, so `verify` starts from it; the pruning is itself an audit
/// row (`audit.pruned`) naming that seq and hash, so moving the checkpoint to hide more deletions
/// is detected.
extension AuditChain {
    struct Checkpoint {
        var seq: Int64
        var hash: String
    }

    /// Creates the checkpoint table and lets the delete trigger allow only rows up to it.
    static func createCheckpoint(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE audit_checkpoint (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    seq INTEGER NOT NULL,
                    hash TEXT NOT NULL,
                    at INTEGER NOT NULL
                );
                DROP TRIGGER audit_no_delete;
                CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                    WHEN OLD.seq > COALESCE((SELECT seq FROM audit_checkpoint WHERE id = 1), 0)
                    BEGIN SELECT RAISE(ABORT, 'the audit table is append-only (only rows up to the retention checkpoint may be pruned)'); END;
                """
        )
    }

    static func checkpoint(_ db: Database) throws -> Checkpoint? {
        try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_checkpoint WHERE id = 1").map {
            Checkpoint(seq: $0["seq"], hash: $0["hash"])
        }
    }

    /// The start of the `audit.pruned` row's detail for a checkpoint.
    static func pruneRecord(seq: Int64, hash: String) -> String {
        "pruned through seq \(seq), checkpoint hash \(hash)"
    }

    /// Deletes the rows written before `cutoff` (unix ms), oldest first and never past a newer row,
    /// moves the checkpoint to the last of them and records the pruning. Returns the rows deleted.
    static func prune(_ db: Database, before cutoff: Int64, now: Int64) throws -> Int {
        // The oldest row at or after the cutoff bounds the range: rows behind it are all older.
        let firstKept = try Int64.fetchOne(db, sql: "SELECT MIN(seq) FROM audit WHERE at >= ?", arguments: [cutoff])
        let newest = try Int64.fetchOne(db, sql: "SELECT MAX(seq) FROM audit") ?? 0
        let bound = firstKept.map { $0 - 1 } ?? newest
        guard
            let last = try Row.fetchOne(
                db,
                sql: "SELECT seq, hash FROM audit WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                arguments: [bound]
            )
        else { return 0 }
        let seq: Int64 = last["seq"]
        let hash: String = last["hash"]
        try db.execute(
            sql: """
                INSERT INTO audit_checkpoint (id, seq, hash, at) VALUES (1, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at
                """,
            arguments: [seq, hash, now]
        )
        try db.execute(sql: "DELETE FROM audit WHERE seq <= ?", arguments: [seq])
        let deleted = db.changesCount
        try append(
            db,
            at: now,
            actor: "scheduler",
            event: "audit.pruned",
            jobID: nil,
            detail: pruneRecord(seq: seq, hash: hash) + ", \(deleted) rows older than \(cutoff) ms"
        )
        return deleted
    }
}
