import Foundation
import GRDB
import HangarShared

extension Store {
    /// The newest `limit` jobs (of `tenant`, if given), newest first, with their latest attempt.
    public func recentJobs(tenant: String?, limit: Int) async throws -> [Hangar_V1_JobSummary] {
        try await pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT j.id, j.tenant, j.status, j.runtime, j.submitted_at,
                        r.exit_code, r.finished_at,
                        (SELECT node_id FROM attempts a WHERE a.job_id = j.id ORDER BY attempt DESC LIMIT 1) AS node_id,
                        (SELECT MAX(attempt) FROM attempts a WHERE a.job_id = j.id) AS attempt
                    FROM jobs j LEFT JOIN results r ON r.job_id = j.id
                    WHERE (? IS NULL OR j.tenant = ?)
                    ORDER BY j.submitted_at DESC, j.id DESC
                    LIMIT ?
                    """,
                arguments: [tenant, tenant, limit]
            )
            return rows.map { row in
                var job = Hangar_V1_JobSummary()
                job.jobID = row["id"]
                job.tenant = row["tenant"]
                job.status = row["status"]
                job.runtime = row["runtime"]
                job.submittedAtMs = row["submitted_at"]
                job.exitCode = row["exit_code"] ?? 0
                job.finishedAtMs = row["finished_at"] ?? 0
                job.nodeID = row["node_id"] ?? ""
                job.attempt = row["attempt"] ?? 0
                return job
            }
        }
    }
}
