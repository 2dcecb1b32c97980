import Foundation
import GRDB
import HangarShared

/// A stateful sandbox as the store keeps it (table `sandboxes`): what the tenant asked for
/// (resolved), where it runs, and how it ended. Its id is in the audit rows' `job_id` column.
public struct StoredSandbox: Sendable, Equatable {
    /// Its id (`s` + a job-id-like sortable suffix), a valid NATS token.
    public var id: String
    /// The tenant that created it (from the subject it came on).
    public var tenant: String
    /// The tenant's idempotency key, if it gave one.
    public var requestID: String?
    /// The create request as admitted: runtime, template, limits resolved, timeout set.
    public var request: Hangar_V1_SandboxCreateRequest
    /// STARTING until its node runs it, RUNNING, then ENDED with `endReason` and `message`.
    public var state: Hangar_V1_SandboxState = .sandboxStarting
    public var endReason: Hangar_V1_SandboxEndReason = .unspecified
    public var message = ""
    /// The node it was placed on (empty until placed).
    public var nodeID = ""
    /// Unix milliseconds: when it was created, when its timeout passes, when it ended.
    public var createdAtMs: Int64
    public var endsAtMs: Int64 = 0
    public var endedAtMs: Int64 = 0
    /// The `seq` of its last lifecycle event (the next one gets this plus one).
    public var eventSeq: UInt64 = 0
    /// `request` already serialized (a replica applying the log writes the leader's bytes).
    public var requestData: Data?

    /// A sandbox just admitted.
    public init(
        id: String,
        tenant: String,
        requestID: String?,
        request: Hangar_V1_SandboxCreateRequest,
        createdAtMs: Int64
    ) {
        self.id = id
        self.tenant = tenant
        self.requestID = requestID
        self.request = request
        self.createdAtMs = createdAtMs
    }

    /// What the tenant sees of it.
    public var info: Hangar_V1_SandboxInfo {
        var info = Hangar_V1_SandboxInfo()
        info.id = id
        info.tenant = tenant
        info.state = state
        info.endReason = endReason
        info.message = message
        info.nodeID = nodeID
        info.runtime = request.runtime
        info.template = request.template
        info.metadata = request.metadata
        info.createdAtMs = createdAtMs
        info.endsAtMs = state == .sandboxEnded ? 0 : endsAtMs
        info.endedAtMs = endedAtMs
        info.limits = request.limits
        info.requestID = requestID ?? ""
        return info
    }
}

/// One state change of a sandbox; each also appends its audit event.
public enum SandboxWrite: Sendable {
    /// Admitted (audit `sandbox.created`).
    case created(StoredSandbox)
    /// Placed on a node, being started there (audit `sandbox.placed`).
    case placed(id: String, nodeID: String, eventSeq: UInt64)
    /// Running on its node until `endsAtMs` (audit `sandbox.started`).
    case started(id: String, nodeID: String, endsAtMs: Int64, eventSeq: UInt64)
    /// Its timeout was set again (audit `sandbox.timeout_set`).
    case timeoutSet(id: String, endsAtMs: Int64, eventSeq: UInt64)
    /// Ended (audit `sandbox.ended` with the reason).
    case ended(id: String, reason: Hangar_V1_SandboxEndReason, nodeID: String?, message: String, eventSeq: UInt64)

    func apply(_ db: Database, audit head: inout AuditChain.Head?, now: Int64) throws {
        switch self {
        case .created(let sandbox):
            try db.cachedStatement(
                sql: """
                    INSERT INTO sandboxes (id, tenant, request_id, runtime, template, state, end_reason, message,
                        node_id, request, created_at, ends_at, ended_at, event_seq, updated_at)
                    VALUES (?, ?, ?, ?, ?, 'STARTING', '', '', '', ?, ?, 0, 0, ?, ?)
                    ON CONFLICT DO NOTHING
                    """
            ).execute(arguments: [
                sandbox.id, sandbox.tenant, sandbox.requestID, sandbox.request.runtime, sandbox.request.template,
                try sandbox.requestData ?? sandbox.request.serializedData(), sandbox.createdAtMs,
                Int64(sandbox.eventSeq), now,
            ])
            guard db.changesCount > 0 else { return }
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "tenant:\(sandbox.tenant)",
                event: "sandbox.created",
                jobID: sandbox.id,
                detail: "sandbox \(sandbox.request.runtime)/\(sandbox.request.template)"
            )
        case .placed(let id, let nodeID, let eventSeq):
            try db.cachedStatement(
                sql: "UPDATE sandboxes SET node_id = ?, event_seq = MAX(event_seq, ?), updated_at = ? WHERE id = ?"
            ).execute(arguments: [nodeID, Int64(eventSeq), now, id])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "scheduler",
                event: "sandbox.placed",
                jobID: id,
                detail: "sandbox on \(nodeID)"
            )
        case .started(let id, let nodeID, let endsAtMs, let eventSeq):
            try db.cachedStatement(
                sql: """
                    UPDATE sandboxes SET state = 'RUNNING', node_id = ?, ends_at = ?, event_seq = MAX(event_seq, ?),
                        updated_at = ? WHERE id = ? AND state != 'ENDED'
                    """
            ).execute(arguments: [nodeID, endsAtMs, Int64(eventSeq), now, id])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "node:\(nodeID)",
                event: "sandbox.started",
                jobID: id,
                detail: "sandbox running on \(nodeID)"
            )
        case .timeoutSet(let id, let endsAtMs, let eventSeq):
            try db.cachedStatement(
                sql: """
                    UPDATE sandboxes SET ends_at = ?, event_seq = MAX(event_seq, ?), updated_at = ?
                    WHERE id = ? AND state != 'ENDED'
                    """
            ).execute(arguments: [endsAtMs, Int64(eventSeq), now, id])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: "scheduler",
                event: "sandbox.timeout_set",
                jobID: id,
                detail: "sandbox ends at \(endsAtMs) (unix ms)"
            )
        case .ended(let id, let reason, let nodeID, let message, let eventSeq):
            try db.cachedStatement(
                sql: """
                    UPDATE sandboxes SET state = 'ENDED', end_reason = ?, message = ?, node_id = COALESCE(?, node_id),
                        ended_at = ?, event_seq = MAX(event_seq, ?), updated_at = ? WHERE id = ?
                    """
            ).execute(arguments: [reason.displayName, message, nodeID, now, Int64(eventSeq), now, id])
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: nodeID.map { "node:\($0)" } ?? "scheduler",
                event: "sandbox.ended",
                jobID: id,
                detail: "\(reason.displayName): \(message)"
            )
        }
    }

    static func createTable(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE sandboxes (
                    id TEXT PRIMARY KEY,
                    tenant TEXT NOT NULL,
                    request_id TEXT,
                    runtime TEXT NOT NULL,
                    template TEXT NOT NULL,
                    state TEXT NOT NULL,
                    end_reason TEXT NOT NULL,
                    message TEXT NOT NULL,
                    node_id TEXT NOT NULL,
                    request BLOB NOT NULL,
                    created_at INTEGER NOT NULL,
                    ends_at INTEGER NOT NULL,
                    ended_at INTEGER NOT NULL,
                    event_seq INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL
                );
                CREATE UNIQUE INDEX sandboxes_tenant_request ON sandboxes(tenant, request_id)
                    WHERE request_id IS NOT NULL;
                CREATE INDEX sandboxes_tenant_created ON sandboxes(tenant, created_at);
                CREATE INDEX sandboxes_state ON sandboxes(state);
                """
        )
    }
}

extension StoreWrite {
    /// Its node restarted and re-adopted it (audit `sandbox.readopted`, by the node): its row does
    /// not change (still RUNNING there, the same timeout), and no tenant event is published.
    public static func sandboxReadopted(id: String, nodeID: String) -> StoreWrite {
        .audit(
            actor: "node:\(nodeID)",
            event: "sandbox.readopted",
            jobID: id,
            detail: "sandbox re-adopted by \(nodeID) after its restart"
        )
    }
}

extension Hangar_V1_SandboxEndReason {
    /// The name stored and audited: `KILLED`, `TIMED_OUT`, `LOST`, `FAILED`, `DIED`.
    public var displayName: String {
        switch self {
        case .sandboxKilled: "KILLED"
        case .sandboxTimedOut: "TIMED_OUT"
        case .sandboxLost: "LOST"
        case .sandboxFailed: "FAILED"
        case .sandboxDied: "DIED"
        default: ""
        }
    }

    /// The reason stored as `name` (``displayName``).
    init(storedName name: String) {
        self =
            [.sandboxKilled, .sandboxTimedOut, .sandboxLost, .sandboxFailed, .sandboxDied].first {
                $0.displayName == name
            } ?? .unspecified
    }
}

extension Store {
    /// The sandbox `id`, if stored.
    public func sandbox(id: String) async throws -> StoredSandbox? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM sandboxes WHERE id = ?", arguments: [id]).map(Self.sandbox(from:))
        }
    }

    /// The sandbox a tenant already created under `requestID`, if any.
    public func sandbox(tenant: String, requestID: String) async throws -> StoredSandbox? {
        try await pool.read { db in
            try Row.fetchOne(
                db,
                sql: "SELECT * FROM sandboxes WHERE tenant = ? AND request_id = ?",
                arguments: [tenant, requestID]
            ).map(Self.sandbox(from:))
        }
    }

    /// Sandboxes not ended (a previous scheduler process's, after a restart), oldest first.
    public func liveSandboxes() async throws -> [StoredSandbox] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM sandboxes WHERE state != 'ENDED' ORDER BY created_at, id")
                .map(Self.sandbox(from:))
        }
    }

    /// A tenant's ended sandboxes, newest first, at most `limit`.
    public func endedSandboxes(tenant: String, limit: Int) async throws -> [StoredSandbox] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM sandboxes WHERE tenant = ? AND state = 'ENDED'
                    ORDER BY created_at DESC, id DESC LIMIT ?
                    """,
                arguments: [tenant, limit]
            ).map(Self.sandbox(from:))
        }
    }

    private static func sandbox(from row: Row) throws -> StoredSandbox {
        let blob: Data = row["request"]
        var sandbox = StoredSandbox(
            id: row["id"],
            tenant: row["tenant"],
            requestID: row["request_id"],
            request: try Hangar_V1_SandboxCreateRequest(serializedBytes: blob),
            createdAtMs: row["created_at"]
        )
        switch row["state"] as String {
        case "RUNNING": sandbox.state = .sandboxRunning
        case "ENDED": sandbox.state = .sandboxEnded
        default: sandbox.state = .sandboxStarting
        }
        sandbox.endReason = Hangar_V1_SandboxEndReason(storedName: row["end_reason"])
        sandbox.message = row["message"]
        sandbox.nodeID = row["node_id"]
        sandbox.endsAtMs = row["ends_at"]
        sandbox.endedAtMs = row["ended_at"]
        sandbox.eventSeq = UInt64(max(0, row["event_seq"] as Int64))
        return sandbox
    }
}
