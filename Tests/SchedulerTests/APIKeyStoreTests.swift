import Foundation
import GRDB
import HangarScheduler
import HangarShared
import Testing

@Suite("API key store: SHA-256 → tenant, revocation, audit, kept across a reopen")
struct APIKeyStoreTests {
    @Test("a key is stored by its hash only, found by hash and id, revoked once, audited, and survives a reopen")
    func lifecycle() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-keys-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("hangar.sqlite").path
        let hash = String(repeating: "ab", count: 32)
        let other = String(repeating: "cd", count: 32)
        do {
            let store = try Store(path: path)
            #expect(APIKeyWrite.isHash(hash) && !APIKeyWrite.isHash("e2b_" + hash.prefix(40)))
            try await store.write(
                .apiKey(.created(StoredAPIKey(hash: hash, tenant: "a", createdAtMs: 1, createdBy: "operator:x")))
            )
            try await store.write(
                .apiKey(.created(StoredAPIKey(hash: other, tenant: "b", createdAtMs: 2, createdBy: "operator:x")))
            )
            // The same hash again is refused (and fails alone).
            await #expect(throws: (any Error).self) {
                try await store.write(
                    .apiKey(.created(StoredAPIKey(hash: hash, tenant: "b", createdAtMs: 3, createdBy: "y")))
                )
            }
            #expect(try await store.apiKey(hash: hash)?.tenant == "a")
            #expect(try await store.apiKey(id: String(hash.prefix(12)))?.hash == hash)
            #expect(try await store.apiKeys(tenant: nil, includeRevoked: false).map(\.tenant) == ["a", "b"])
            try await store.write(.apiKey(.revoked(id: String(hash.prefix(12)), tenant: "a", actor: "operator:y")))
            // A second revocation changes nothing and is not audited again.
            try await store.write(.apiKey(.revoked(id: String(hash.prefix(12)), tenant: "a", actor: "operator:z")))
            #expect(try await store.apiKeys(tenant: "a", includeRevoked: false).isEmpty)
            let revoked = try #require(try await store.apiKeys(tenant: "a", includeRevoked: true).first)
            #expect(revoked.revokedAtMs > 0 && revoked.revokedBy == "operator:y")
            let events = try await store.auditEvents().map(\.event)
            #expect(events.filter { $0 == "apikey.created" }.count == 2)
            #expect(events.filter { $0 == "apikey.revoked" }.count == 1)
            #expect(try await store.verifyAudit().firstBad == nil)
            try await store.flush()
        }
        // Reopened (a restarted scheduler): the keys are still there.
        let reopened = try Store(path: path)
        #expect(try await reopened.apiKey(hash: other)?.tenant == "b")
        #expect(try await reopened.apiKey(hash: hash)?.revokedAtMs ?? 0 > 0)
    }
}
