import Foundation
import GRDB
import HangarShared

/// An E2B gateway API key as the store keeps it (table `api_keys`): the SHA-256 of the key, never
/// the key, and the tenant it acts for.
public struct StoredAPIKey: Sendable, Equatable {
    /// SHA-256 of the key, 64 lowercase hex digits.
    public var hash: String
    /// The first 12 hex digits of `hash`: what lists show and revocations name.
    public var id: String { String(hash.prefix(APIKeyWrite.idLength)) }
    /// The tenant the key acts for.
    public var tenant: String
    /// Unix milliseconds.
    public var createdAtMs: Int64
    /// Who created it (`operator:user@host`).
    public var createdBy: String
    /// Unix milliseconds; 0 while it works.
    public var revokedAtMs: Int64 = 0
    /// Who revoked it.
    public var revokedBy = ""

    /// A key just created.
    public init(hash: String, tenant: String, createdAtMs: Int64, createdBy: String) {
        self.hash = hash
        self.tenant = tenant
        self.createdAtMs = createdAtMs
        self.createdBy = createdBy
    }

    /// What an operator sees of it.
    public var info: Hangar_V1_APIKeyInfo {
        var info = Hangar_V1_APIKeyInfo()
        info.keyID = id
        info.tenant = tenant
        info.createdAtMs = createdAtMs
        info.createdBy = createdBy
        info.revokedAtMs = revokedAtMs
        info.revokedBy = revokedBy
        return info
    }
}

/// One change to the API keys; each appends its audit event.
public enum APIKeyWrite: Sendable {
    /// A new key (audit `apikey.created`). Fails if its hash is already stored.
    case created(StoredAPIKey)
    /// A key stops working (audit `apikey.revoked`); nothing happens if it already was revoked.
    case revoked(id: String, tenant: String, actor: String)

    /// Hex digits of a key's id.
    public static let idLength = 12

    /// Whether `text` is a SHA-256 in lowercase hex.
    public static func isHash(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// Whether `text` may be a key id (12 lowercase hex digits).
    public static func isID(_ text: String) -> Bool {
        text.utf8.count == idLength
            && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    func apply(_ db: Database, audit head: inout AuditChain.Head?, now: Int64) throws {
        switch self {
        case .created(let key):
            try db.execute(
                sql: """
                    INSERT INTO api_keys (hash, id, tenant, created_at, created_by, revoked_at, revoked_by)
                    VALUES (?, ?, ?, ?, ?, 0, '')
                    """,
                arguments: [key.hash, key.id, key.tenant, key.createdAtMs, key.createdBy]
            )
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: key.createdBy,
                event: "apikey.created",
                jobID: nil,
                detail: "API key \(key.id) for tenant \(key.tenant)"
            )
        case .revoked(let id, let tenant, let actor):
            try db.execute(
                sql: "UPDATE api_keys SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at = 0",
                arguments: [now, actor, id]
            )
            guard db.changesCount > 0 else { return }
            try AuditChain.append(
                db,
                head: &head,
                at: now,
                actor: actor,
                event: "apikey.revoked",
                jobID: nil,
                detail: "API key \(id) of tenant \(tenant)"
            )
        }
    }

    static func createTable(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE api_keys (
                    hash TEXT PRIMARY KEY,
                    id TEXT NOT NULL UNIQUE,
                    tenant TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    created_by TEXT NOT NULL,
                    revoked_at INTEGER NOT NULL,
                    revoked_by TEXT NOT NULL
                );
                CREATE INDEX api_keys_tenant ON api_keys(tenant);
                """
        )
    }
}

extension Store {
    /// The key whose SHA-256 is `hash`, revoked or not.
    public func apiKey(hash: String) async throws -> StoredAPIKey? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM api_keys WHERE hash = ?", arguments: [hash]).map(Self.apiKey)
        }
    }

    /// The key with id `id`, revoked or not.
    public func apiKey(id: String) async throws -> StoredAPIKey? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM api_keys WHERE id = ?", arguments: [id]).map(Self.apiKey)
        }
    }

    /// The keys of `tenant` (every tenant's if nil), oldest first; revoked ones only if asked.
    public func apiKeys(tenant: String?, includeRevoked: Bool) async throws -> [StoredAPIKey] {
        try await pool.read { db in
            var sql = "SELECT * FROM api_keys WHERE 1"
            var arguments: StatementArguments = []
            if let tenant {
                sql += " AND tenant = ?"
                arguments += [tenant]
            }
            if !includeRevoked { sql += " AND revoked_at = 0" }
            sql += " ORDER BY created_at, id"
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.apiKey)
        }
    }

    private static func apiKey(from row: Row) -> StoredAPIKey {
        var key = StoredAPIKey(
            hash: row["hash"],
            tenant: row["tenant"],
            createdAtMs: row["created_at"],
            createdBy: row["created_by"]
        )
        key.revokedAtMs = row["revoked_at"]
        key.revokedBy = row["revoked_by"]
        return key
    }
}
