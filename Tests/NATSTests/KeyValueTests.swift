import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("JetStream key-value bucket against a real nats-server")
struct KeyValueTests {
    @Test("create, get, update on the right revision, delete; the bucket binds again")
    func roundTrip() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let js = try connection.jetStream()
            let bucket = try await js.keyValueBucket("TEST_KV", replicas: 1)
            #expect(try await bucket.get("a") == nil)
            let first = try await bucket.create("a", value: Data("one".utf8))
            #expect(try await bucket.get("a") == KeyValueEntry(value: Data("one".utf8), revision: first))
            let second = try await bucket.update("a", value: Data("two".utf8), expectedRevision: first)
            #expect(second > first)
            // Binding again (another process starting) sees the same key.
            let again = try await js.keyValueBucket("TEST_KV", replicas: 1)
            #expect(try await again.get("a") == KeyValueEntry(value: Data("two".utf8), revision: second))
            try await bucket.delete("a")
            #expect(try await bucket.get("a") == nil)
            // A deleted key can be created again.
            let third = try await bucket.create("a", value: Data("three".utf8))
            #expect(third > second)
            #expect(try await bucket.get("a")?.value == Data("three".utf8))
            await connection.close()
        }
    }

    @Test("create on an existing key is refused as keyExists")
    func createExisting() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let bucket = try await connection.jetStream().keyValueBucket("TEST_KV")
            let revision = try await bucket.create("leader", value: Data("x".utf8))
            await #expect(throws: KeyValueWriteError.keyExists(bucket: "TEST_KV", key: "leader")) {
                try await bucket.create("leader", value: Data("y".utf8))
            }
            #expect(try await bucket.get("leader") == KeyValueEntry(value: Data("x".utf8), revision: revision))
            await connection.close()
        }
    }

    @Test("update on a wrong revision is refused as wrongRevision; the value stays")
    func wrongRevision() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let bucket = try await connection.jetStream().keyValueBucket("TEST_KV")
            let first = try await bucket.create("k", value: Data("1".utf8))
            let second = try await bucket.update("k", value: Data("2".utf8), expectedRevision: first)
            await #expect(throws: KeyValueWriteError.wrongRevision(bucket: "TEST_KV", key: "k", expected: first)) {
                try await bucket.update("k", value: Data("stale".utf8), expectedRevision: first)
            }
            // Updating a key that was never written is refused the same way.
            await #expect(throws: KeyValueWriteError.wrongRevision(bucket: "TEST_KV", key: "absent", expected: 7)) {
                try await bucket.update("absent", value: Data("x".utf8), expectedRevision: 7)
            }
            #expect(try await bucket.get("k") == KeyValueEntry(value: Data("2".utf8), revision: second))
            await connection.close()
        }
    }

    @Test("two concurrent updates on the same revision: exactly one wins", arguments: 0..<5)
    func compareAndSetRace(round: Int) async throws {
        try await withNATSServer { server in
            let one = try await connectForTest(server, name: "one")
            let two = try await connectForTest(server, name: "two")
            let bucketOne = try await one.jetStream().keyValueBucket("TEST_KV")
            let bucketTwo = try await two.jetStream().keyValueBucket("TEST_KV")
            let base = try await bucketOne.create("leader", value: Data("base".utf8))
            async let first = Self.tryUpdate(bucketOne, value: "one", expected: base)
            async let second = Self.tryUpdate(bucketTwo, value: "two", expected: base)
            let outcomes = await [first, second]
            let winners = outcomes.compactMap { try? $0.get() }
            #expect(winners.count == 1, "outcomes: \(outcomes)")
            let losers = outcomes.filter { outcome in
                if case .failure(.wrongRevision(_, _, base)) = outcome { return true }
                return false
            }
            #expect(losers.count == 1, "outcomes: \(outcomes)")
            let stored = try #require(try await bucketOne.get("leader"))
            #expect(stored.revision == winners.first)
            #expect(["one", "two"].contains(String(decoding: stored.value, as: UTF8.self)))
            await one.close()
            await two.close()
        }
    }

    @Test("bad bucket names and keys are refused before reaching the server")
    func badNames() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let js = try connection.jetStream()
            await #expect(throws: NATSError.self) { try await js.keyValueBucket("no.dots") }
            let bucket = try await js.keyValueBucket("TEST_KV")
            await #expect(throws: NATSError.self) { try await bucket.get("a b") }
            await #expect(throws: NATSError.self) { try await bucket.get("*") }
            await #expect(throws: KeyValueWriteError.self) { try await bucket.create(".x", value: Data()) }
            await connection.close()
        }
    }

    private static func tryUpdate(
        _ bucket: KeyValueBucket,
        value: String,
        expected: UInt64
    ) async -> Result<UInt64, KeyValueWriteError> {
        do {
            return .success(try await bucket.update("leader", value: Data(value.utf8), expectedRevision: expected))
        } catch {
            return .failure(error)
        }
    }
}
