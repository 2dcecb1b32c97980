import Foundation
import GRDB
import HangarNATS
import HangarShared
import HangarTestSupport
import Synchronization
import Testing

@testable import HangarScheduler

/// The replicated store log on a real nats-server (JetStream): a leading store writes each
/// transaction to `HANGAR_LOG` before applying it; other stores apply the log and end up with the
/// same rows and the same audit chain.
@Suite("Replicated store log")
struct StoreLogTests {
    static let entryLimit = 512 * 1024

    @Test("a standby store that follows the log ends with the leader's rows and audit chain, every kind of write")
    func followerMatchesLeader() async throws {
        try await withStoreLog { _, log in
            let leader = try makeStore()
            let standby = try makeStore()
            let follower = Task { await standby.store.follow(log, logger: .init(label: "test")) }
            try await leader.store.lead(log, term: 7, holder: "a", maxEntryBytes: Self.entryLimit) { _ in }

            let outcomes = try await Self.writeOneOfEach(leader.store)
            #expect(outcomes.duplicateKeyRefused, "a second key with the same hash must be refused")
            let position = try #require(leader.store.leadingLogPosition)
            #expect(try await leader.store.logPosition().sequence == position)
            #expect(try await log.bounds().last == position)

            try await waitUntil(timeout: .seconds(20)) { try await standby.store.logPosition().sequence == position }
            follower.cancel()
            await follower.value

            let leaderAudit = try await leader.store.verifyAudit()
            let standbyAudit = try await standby.store.verifyAudit()
            #expect(leaderAudit.firstBad == nil)
            #expect(standbyAudit.firstBad == nil)
            #expect(leaderAudit.checked > 10)
            #expect(standbyAudit.head == leaderAudit.head)
            #expect(try dump(standby.path) == dump(leader.path))
            #expect(try await standby.store.logPosition().term == 7)
        }
    }

    @Test("a new leader fences the old one: its next write fails as deposed and reaches no store")
    func newTermFencesOldLeader() async throws {
        try await withStoreLog { _, log in
            let old = try makeStore()
            let new = try makeStore()
            let deposed = Flag()
            try await old.store.lead(log, term: 1, holder: "old", maxEntryBytes: Self.entryLimit) { error in
                deposed.set("\(error)")
            }
            try await old.store.write(.audit(actor: "test", event: "before", jobID: nil, detail: "term 1"))

            // The new leader catches up (it holds the old leader's write) and starts term 2.
            try await new.store.lead(log, term: 2, holder: "new", maxEntryBytes: Self.entryLimit) { _ in }
            #expect(try await new.store.auditEvents().contains { $0.event == "before" })

            await #expect(throws: StoreLogDeposedError.self) {
                try await old.store.write(.audit(actor: "test", event: "paused", jobID: nil, detail: "term 1, late"))
            }
            #expect(deposed.value?.contains("term 2") == true, "\(deposed.value ?? "not told")")
            // Every later write fails the same way at once; the deposed hook was called once.
            await #expect(throws: StoreLogDeposedError.self) {
                try await old.store.write(.audit(actor: "test", event: "later", jobID: nil, detail: ""))
            }
            #expect(deposed.count == 1)
            try await new.store.write(.audit(actor: "test", event: "after", jobID: nil, detail: "term 2"))

            let fresh = try makeStore()
            try await fresh.store.catchUp(from: log)
            let events = try await fresh.store.auditEvents().map(\.event)
            #expect(events.contains("before"))
            #expect(events.contains("after"))
            #expect(!events.contains("paused"))
            #expect(try await old.store.auditEvents().contains { $0.event == "paused" } == false)
            #expect(try await fresh.store.verifyAudit().head == new.store.verifyAudit().head)
        }
    }

    @Test("a new leader applies an older leader's entry that landed after its catch-up, then leads after it")
    func stragglerFromOlderTerm() async throws {
        try await withStoreLog { _, log in
            let old = try makeStore()
            try await old.store.lead(log, term: 1, holder: "old", maxEntryBytes: Self.entryLimit) { _ in }
            try await old.store.write(.audit(actor: "test", event: "first", jobID: nil, detail: ""))
            // An entry of term 1 that its writer never applied (it was paused right before the
            // append and lands just after the new leader caught up): the new leader's term start
            // is refused, and it must apply that entry, not skip it.
            var straggler = Hangar_V1_StoreLogEntry()
            straggler.term = 1
            straggler.holder = "old"
            straggler.atMs = unixMilliseconds()
            var write = Hangar_V1_StoreLogWrite()
            write.ops = try StoreWrite.audit(actor: "test", event: "straggler", jobID: nil, detail: "").logOperations()
            straggler.writes = [write]
            let interposing = InterposingLog(log, before: try straggler.serializedData())

            let new = try makeStore()
            try await new.store.lead(interposing, term: 2, holder: "new", maxEntryBytes: Self.entryLimit) { _ in }
            #expect(interposing.interposedAt != nil, "the straggler was not appended")
            #expect(try await new.store.auditEvents().map(\.event).contains("straggler"))
            try await new.store.write(.audit(actor: "test", event: "after", jobID: nil, detail: ""))
            let fresh = try makeStore()
            try await fresh.store.catchUp(from: log)
            #expect(try await fresh.store.auditEvents().map(\.event).suffix(2) == ["straggler", "after"])
            #expect(try await fresh.store.verifyAudit().head == new.store.verifyAudit().head)
        }
    }

    @Test(
        "a store further behind than the log's oldest entry is told to start from a backup; one started on a backup replays the rest"
    )
    func gapIsReported() async throws {
        try await withStoreLog { connection, log in
            let leader = try makeStore()
            try await leader.store.lead(log, term: 1, holder: "a", maxEntryBytes: Self.entryLimit) { _ in }
            try await leader.store.write(.audit(actor: "test", event: "one", jobID: nil, detail: ""))
            // A backup of the leader's store now (`sqlite3 .backup`, here through GRDB): the snapshot.
            let backupPath = try makeTemporaryDirectory("hangar-storelog").appendingPathComponent("backup.sqlite").path
            try DatabaseQueue(path: leader.path).backup(to: DatabaseQueue(path: backupPath))
            // Retention removed the first entries.
            let jetStream = try connection.jetStream()
            try await jetStream.purge(stream: Streams.storeLog, keepingFrom: 3)
            try await leader.store.write(.audit(actor: "test", event: "two", jobID: nil, detail: ""))
            let late = try makeStore()
            await #expect(throws: StoreLogGapError.self) { try await late.store.catchUp(from: log) }
            #expect(try await late.store.logPosition().sequence == 0)
            // Started on the backup instead, a store replays only the entries after it.
            let restored = try Store(path: backupPath)
            #expect(try await restored.logPosition().sequence == 2)
            try await restored.catchUp(from: log)
            #expect(try await restored.logPosition().sequence == leader.store.leadingLogPosition)
            #expect(try await restored.verifyAudit().head == leader.store.verifyAudit().head)
        }
    }

    @Test("every store write survives the log encoding unchanged")
    func encodingRoundTrip() throws {
        for write in Self.oneOfEach() {
            var record = Hangar_V1_StoreLogWrite()
            record.ops = try write.logOperations()
            let decoded = try StoreWrite(
                logWrite: try Hangar_V1_StoreLogWrite(serializedBytes: try record.serializedData())
            )
            var again = Hangar_V1_StoreLogWrite()
            again.ops = try decoded.logOperations()
            #expect(again == record, "\(write)")
        }
        // An operation this version does not know is refused with a clear message.
        var unknown = Hangar_V1_StoreLogWrite()
        unknown.ops = [Hangar_V1_StoreLogOp()]
        #expect(throws: StoreLogDecodingError.self) { try StoreWrite(logWrite: unknown) }
    }

    // MARK: - Helpers

    struct Outcomes {
        var duplicateKeyRefused = false
    }

    static func job(_ id: String) -> StoredJob {
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "process"
        spec.template = "host"
        spec.argv = ["/bin/echo", id]
        spec.env = ["A": "1", "B": "2", "C": "3"]
        var job = StoredJob(id: id, tenant: "acme", requestID: "r-\(id)", spec: spec, priority: 2, submittedAt: 1000)
        job.request.argv = spec.argv
        job.request.env = spec.env
        return job
    }

    static func oneOfEach() -> [StoreWrite] {
        var result = Hangar_V1_Result()
        result.jobID = "j1"
        result.tenant = "acme"
        result.status = .succeeded
        result.attempt = 1
        result.stdout = Data("out".utf8)
        result.finishedAtMs = 5000
        var request = Hangar_V1_SandboxCreateRequest()
        request.runtime = "process"
        request.template = "host"
        request.metadata = ["x": "1", "y": "2"]
        let sandbox = StoredSandbox(id: "s1", tenant: "acme", requestID: nil, request: request, createdAtMs: 1200)
        let key = StoredAPIKey(
            hash: String(repeating: "ab", count: 32),
            tenant: "acme",
            createdAtMs: 1300,
            createdBy: "operator:test"
        )
        return [
            .jobAccepted(job("j1")),
            .intake(job("j2")),
            .streamBatch([.intake(job("j3")), .audit(actor: "x", event: "batched", jobID: "j3", detail: "d")]),
            .attemptPlaced(jobID: "j1", attempt: 1, nodeID: "n1", at: 2000),
            .attemptEnded(jobID: "j2", attempt: 1, status: "LOST", detail: "no answer"),
            .jobFinished(result, encoded: try! result.serializedData()),
            .nodeControl(
                nodeID: "n1",
                control: NodeControl(eligible: false, draining: true, drainDeadline: 9000),
                actor: "operator:test",
                event: "node.drain"
            ),
            .audit(actor: "scheduler", event: "note", jobID: nil, detail: "no job"),
            .staleResult(jobID: "j1", attempt: 0, nodeID: "n2", status: "FAILED"),
            .sandbox(.created(sandbox)),
            .sandbox(.placed(id: "s1", nodeID: "n1", eventSeq: 1)),
            .sandbox(.started(id: "s1", nodeID: "n1", endsAtMs: 99_000, eventSeq: 2)),
            .sandbox(.timeoutSet(id: "s1", endsAtMs: 120_000, eventSeq: 3)),
            .sandbox(.ended(id: "s1", reason: .sandboxKilled, nodeID: nil, message: "killed", eventSeq: 4)),
            .apiKey(.created(key)),
            .apiKey(.revoked(id: key.id, tenant: "acme", actor: "operator:test")),
            .prune(before: 1, tally: PruneTally()),
        ]
    }

    /// Writes one of each kind through `store` (some queued together, so they share an entry),
    /// and a second API key with the same hash, which must fail alone.
    static func writeOneOfEach(_ store: Store) async throws -> Outcomes {
        var outcomes = Outcomes()
        let writes = oneOfEach()
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The first half in order, each awaited; the rest queued at once (one entry).
            for write in writes.prefix(8) { try await store.write(write) }
            for write in writes.dropFirst(8) {
                let done = AsyncStream<(any Error)?>.makeStream()
                store.queue(write) { error in
                    done.continuation.yield(error)
                    done.continuation.finish()
                }
                group.addTask {
                    for await error in done.stream { if let error { throw error } }
                }
            }
            try await group.waitForAll()
        }
        let again = StoredAPIKey(
            hash: String(repeating: "ab", count: 32),
            tenant: "other",
            createdAtMs: 1400,
            createdBy: "operator:test"
        )
        do {
            try await store.write(.apiKey(.created(again)))
        } catch {
            outcomes.duplicateKeyRefused = true
        }
        try await store.write(.audit(actor: "scheduler", event: "last", jobID: nil, detail: "after the refusal"))
        return outcomes
    }
}

/// A nats-server of its own, a connection to it and the store log stream on it, for `body`.
private func withStoreLog(_ body: (NATSConnection, JetStreamStoreLog) async throws -> Void) async throws {
    try await withNATSServer { server in
        let connection = try await connectForTest(server)
        let log = try JetStreamStoreLog(nats: connection)
        try await log.ensure(replicas: 1)
        do {
            try await body(connection, log)
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
    }
}

private func makeStore() throws -> (store: Store, path: String) {
    let directory = try makeTemporaryDirectory("hangar-storelog")
    let path = directory.appendingPathComponent("hangar.sqlite").path
    return (try Store(path: path), path)
}

/// Every table's rows, in a stable order, as text.
private func dump(_ path: String) throws -> [String: [String]] {
    let queue = try DatabaseQueue(path: path)
    return try queue.read { db in
        var tables: [String: [String]] = [:]
        for table in [
            "jobs", "attempts", "results", "audit", "audit_checkpoint", "node_controls", "sandboxes", "api_keys",
        ] {
            let rows = try Row.fetchAll(db, sql: "SELECT * FROM \(table)")
            tables[table] = rows.map { "\($0)" }.sorted()
        }
        return tables
    }
}

/// The log, with one foreign entry appended right before the first append through it.
private final class InterposingLog: StoreLog {
    private let log: JetStreamStoreLog
    private let foreign: Data
    private let state = Mutex<UInt64?>(nil)

    init(_ log: JetStreamStoreLog, before foreign: Data) {
        self.log = log
        self.foreign = foreign
    }

    /// Where the foreign entry went (nil: not yet).
    var interposedAt: UInt64? { state.withLock { $0 } }

    func append(_ entry: Data, after sequence: UInt64, messageID: String) async throws(StoreLogError) -> UInt64 {
        if interposedAt == nil {
            let at = try await log.append(foreign, after: sequence, messageID: "foreign")
            state.withLock { $0 = at }
        }
        return try await log.append(entry, after: sequence, messageID: messageID)
    }

    func entry(at sequence: UInt64) async throws(StoreLogError) -> Data? { try await log.entry(at: sequence) }

    func bounds() async throws(StoreLogError) -> (first: UInt64, last: UInt64) { try await log.bounds() }
}

private final class Flag: Sendable {
    private let texts = Mutex<[String]>([])
    var value: String? { texts.withLock { $0.last } }
    var count: Int { texts.withLock { $0.count } }
    func set(_ value: String) { texts.withLock { $0.append(value) } }
}

private func waitUntil(timeout: Duration, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("not reached within \(timeout)")
            return
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}
