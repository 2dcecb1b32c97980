import Foundation
import GRDB
import HangarShared

extension Store {
    /// What the store knows of one job.
    public struct JobLookup: Sendable {
        public var tenant: String
        public var status: String
        public var result: Hangar_V1_Result?
    }

    /// The job `id`, with its result if it has finished.
    public func job(id: String) async throws -> JobLookup? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT tenant, status FROM jobs WHERE id = ?", arguments: [id])
            else {
                return nil
            }
            let blob = try Data.fetchOne(db, sql: "SELECT result FROM results WHERE job_id = ?", arguments: [id])
            return JobLookup(
                tenant: row["tenant"],
                status: row["status"],
                result: try blob.map { try Hangar_V1_Result(serializedBytes: $0) }
            )
        }
    }

    /// The job a tenant already submitted under `requestID`, if any.
    public func jobID(tenant: String, requestID: String) async throws -> String? {
        try await pool.read { db in
            try String.fetchOne(
                db,
                sql: "SELECT id FROM jobs WHERE tenant = ? AND request_id = ?",
                arguments: [tenant, requestID]
            )
        }
    }

    /// A job a previous scheduler process accepted and did not finish.
    public struct UnfinishedJob: Sendable {
        public var id: String
        public var tenant: String
        public var request: Hangar_V1_SubmitRequest
        /// The latest attempt, if one was placed: its number, node and whether it is still running.
        public var attempt: UInt32
        public var nodeID: String?
        public var running: Bool
    }

    /// Jobs left QUEUED or RUNNING, oldest first.
    public func unfinishedJobs() async throws -> [UnfinishedJob] {
        try await pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT j.id, j.tenant, j.request,
                        (SELECT MAX(attempt) FROM attempts a WHERE a.job_id = j.id) AS attempt,
                        (SELECT node_id FROM attempts a WHERE a.job_id = j.id ORDER BY attempt DESC LIMIT 1) AS node_id,
                        (SELECT status FROM attempts a WHERE a.job_id = j.id ORDER BY attempt DESC LIMIT 1) AS attempt_status
                    FROM jobs j WHERE j.status IN ('QUEUED', 'RUNNING') ORDER BY j.submitted_at
                    """
            )
            return try rows.map { row in
                let blob: Data? = row["request"]
                return UnfinishedJob(
                    id: row["id"],
                    tenant: row["tenant"],
                    request: try blob.map { try Hangar_V1_SubmitRequest(serializedBytes: $0) }
                        ?? Hangar_V1_SubmitRequest(),
                    attempt: UInt32(row["attempt"] as Int? ?? 0),
                    nodeID: row["node_id"],
                    running: (row["attempt_status"] as String?) == "RUNNING"
                )
            }
        }
    }

    /// Every node's operator settings.
    public func nodeControls() async throws -> [String: NodeControl] {
        try await pool.read { db in
            var controls: [String: NodeControl] = [:]
            for row in try Row.fetchAll(
                db,
                sql: "SELECT node_id, eligible, draining, drain_deadline FROM node_controls"
            ) {
                controls[row["node_id"]] = NodeControl(
                    eligible: row["eligible"],
                    draining: row["draining"],
                    drainDeadline: row["drain_deadline"]
                )
            }
            return controls
        }
    }

    /// Audit events in order, optionally for one job (for operators and tests).
    public func auditEvents(jobID: String? = nil) async throws -> [(actor: String, event: String, detail: String)] {
        try await pool.read { db in
            let rows: [Row]
            if let jobID {
                rows = try Row.fetchAll(
                    db,
                    sql: "SELECT actor, event, detail FROM audit WHERE job_id = ? ORDER BY seq",
                    arguments: [jobID]
                )
            } else {
                rows = try Row.fetchAll(db, sql: "SELECT actor, event, detail FROM audit ORDER BY seq")
            }
            return rows.map { (actor: $0["actor"], event: $0["event"], detail: $0["detail"]) }
        }
    }

    /// Checks the audit hash chain: rows checked, the first row that fails (nil if none), head hash.
    /// `verifyAudit` as `hangar audit verify` reports it.
    public func auditVerification() async throws -> Hangar_V1_AuditReply {
        var reply = Hangar_V1_AuditReply()
        let (checked, firstBad, head) = try await verifyAudit()
        reply.rowsChecked = checked
        if let firstBad {
            reply.firstBadSeq = firstBad
            reply.message =
                "audit chain broken at row \(firstBad): that row was edited or moved, or the row before it was deleted"
        } else {
            reply.verified = true
            reply.message = "audit chain intact: \(checked) rows, head \(head)"
        }
        return reply
    }

    public func verifyAudit() async throws -> (checked: Int64, firstBad: Int64?, head: String) {
        try await pool.read { db in try AuditChain.verify(db) }
    }

    /// Audit rows, newest last, filtered by tenant (actor or the job's tenant), job and time.
    public func auditRows(
        tenant: String?,
        jobID: String?,
        sinceMs: Int64,
        limit: Int
    ) async throws -> [Hangar_V1_AuditEvent] {
        try await pool.read { db in
            var clauses = ["at >= ?"]
            var arguments: [any DatabaseValueConvertible] = [sinceMs]
            if let jobID {
                clauses.append("job_id = ?")
                arguments.append(jobID)
            }
            if let tenant {
                clauses.append("(actor = ? OR job_id IN (SELECT id FROM jobs WHERE tenant = ?))")
                arguments.append("tenant:\(tenant)")
                arguments.append(tenant)
            }
            let sql = """
                SELECT * FROM (SELECT seq, at, actor, event, job_id, detail, hash FROM audit
                WHERE \(clauses.joined(separator: " AND ")) ORDER BY seq DESC LIMIT ?) ORDER BY seq
                """
            arguments.append(limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map { row in
                var event = Hangar_V1_AuditEvent()
                event.seq = row["seq"]
                event.atMs = row["at"]
                event.actor = row["actor"]
                event.event = row["event"]
                event.jobID = row["job_id"] ?? ""
                event.detail = row["detail"]
                event.hash = row["hash"]
                return event
            }
        }
    }

    /// Counts rows of a table (for tests and operators).
    public func count(_ table: String) async throws -> Int {
        precondition(["jobs", "attempts", "results", "audit"].contains(table), "unknown table \(table)")
        return try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0 }
    }
}
