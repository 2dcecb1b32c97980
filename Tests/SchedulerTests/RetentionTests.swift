import Foundation
import GRDB
import HangarScheduler
import HangarShared
import Testing

@Suite("Retention")
struct RetentionTests {
    /// A store with a finished job and `rows` more audit rows.
    func store(rows: Int) async throws -> (Store, String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-retention-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("hangar.sqlite").path
        let store = try Store(path: path)
        var job = StoredJob(
            id: "j1",
            tenant: "acme",
            requestID: "r1",
            spec: Hangar_V1_JobSpec(),
            priority: 0,
            submittedAt: unixMilliseconds()
        )
        job.request.requestID = "r1"
        try await store.write(.jobAccepted(job))
        var result = Hangar_V1_Result()
        result.jobID = "j1"
        result.tenant = "acme"
        result.status = .succeeded
        result.finishedAtMs = unixMilliseconds()
        try await store.write(.jobFinished(result, encoded: try result.serializedData()))
        for index in 0..<rows {
            try await store.write(.audit(actor: "operator:test", event: "e\(index)", jobID: nil, detail: ""))
        }
        return (store, path)
    }

    @Test("pruning removes old results and audit rows; the chain still verifies; job rows and request ids stay")
    func pruneKeepsChainVerifiable() async throws {
        let (store, _) = try await store(rows: 5)
        let before = try await store.verifyAudit()
        #expect(before.firstBad == nil && before.checked == 7)
        let pruned = try await store.prune(before: unixMilliseconds() + 1)
        #expect(pruned == Store.Pruned(results: 1, auditRows: 7))
        #expect(try await store.count("results") == 0)
        #expect(try await store.count("audit") == 1)  // the audit.pruned row
        #expect(try await store.job(id: "j1")?.status == "SUCCEEDED")
        #expect(try await store.jobID(tenant: "acme", requestID: "r1") == "j1")
        try await store.write(.audit(actor: "operator:test", event: "after", jobID: nil, detail: ""))
        let after = try await store.verifyAudit()
        #expect(after.firstBad == nil, "\(after)")
        #expect(after.checked == 2)
        // Pruning again moves the checkpoint; still verifiable.
        _ = try await store.prune(before: unixMilliseconds() + 1)
        #expect(try await store.verifyAudit().firstBad == nil)
    }

    @Test("nothing older than the cutoff: nothing pruned")
    func recentRowsStay() async throws {
        let (store, _) = try await store(rows: 3)
        let pruned = try await store.prune(before: unixMilliseconds() - 60_000)
        #expect(pruned == Store.Pruned(results: 0, auditRows: 0))
        #expect(try await store.count("audit") == 5)
    }

    @Test("after pruning, rows above the checkpoint cannot be deleted; a deleted row or a moved checkpoint is found")
    func tamperingAfterPruning() async throws {
        let (store, path) = try await store(rows: 3)
        _ = try await store.prune(before: unixMilliseconds() + 1)
        for index in 0..<4 {
            try await store.write(.audit(actor: "operator:test", event: "later\(index)", jobID: nil, detail: ""))
        }
        let queue = try DatabaseQueue(path: path)
        let rows = try await queue.read { db in try Int64.fetchAll(db, sql: "SELECT seq FROM audit ORDER BY seq") }
        #expect(rows.count == 5)
        await #expect(throws: DatabaseError.self) {
            try await queue.write { db in try db.execute(sql: "DELETE FROM audit WHERE seq = ?", arguments: [rows[2]]) }
        }
        // An attacker who bypasses the trigger: the row after the deleted one is reported.
        try await queue.write { db in
            try db.execute(sql: "DROP TRIGGER audit_no_delete")
            try db.execute(sql: "DELETE FROM audit WHERE seq = ?", arguments: [rows[2]])
        }
        #expect(try await store.verifyAudit().firstBad == rows[3])
    }

    @Test("a checkpoint moved forward to hide deleted rows does not match the recorded pruning")
    func movedCheckpoint() async throws {
        let (store, path) = try await store(rows: 3)
        _ = try await store.prune(before: unixMilliseconds() + 1)
        for index in 0..<4 {
            try await store.write(.audit(actor: "operator:test", event: "later\(index)", jobID: nil, detail: ""))
        }
        let queue = try DatabaseQueue(path: path)
        try await queue.write { db in
            let row = try #require(
                try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit ORDER BY seq LIMIT 1 OFFSET 2")
            )
            let seq: Int64 = row["seq"]
            try db.execute(
                sql: "UPDATE audit_checkpoint SET seq = ?, hash = ?",
                arguments: [seq, row["hash"] as String]
            )
            try db.execute(sql: "DELETE FROM audit WHERE seq <= ?", arguments: [seq])
        }
        #expect(try await store.verifyAudit().firstBad != nil)
    }
}
