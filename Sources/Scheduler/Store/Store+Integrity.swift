import GRDB

extension Store {
    /// `PRAGMA integrity_check`: `["ok"]` for a sound database, otherwise SQLite's list of problems.
    public func integrityCheck() async throws -> [String] {
        try await pool.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
    }

    /// How many `job.finished` audit rows each job has (more than one means a job finished twice).
    public func finishedEventCounts() async throws -> [String: Int] {
        try await pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT job_id, COUNT(*) AS n FROM audit WHERE event = 'job.finished' GROUP BY job_id"
            )
            var counts: [String: Int] = [:]
            for row in rows {
                if let id: String = row["job_id"] { counts[id] = row["n"] }
            }
            return counts
        }
    }
}
