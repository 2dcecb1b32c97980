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

    /// Counts rows of a table (for tests and operators).
    public func count(_ table: String) async throws -> Int {
        precondition(["jobs", "attempts", "results", "audit"].contains(table), "unknown table \(table)")
        return try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0 }
    }
}
