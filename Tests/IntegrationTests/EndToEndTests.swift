import Foundation
import GRDB
import HangarNATS
import HangarScheduler
import HangarShared
import Testing

@Suite("A job travels tenant → NATS → scheduler → node sandbox → back, stored in SQLite", .serialized)
struct EndToEndTests {
    @Test("output comes back, stdout and stderr apart")
    func output() async throws {
        try await withCluster { cluster in
            let result = try await cluster.run(command("/bin/sh", "-c", "echo hello; echo oops >&2"))
            #expect(result.status == .succeeded)
            #expect(result.exitCode == 0)
            #expect(String(decoding: result.stdout, as: UTF8.self) == "hello\n")
            #expect(String(decoding: result.stderr, as: UTF8.self) == "oops\n")
            #expect(result.nodeID.hasPrefix("node-"))
            #expect(result.attempt == 1)
            #expect(result.tenant == "acme")

            let python = try await cluster.run(command("/usr/bin/python3", "-c", "print(6*7)"))
            #expect(String(decoding: python.stdout, as: UTF8.self) == "42\n")
        }
    }

    @Test("a non-zero exit is FAILED with its code")
    func nonZeroExit() async throws {
        try await withCluster { cluster in
            let result = try await cluster.run(command("/bin/sh", "-c", "exit 7"))
            #expect(result.status == .failed)
            #expect(result.exitCode == 7)
        }
    }

    @Test("a sleeping job is TIMED_OUT and leaves no process behind")
    func timeout() async throws {
        try await withCluster { cluster in
            let marker = "41.\(Int.random(in: 100_000...999_999))"
            let started = ContinuousClock.now
            let result = try await cluster.run(
                command("/bin/sh", "-c", "sleep \(marker) & setsid sleep \(marker) & sleep \(marker)", timeoutMs: 1000)
            )
            #expect(result.status == .timedOut)
            #expect(ContinuousClock.now - started < .seconds(10))
            // Everything the job started is gone (give the kernel a moment to reap).
            let deadline = ContinuousClock.now + .seconds(3)
            var survivors = processes(containing: marker)
            while !survivors.isEmpty && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
                survivors = processes(containing: marker)
            }
            #expect(survivors.isEmpty, "processes left behind: \(survivors)")
        }
    }

    @Test("an invalid request is REJECTED with a reason, and the scheduler keeps serving")
    func invalidRequest() async throws {
        try await withCluster { cluster in
            var bad = command("/bin/true")
            bad.limits.timeoutMs = 10_000_000
            guard case .rejected(let rejected) = try await cluster.submit(bad).outcome else {
                Issue.record("expected a rejection")
                return
            }
            #expect(rejected.reason == .limitExceeded)
            #expect(rejected.field == "limits.timeout_ms")

            let garbage = try await cluster.client.request(
                Subjects.submit(tenant: "acme"),
                payload: Data([0xFF, 0xFF, 0xFF, 0x01]),
                timeout: .seconds(5)
            )
            let garbageReply = try Hangar_V1_SubmitReply(serializedBytes: garbage.payload)
            guard case .rejected(let notProtobuf) = garbageReply.outcome else {
                Issue.record("expected a rejection of a garbage payload")
                return
            }
            #expect(notProtobuf.field == "payload")

            guard
                case .rejected(let noCapacity) = try await cluster.submit(command("/bin/true", runtime: "gvisor"))
                    .outcome
            else {
                Issue.record("expected no capacity")
                return
            }
            #expect(noCapacity.reason == .noCapacity)
            #expect(noCapacity.message.contains("gvisor"))

            let after = try await cluster.run(command("/bin/echo", "still here"))
            #expect(after.status == .succeeded)
            #expect(String(decoding: after.stdout, as: UTF8.self) == "still here\n")
        }
    }

    @Test("the result is in SQLite once the reply arrives")
    func storedResult() async throws {
        try await withCluster { cluster in
            let result = try await cluster.run(command("/bin/sh", "-c", "echo stored; exit 3"))
            let queue = try DatabaseQueue(path: cluster.databasePath)
            let row = try queue.read { db in
                try Row.fetchOne(
                    db,
                    sql: "SELECT status, exit_code, result FROM results WHERE job_id = ?",
                    arguments: [result.jobID]
                )
            }
            let stored = try #require(row)
            #expect(stored["status"] as String == "FAILED")
            #expect(stored["exit_code"] as Int == 3)
            let decoded = try Hangar_V1_Result(serializedBytes: stored["result"] as Data)
            #expect(String(decoding: decoded.stdout, as: UTF8.self) == "stored\n")
            let events = try await queue.read { db in
                try String.fetchAll(
                    db,
                    sql: "SELECT event FROM audit WHERE job_id = ? ORDER BY seq",
                    arguments: [result.jobID]
                )
            }
            #expect(events == ["job.accepted", "attempt.placed", "job.finished"])

            var verify = Hangar_V1_AuditRequest()
            verify.verify = true
            let chain = try await cluster.admin("audit", verify, as: Hangar_V1_AuditReply.self)
            #expect(chain.verified, "\(chain.message)")
            #expect(chain.rowsChecked >= 3)
            var list = Hangar_V1_AuditRequest()
            list.jobID = result.jobID
            let listed = try await cluster.admin("audit", list, as: Hangar_V1_AuditReply.self)
            #expect(listed.events.map(\.event) == ["job.accepted", "attempt.placed", "job.finished"])
            #expect(listed.events.allSatisfy { $0.hash.count == 64 })
        }
    }

    @Test("async mode: Accepted at once, the result on hangar.result.<tenant>.<job>; a repeat id is the same job")
    func asyncAndIdempotent() async throws {
        try await withCluster { cluster in
            let results = try cluster.client.subscribe("hangar.result.acme.>")
            try await cluster.client.flush()
            var request = command("/bin/echo", "later")
            request.requestID = "req-\(UUID().uuidString)"
            guard case .accepted(let accepted) = try await cluster.submit(request).outcome else {
                Issue.record("expected Accepted")
                return
            }
            #expect(!accepted.duplicate)
            guard case .accepted(let again) = try await cluster.submit(request).outcome else {
                Issue.record("expected Accepted for the repeat")
                return
            }
            #expect(again.jobID == accepted.jobID)
            #expect(again.duplicate)

            let stopper = Task {
                try await Task.sleep(for: .seconds(20))
                results.unsubscribe()
            }
            defer { stopper.cancel() }
            var iterator = results.makeAsyncIterator()
            let message = try #require(await iterator.next())
            #expect(message.subject == "hangar.result.acme.\(accepted.jobID)")
            let result = try Hangar_V1_Result(serializedBytes: message.payload)
            #expect(String(decoding: result.stdout, as: UTF8.self) == "later\n")

            // After it finished, a repeat in wait mode returns the stored result.
            request.wait = true
            guard case .result(let stored) = try await cluster.submit(request).outcome else {
                Issue.record("expected the stored result")
                return
            }
            #expect(stored.jobID == accepted.jobID)
            #expect(try await cluster.scheduler.store.count("jobs") == 1)
        }
    }

    @Test("wait mode: the reply has the result, and it is also published on hangar.result.<tenant>.<job>")
    func waitModeResultIsPublished() async throws {
        try await withCluster { cluster in
            let results = try cluster.client.subscribe("hangar.result.acme.>")
            try await cluster.client.flush()
            var request = command("/bin/echo", "now")
            request.wait = true
            let reply = try await cluster.submit(request)
            guard case .result(let answered) = reply.outcome else {
                Issue.record("expected a Result, got \(reply)")
                return
            }
            let stopper = Task {
                try await Task.sleep(for: .seconds(10))
                results.unsubscribe()
            }
            defer { stopper.cancel() }
            var iterator = results.makeAsyncIterator()
            let message = try #require(await iterator.next())
            #expect(message.subject == "hangar.result.acme.\(answered.jobID)")
            let published = try Hangar_V1_Result(serializedBytes: message.payload)
            #expect(published == answered)
        }
    }

    @Test("1,000 concurrent null jobs all complete exactly once")
    func thousandNullJobs() async throws {
        try await withCluster(slots: 64) { cluster in
            let count = 1000
            let ids = try await withThrowingTaskGroup(of: (String, Hangar_V1_JobStatus).self) { group in
                for _ in 0..<count {
                    group.addTask {
                        let result = try await cluster.run(command("/bin/true", runtime: "null"))
                        return (result.jobID, result.status)
                    }
                }
                var collected: [(String, Hangar_V1_JobStatus)] = []
                for try await item in group { collected.append(item) }
                return collected
            }
            #expect(ids.count == count)
            #expect(Set(ids.map(\.0)).count == count)
            #expect(ids.allSatisfy { $0.1 == .succeeded })
            let queue = try DatabaseQueue(path: cluster.databasePath)
            let (results, finished, attempts) = try await queue.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM results") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.finished'") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(DISTINCT job_id) FROM attempts WHERE status = 'SUCCEEDED'")
                        ?? 0
                )
            }
            #expect(results == count)
            #expect(finished == count)
            #expect(attempts == count)
            let statistics = cluster.scheduler.store.commitStatistics
            #expect(statistics.transactions < statistics.operations)
        }
    }
}

/// Host processes whose command line contains `marker`.
func processes(containing marker: String) -> [String] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { pid -> String? in
        guard Int(pid) != nil,
            let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty
        else { return nil }
        let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        return line.contains(marker) && !line.contains("swift") ? "\(pid): \(line)" : nil
    }
}
