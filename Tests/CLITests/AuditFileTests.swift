import Foundation
import GRDB
import HangarScheduler
import HangarTestSupport
import Testing

/// `hangar audit verify --db FILE`: a store checked directly (a standby's own replica), without a
/// running scheduler.
@Suite("Audit verification of a store file")
struct AuditFileTests {
    @Test("audit verify --db: an intact store passes, an edited row is named (exit 1), a missing file is refused")
    func verifiesFile() async throws {
        let directory = try makeTemporaryDirectory("hangar-audit-file")
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("store.sqlite").path
        let store = try Store(path: path)
        for number in 1...3 {
            try await store.write(.audit(actor: "test", event: "event.\(number)", jobID: nil, detail: "row \(number)"))
        }

        let intact = try await runHangar(["audit", "verify", "--db", path])
        #expect(intact.status == 0, "\(intact.stderr)")
        #expect(intact.stdout.contains("audit chain intact: 3 rows, head "), "\(intact.stdout)")

        // Someone edits row 2 behind the store's back (its triggers dropped first).
        try await DatabaseQueue(path: path).write { db in
            try db.execute(sql: "DROP TRIGGER audit_no_update")
            try db.execute(sql: "UPDATE audit SET detail = 'edited' WHERE seq = 2")
        }
        let broken = try await runHangar(["audit", "verify", "--db", path])
        #expect(broken.status == 1)
        #expect(broken.stderr.contains("audit chain broken at row 2"), "\(broken.stderr)")

        let missing = try await runHangar(["audit", "verify", "--db", directory.appendingPathComponent("none").path])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("there is no store at"), "\(missing.stderr)")
    }
}
