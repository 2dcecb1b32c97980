import Foundation
import GRDB
import HangarScheduler
import HangarShared
import Synchronization
import Testing

@Suite("SQLite store")
struct StoreTests {
    func makeStore(linger: Duration = .milliseconds(5)) throws -> (Store, URL) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-store-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("hangar.sqlite")
        return (try Store(path: path.path, linger: linger), path)
    }

    func job(_ id: String, requestID: String? = nil) -> StoredJob {
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "process"
        spec.template = "host"
        spec.argv = ["/bin/true"]
        return StoredJob(
            id: id,
            tenant: "acme",
            requestID: requestID,
            spec: spec,
            priority: 0,
            submittedAt: unixMilliseconds()
        )
    }

    func result(_ id: String, status: Hangar_V1_JobStatus = .succeeded) -> Hangar_V1_Result {
        var result = Hangar_V1_Result()
        result.jobID = id
        result.tenant = "acme"
        result.status = status
        result.exitCode = 3
        result.stdout = Data("out".utf8)
        result.attempt = 1
        result.nodeID = "n1"
        return result
    }

    @Test("a job's life is stored: job, attempt, result, audit; the database is in WAL mode")
    func lifecycle() async throws {
        let (store, path) = try makeStore()
        try await store.write(.jobAccepted(job("j1")))
        try await store.write(.attemptPlaced(jobID: "j1", attempt: 1, nodeID: "n1", at: unixMilliseconds()))
        let failed = result("j1", status: .failed)
        try await store.write(.jobFinished(failed, encoded: try failed.serializedData()))
        let lookup = try #require(try await store.job(id: "j1"))
        #expect(lookup.status == "FAILED")
        #expect(lookup.result?.exitCode == 3)
        #expect(lookup.result?.stdout == Data("out".utf8))
        #expect(try await store.count("audit") == 3)
        #expect(try await store.count("attempts") == 1)

        let queue = try DatabaseQueue(path: path.path)
        let mode = try await queue.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") }
        #expect(mode == "wal")
        let attemptStatus = try await queue.read { db in
            try String.fetchOne(db, sql: "SELECT status FROM attempts WHERE job_id = 'j1'")
        }
        #expect(attemptStatus == "FAILED")
    }

    @Test("a sandbox its restarted node re-adopted is audited sandbox.readopted by the node; its row does not change")
    func sandboxReadopted() async throws {
        let (store, _) = try makeStore()
        var request = Hangar_V1_SandboxCreateRequest()
        request.runtime = "process"
        request.template = "host"
        let created = StoredSandbox(id: "s1", tenant: "acme", requestID: nil, request: request, createdAtMs: 1)
        try await store.write(.sandbox(.created(created)))
        try await store.write(.sandbox(.placed(id: "s1", nodeID: "n1", eventSeq: 1)))
        try await store.write(.sandbox(.started(id: "s1", nodeID: "n1", endsAtMs: 60_000, eventSeq: 2)))
        try await store.write(.sandboxReadopted(id: "s1", nodeID: "n1"))
        let trail = try await store.auditEvents(jobID: "s1")
        #expect(trail.map(\.event) == ["sandbox.created", "sandbox.placed", "sandbox.started", "sandbox.readopted"])
        #expect(trail.last?.actor == "node:n1")
        #expect(trail.last?.detail == "sandbox re-adopted by n1 after its restart")
        let stored = try #require(try await store.sandbox(id: "s1"))
        #expect(stored.state == .sandboxRunning && stored.nodeID == "n1" && stored.endsAtMs == 60_000)
        #expect(stored.eventSeq == 2, "no tenant event: its sequence is unchanged")
        #expect(try await store.verifyAudit().firstBad == nil)
    }

    @Test("the audit table refuses updates and deletes")
    func auditAppendOnly() async throws {
        let (store, path) = try makeStore()
        try await store.write(.jobAccepted(job("j1")))
        let queue = try DatabaseQueue(path: path.path)
        await #expect(throws: DatabaseError.self) {
            try await queue.write { db in try db.execute(sql: "UPDATE audit SET detail = 'forged'") }
        }
        await #expect(throws: DatabaseError.self) {
            try await queue.write { db in try db.execute(sql: "DELETE FROM audit") }
        }
        #expect(try await store.count("audit") == 1)
    }

    @Test("a tenant's request id is unique; the job is found by it")
    func idempotencyKey() async throws {
        let (store, _) = try makeStore()
        try await store.write(.jobAccepted(job("j1", requestID: "r-1")))
        await #expect(throws: (any Error).self) {
            try await store.write(.jobAccepted(job("j2", requestID: "r-1")))
        }
        #expect(try await store.jobID(tenant: "acme", requestID: "r-1") == "j1")
        #expect(try await store.jobID(tenant: "other", requestID: "r-1") == nil)
    }

    @Test("concurrent writes are group-committed: fewer transactions than operations, none lost")
    func groupCommit() async throws {
        let (store, _) = try makeStore()
        let count = 500
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<count {
                group.addTask { try await store.write(.jobAccepted(job("j\(index)"))) }
            }
            try await group.waitForAll()
        }
        #expect(try await store.count("jobs") == count)
        let statistics = store.commitStatistics
        #expect(statistics.operations == count)
        #expect(statistics.transactions < count / 2)
    }

    @Test("writes queued together share one transaction, each hears its own outcome; a failing one fails alone")
    func queuedTogether() async throws {
        let (store, _) = try makeStore()
        try await store.write(.jobAccepted(job("dup")))
        // Queued one by one, a group is split whenever the drain starts between two of them; the
        // first write of each group starts an idle drain, so over 100 groups that happens.
        for round in 0..<100 {
            let before = store.commitStatistics
            let outcomes = Mutex<[Int: Bool]>([:])
            let (done, finished) = AsyncStream.makeStream(of: Void.self)
            let writes = (0..<20).map { index in
                let id = round == 50 && index == 7 ? "dup" : "g\(round)-\(index)"
                return (
                    StoreWrite.jobAccepted(job(id)),
                    whenCommitted: { @Sendable (error: (any Error)?) in
                        let count = outcomes.withLock {
                            $0[index] = error == nil
                            return $0.count
                        }
                        if count == 20 { finished.yield() }
                    }
                )
            }
            store.queue(writes)
            for await _ in done { break }
            let after = store.commitStatistics
            let failed = outcomes.withLock { $0.filter { !$0.value }.map(\.key) }
            if round == 50 {
                // The batch failed, so each write was tried alone: only the duplicate failed.
                #expect(failed == [7])
            } else {
                #expect(failed.isEmpty)
                #expect(after.transactions - before.transactions == 1, "round \(round) was split")
            }
            #expect(after.operations - before.operations == (round == 50 ? 19 : 20))
        }
        #expect(try await store.count("jobs") == 1 + 99 * 20 + 19)
    }

    /// Queues `count` placement records of job `jobID` as deferrable; the returned stream yields
    /// once every one of them heard its outcome (true: all committed).
    func queuePlacements(_ store: Store, jobID: String, count: Int) -> AsyncStream<Bool> {
        let (done, finished) = AsyncStream.makeStream(of: Bool.self)
        let heard = Mutex<(count: Int, failed: Bool)>((0, false))
        let writes = (1...count).map { attempt in
            (
                StoreWrite.attemptPlaced(jobID: jobID, attempt: UInt32(attempt), nodeID: "n1", at: unixMilliseconds()),
                whenCommitted: { @Sendable (error: (any Error)?) in
                    let (all, failed) = heard.withLock {
                        $0.count += 1
                        $0.failed = $0.failed || error != nil
                        return ($0.count == count, $0.failed)
                    }
                    if all {
                        finished.yield(!failed)
                        finished.finish()
                    }
                }
            )
        }
        store.queue(writes, deferrable: true)
        return done
    }

    /// The first value `stream` yields, or nil if none came within `limit`.
    func first(of stream: AsyncStream<Bool>, within limit: Duration) async throws -> Bool? {
        try await withThrowingTaskGroup(of: Bool?.self) { group in
            group.addTask {
                for await value in stream { return value }
                return false
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
    }

    @Test("deferrable writes queued to an idle store wait for the next write and share its transaction")
    func deferrableWaitsForCompany() async throws {
        // A linger no test outlasts: only the next write can commit them.
        let (store, _) = try makeStore(linger: .seconds(3600))
        for round in 0..<20 {
            try await store.write(.jobAccepted(job("d\(round)")))
            let before = store.commitStatistics
            let attempts = try await store.count("attempts")
            let placed = queuePlacements(store, jobID: "d\(round)", count: 5)
            // A read takes the time an immediate drain needs to commit them; deferred, they wait.
            #expect(try await store.count("attempts") == attempts, "round \(round) committed alone")
            try await store.write(.audit(actor: "test", event: "e\(round)", jobID: nil, detail: ""))
            // Committed with that write, so heard by now; bounded all the same.
            #expect(try await first(of: placed, within: .seconds(10)) == true, "round \(round): not committed")
            let after = store.commitStatistics
            #expect(after.transactions - before.transactions == 1, "round \(round) took two transactions")
            #expect(after.operations - before.operations == 6)
            #expect(try await store.count("attempts") == attempts + 5)
        }
    }

    @Test("deferrable writes with no write after them are committed after the linger")
    func deferrableCommittedAlone() async throws {
        let (store, _) = try makeStore(linger: .milliseconds(20))
        for round in 0..<3 {
            try await store.write(.jobAccepted(job("alone\(round)")))
            let before = store.commitStatistics
            let placed = queuePlacements(store, jobID: "alone\(round)", count: 4)
            // Bounded: a lost timer would leave them waiting forever.
            let committed = try await first(of: placed, within: .seconds(10))
            #expect(committed == true, "round \(round): deferred writes not committed within 10 s")
            #expect(store.commitStatistics.transactions - before.transactions == 1)
        }
        #expect(try await store.count("attempts") == 12)
    }

    @Test("a failing operation does not fail the others in its batch")
    func badOperationIsolated() async throws {
        let (store, _) = try makeStore()
        try await store.write(.jobAccepted(job("dup")))
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<50 {
                group.addTask {
                    (try? await store.write(.jobAccepted(job(index == 25 ? "dup" : "ok\(index)")))) != nil
                }
            }
            var successes = 0
            for await ok in group where ok { successes += 1 }
            return successes
        }
        #expect(outcomes == 49)
        #expect(try await store.count("jobs") == 50)
    }
}

@Suite("Tamper-evident audit")
struct AuditChainTests {
    /// A store with five audit rows, and a raw connection an attacker would use (triggers dropped).
    func tamperable() async throws -> (Store, DatabaseQueue) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-audit-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("hangar.sqlite").path
        let store = try Store(path: path)
        for index in 1...5 {
            try await store.write(.audit(actor: "operator:test", event: "e\(index)", jobID: nil, detail: "d\(index)"))
        }
        let queue = try DatabaseQueue(path: path)
        try await queue.write { db in
            try db.execute(sql: "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete")
        }
        return (store, queue)
    }

    @Test("an intact chain verifies")
    func intact() async throws {
        let (store, _) = try await tamperable()
        let result = try await store.verifyAudit()
        #expect(result.checked == 5)
        #expect(result.firstBad == nil)
        #expect(result.head.count == 64)
    }

    @Test("an edited row is found at that row")
    func edited() async throws {
        let (store, queue) = try await tamperable()
        try await queue.write { db in try db.execute(sql: "UPDATE audit SET detail = 'forged' WHERE seq = 3") }
        #expect(try await store.verifyAudit().firstBad == 3)
    }

    @Test("a deleted row is found at the row after it")
    func deleted() async throws {
        let (store, queue) = try await tamperable()
        try await queue.write { db in try db.execute(sql: "DELETE FROM audit WHERE seq = 2") }
        #expect(try await store.verifyAudit().firstBad == 3)
    }

    @Test("swapped rows are found at the first of them")
    func swapped() async throws {
        let (store, queue) = try await tamperable()
        try await queue.write { db in
            try db.execute(
                sql: """
                    UPDATE audit SET seq = 100 WHERE seq = 2;
                    UPDATE audit SET seq = 2 WHERE seq = 4;
                    UPDATE audit SET seq = 4 WHERE seq = 100;
                    """
            )
        }
        #expect(try await store.verifyAudit().firstBad == 2)
    }

    @Test("a rehashed edit still breaks the chain at the next row")
    func rehashed() async throws {
        let (store, queue) = try await tamperable()
        // The attacker edits row 3 and gives it some other hash: row 4 no longer follows from it.
        try await queue.write { db in
            try db.execute(
                sql: "UPDATE audit SET detail = 'forged', hash = ? WHERE seq = 3",
                arguments: [String(repeating: "a", count: 64)]
            )
        }
        #expect(try await store.verifyAudit().firstBad == 3)
    }
}
