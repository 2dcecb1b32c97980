import Crypto
import Foundation
import GRDB

/// The audit table is a hash chain: each row stores `SHA-256(previous row's hash ‖ this row's
/// canonical bytes)`, written in the same transaction as the change it records. Editing, deleting or
/// moving a row breaks the chain at that row (or the row after a deleted one); `verify` finds it.
/// Anchor the head hash elsewhere (it is in every `hangar audit verify` report) to also detect a
/// truncated tail.
enum AuditChain {
    /// The hash of the first row's predecessor.
    static let genesis = String(repeating: "0", count: 64)

    /// Length-prefixed fields, so no two different rows share canonical bytes.
    /// Each field is `<UTF-8 length>:<field>|` (written as bytes: three rows per job go through
    /// here, and string interpolation cost more than the hash).
    static func canonical(seq: Int64, at: Int64, actor: String, event: String, jobID: String?, detail: String) -> Data {
        let jobID = jobID ?? ""
        var bytes: [UInt8] = []
        bytes.reserveCapacity(80 + actor.utf8.count + event.utf8.count + jobID.utf8.count + detail.utf8.count)
        func field(_ text: String) {
            bytes.append(contentsOf: String(text.utf8.count).utf8)
            bytes.append(UInt8(ascii: ":"))
            bytes.append(contentsOf: text.utf8)
            bytes.append(UInt8(ascii: "|"))
        }
        field(String(seq))
        field(String(at))
        field(actor)
        field(event)
        field(jobID)
        field(detail)
        return Data(bytes)
    }

    static func hash(previous: String, canonical: Data) -> String {
        var hasher = SHA256()
        var previous = previous
        previous.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        hasher.update(data: canonical)
        return hex(hasher.finalize())
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Lowercase hex, two digits per byte (`String(format:)` per byte cost more than the hash).
    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        var text: [UInt8] = []
        text.reserveCapacity(64)
        for byte in bytes {
            text.append(hexDigits[Int(byte >> 4)])
            text.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// The last row of the chain: its seq and hash.
    struct Head {
        var seq: Int64
        var hash: String
    }

    /// Appends one row, chained to the last one.
    static func append(_ db: Database, at: Int64, actor: String, event: String, jobID: String?, detail: String) throws {
        var head: Head?
        try append(db, head: &head, at: at, actor: actor, event: event, jobID: jobID, detail: detail)
    }

    /// Appends one row, chained to `head`: read from the table on the first append of a
    /// transaction (nil), then advanced in memory, so a transaction of many rows reads it once.
    /// Only for appends within one transaction that nothing else writes to the audit table during.
    static func append(
        _ db: Database,
        head: inout Head?,
        at: Int64,
        actor: String,
        event: String,
        jobID: String?,
        detail: String
    ) throws {
        let previous = try head ?? currentHead(db)
        let seq = previous.seq + 1
        let hash = hash(
            previous: previous.hash,
            canonical: canonical(seq: seq, at: at, actor: actor, event: event, jobID: jobID, detail: detail)
        )
        try db.cachedStatement(
            sql: "INSERT INTO audit (seq, at, actor, event, job_id, detail, hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
        ).execute(arguments: [seq, at, actor, event, jobID, detail, hash])
        head = Head(seq: seq, hash: hash)
    }

    /// The newest row, or (everything pruned) the retention checkpoint, or the genesis (seq 0).
    private static func currentHead(_ db: Database) throws -> Head {
        // A cached statement: parsing its SQL each time was a large share of the store's CPU.
        let newest = try db.cachedStatement(sql: "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        if let last = try Row.fetchOne(newest) {
            return Head(seq: last["seq"], hash: last["hash"])
        }
        if let checkpoint = try checkpoint(db) {
            return Head(seq: checkpoint.seq, hash: checkpoint.hash)
        }
        return Head(seq: 0, hash: genesis)
    }

    /// Walks the whole chain (from the retention checkpoint, if rows were pruned). Returns the rows
    /// checked and the first row that does not verify.
    static func verify(_ db: Database) throws -> (checked: Int64, firstBad: Int64?, head: String) {
        var previous = genesis
        var expectedSeq: Int64 = 1
        var checked: Int64 = 0
        if let checkpoint = try self.checkpoint(db) {
            previous = checkpoint.hash
            expectedSeq = checkpoint.seq + 1
            // The checkpoint must be the one the latest pruning recorded in the chain itself; a
            // checkpoint moved to hide deleted rows does not match it.
            let recorded = try String.fetchOne(
                db,
                sql: "SELECT detail FROM audit WHERE event = 'audit.pruned' ORDER BY seq DESC LIMIT 1"
            )
            if recorded.map({ !$0.hasPrefix(pruneRecord(seq: checkpoint.seq, hash: checkpoint.hash)) }) ?? true {
                return (0, expectedSeq, previous)
            }
        }
        let rows = try Row.fetchCursor(
            db,
            sql: "SELECT seq, at, actor, event, job_id, detail, hash FROM audit ORDER BY seq"
        )
        while let row = try rows.next() {
            let seq: Int64 = row["seq"]
            let stored: String = row["hash"]
            let computed = hash(
                previous: previous,
                canonical: canonical(
                    seq: seq,
                    at: row["at"],
                    actor: row["actor"],
                    event: row["event"],
                    jobID: row["job_id"],
                    detail: row["detail"]
                )
            )
            checked += 1
            if seq != expectedSeq || computed != stored { return (checked, seq, previous) }
            previous = stored
            expectedSeq = seq + 1
        }
        return (checked, nil, previous)
    }
}
