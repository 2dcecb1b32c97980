import Foundation
import GRDB
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Synchronization
import Testing

@Suite("Scheduler brain: failures, operator controls, fairness, rate limits, cancel", .serialized)
struct SchedulerBrainTests {
    @Test("a node killed mid-load has its jobs retried elsewhere, and none finishes twice")
    func nodeKilledMidLoad() async throws {
        try await withCluster(
            nodes: 3,
            slots: 4,
            // Long enough that all 12 are placed before the first ends, even when other suites load
            // the machine: with 1.5 s, node-1 once never held its 4 at the same time.
            runtimes: [DelayRuntime(delay: .seconds(5))],
            settings: SchedulerSettings(nodeTTL: .milliseconds(1500), nodeGrace: .milliseconds(1000))
        ) { cluster in
            let count = 12
            let results = try await withThrowingTaskGroup(of: Hangar_V1_Result.self) { group in
                for _ in 0..<count {
                    group.addTask { try await cluster.run(command("/bin/true", runtime: "null")) }
                }
                // Crash node-1 once it runs its share (bounded wait; a fixed delay raced placement
                // when other suites loaded the machine).
                let deadline = ContinuousClock.now + .seconds(20)
                while cluster.agents[0].runningCount < 4 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(cluster.agents[0].runningCount == 4, "node-1 never ran its 4 jobs")
                await cluster.crashNode(1)
                var collected: [Hangar_V1_Result] = []
                for try await result in group { collected.append(result) }
                return collected
            }
            #expect(results.count == count)
            #expect(results.allSatisfy { $0.status == .succeeded })
            #expect(results.allSatisfy { $0.nodeID != "node-1" })
            #expect(results.contains { $0.attempt > 1 }, "some job should have been retried")

            let queue = try DatabaseQueue(path: cluster.databasePath)
            let (finished, stored, lost, retriedJobs) = try await queue.read { db in
                (
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit WHERE event = 'job.finished'") ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM results") ?? 0,
                    try Int.fetchOne(
                        db,
                        sql: "SELECT COUNT(*) FROM attempts WHERE status = 'LOST' AND node_id = 'node-1'"
                    ) ?? 0,
                    try Int.fetchOne(db, sql: "SELECT COUNT(DISTINCT job_id) FROM attempts WHERE attempt > 1") ?? 0
                )
            }
            #expect(finished == count)
            #expect(stored == count)
            #expect(lost == 4)  // node-1 held 4 of the 12 (spread over 3 × 4 slots)
            #expect(retriedJobs == 4)
            let attemptStatuses = try await queue.read { db in
                try Row.fetchAll(
                    db,
                    sql: "SELECT job_id, attempt, node_id, status FROM attempts ORDER BY job_id, attempt"
                )
                .map {
                    "\($0["job_id"] as String)/\($0["attempt"] as Int)@\($0["node_id"] as String)=\($0["status"] as String)"
                }
            }
            // Only node-1's attempts were lost: the others kept heartbeating.
            #expect(
                attemptStatuses.filter { $0.hasSuffix("=LOST") }.allSatisfy { $0.contains("@node-1=") },
                "\(attemptStatuses)"
            )
            let nodes = try await cluster.admin("nodes", Hangar_V1_NodesRequest(), as: Hangar_V1_NodesReply.self)
            #expect(nodes.nodes.first { $0.lastHeartbeat.nodeID == "node-1" }?.state == .down)
        }
    }

    @Test("a job whose node dies with no retries left ends LOST with the reason")
    func lostWithoutRetries() async throws {
        try await withCluster(
            nodes: 1,
            slots: 2,
            runtimes: [DelayRuntime(delay: .seconds(30))],
            settings: SchedulerSettings(nodeTTL: .milliseconds(1500), nodeGrace: .milliseconds(1000))
        ) { cluster in
            var request = command("/bin/true", runtime: "null")
            request.retry.maxAttempts = 1
            async let result = cluster.run(request)
            let deadline = ContinuousClock.now + .seconds(20)
            while cluster.agents[0].runningCount < 1 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(cluster.agents[0].runningCount == 1, "node-1 never ran the job")
            await cluster.crashNode(1)
            let lost = try await result
            #expect(lost.status == .lost)
            #expect(lost.message.contains("stopped sending heartbeats"))
            #expect(lost.message.contains("no retries left"))
        }
    }

    @Test("a draining node gets no new work; the operator action is audited with who did it")
    func drainingNode() async throws {
        try await withCluster(nodes: 2, slots: 8, runtimes: [NullRuntime()]) { cluster in
            var drain = Hangar_V1_DrainRequest()
            drain.nodeID = "node-1"
            drain.drain = true
            drain.actor = "alice@ops"
            let reply = try await cluster.admin("drain", drain, as: Hangar_V1_AdminReply.self)
            #expect(reply.ok)
            var results: [Hangar_V1_Result] = []
            for _ in 0..<20 { results.append(try await cluster.run(command("/bin/true", runtime: "null"))) }
            #expect(results.allSatisfy { $0.nodeID == "node-2" })

            let nodes = try await cluster.admin("nodes", Hangar_V1_NodesRequest(), as: Hangar_V1_NodesReply.self)
            #expect(nodes.nodes.first { $0.lastHeartbeat.nodeID == "node-1" }?.state == .draining)
            let events = try await cluster.scheduler.store.auditEvents()
            #expect(events.contains { $0.event == "node.drain" && $0.actor == "operator:alice@ops" })

            var ineligible = Hangar_V1_EligibilityRequest()
            ineligible.nodeID = "node-2"
            ineligible.eligible = false
            ineligible.actor = "bob@ops"
            #expect(try await cluster.admin("eligibility", ineligible, as: Hangar_V1_AdminReply.self).ok)
            // Neither node takes work now: the job waits, then runs once node-1 is undrained.
            async let waiting = cluster.run(command("/bin/true", runtime: "null"))
            try await Task.sleep(for: .milliseconds(500))
            drain.drain = false
            #expect(try await cluster.admin("drain", drain, as: Hangar_V1_AdminReply.self).ok)
            let late = try await waiting
            #expect(late.nodeID == "node-1")
            #expect(late.timings.queuedMs >= 400)

            var unknown = Hangar_V1_DrainRequest()
            unknown.nodeID = "nope"
            unknown.drain = true
            let refused = try await cluster.admin("drain", unknown, as: Hangar_V1_AdminReply.self)
            #expect(!refused.ok)
            #expect(refused.message.contains("nope"))
        }
    }

    @Test("two tenants with weights 1 and 3 under saturation complete work in about a 1:3 ratio")
    func weightedFairness() async throws {
        let tenantsFile = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tenants-\(UUID().uuidString).yaml"
        )
        try "tenants:\n  light: {weight: 1}\n  heavy: {weight: 3}\n".write(
            to: tenantsFile,
            atomically: true,
            encoding: .utf8
        )
        defer { try? FileManager.default.removeItem(at: tenantsFile) }
        try await withCluster(
            nodes: 1,
            slots: 4,
            runtimes: [DelayRuntime(delay: .milliseconds(50))],
            settings: SchedulerSettings(tenantsFile: tenantsFile.path)
        ) { cluster in
            let counts = Tally()
            let deadline = ContinuousClock.now + .seconds(4)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for tenant in ["light", "heavy"] {
                    for _ in 0..<12 {
                        group.addTask {
                            while ContinuousClock.now < deadline {
                                let result = try await cluster.run(
                                    command("/bin/true", runtime: "null"),
                                    tenant: tenant
                                )
                                if result.status == .succeeded { counts.add(tenant) }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let done = counts.snapshot
            let ratio = Double(done["heavy"] ?? 0) / Double(max(1, done["light"] ?? 0))
            #expect(ratio > 2.2 && ratio < 4.0, "heavy:light = \(done["heavy"] ?? 0):\(done["light"] ?? 0)")
        }
    }

    @Test("a rate-limited tenant gets rate_limited with a retry-after; another tenant is unaffected")
    func rateLimited() async throws {
        let tenantsFile = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tenants-\(UUID().uuidString).yaml"
        )
        try "tenants:\n  slow: {rate: 1, burst: 3}\n".write(to: tenantsFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: tenantsFile) }
        try await withCluster(
            nodes: 1,
            slots: 8,
            runtimes: [NullRuntime()],
            settings: SchedulerSettings(tenantsFile: tenantsFile.path)
        ) {
            cluster in
            var limited = 0
            var accepted = 0
            for _ in 0..<10 {
                var request = command("/bin/true", runtime: "null")
                request.wait = true
                switch try await cluster.submit(request, tenant: "slow").outcome {
                case .rejected(let rejected):
                    #expect(rejected.reason == .rateLimited)
                    #expect(rejected.retryAfterMs > 0)
                    limited += 1
                case .result: accepted += 1
                default: Issue.record("unexpected reply")
                }
            }
            #expect(accepted >= 3 && accepted <= 4)
            #expect(limited == 10 - accepted)
            for _ in 0..<10 {
                let result = try await cluster.run(command("/bin/true", runtime: "null"), tenant: "other")
                #expect(result.status == .succeeded)
            }
        }
    }

    @Test("a tenant cancels its running and queued jobs; the sandbox dies; others cannot cancel them")
    func cancel() async throws {
        try await withCluster(nodes: 1, slots: 1) { cluster in
            let marker = "43.\(Int.random(in: 100_000...999_999))"
            var running = command("/bin/sh", "-c", "sleep \(marker)", timeoutMs: 60_000)
            running.wait = false
            guard case .accepted(let first) = try await cluster.submit(running).outcome else {
                Issue.record("expected Accepted")
                return
            }
            guard case .accepted(let second) = try await cluster.submit(running).outcome else {  // queued behind
                Issue.record("expected Accepted")
                return
            }
            let appeared = ContinuousClock.now + .seconds(15)
            while processes(containing: marker).isEmpty && ContinuousClock.now < appeared {
                try await Task.sleep(for: .milliseconds(50))
            }
            var firstJob = Hangar_V1_JobRequest()
            firstJob.jobID = first.jobID
            let state = try await cluster.admin("job", firstJob, as: Hangar_V1_JobReply.self)
            #expect(!processes(containing: marker).isEmpty, "the job's sleep never appeared; the job is \(state)")

            func cancel(_ id: String, tenant: String = "acme") async throws -> Hangar_V1_CancelReply {
                var request = Hangar_V1_CancelRequest()
                request.jobID = id
                let answer = try await cluster.client.request(
                    Subjects.cancel(tenant: tenant),
                    payload: try request.serializedData(),
                    timeout: .seconds(5)
                )
                return try Hangar_V1_CancelReply(serializedBytes: answer.payload)
            }
            let intruder = try await cancel(first.jobID, tenant: "mallory")
            #expect(!intruder.cancelled)
            #expect(!intruder.message.contains("acme"))
            #expect(try await cancel(second.jobID).cancelled)
            #expect(try await cancel(first.jobID).cancelled)
            let gone = ContinuousClock.now + .seconds(5)
            while !processes(containing: marker).isEmpty && ContinuousClock.now < gone {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(processes(containing: marker).isEmpty)
            for id in [first.jobID, second.jobID] {
                var request = Hangar_V1_JobRequest()
                request.jobID = id
                let reply = try await cluster.admin("job", request, as: Hangar_V1_JobReply.self)
                guard case .result(let result) = reply.outcome else {
                    Issue.record("expected a stored result for \(id)")
                    continue
                }
                #expect(result.status == .cancelled)
            }
            let again = try await cancel(first.jobID)
            #expect(!again.cancelled)
            #expect(again.message.contains("already finished"))
        }
    }
}

/// Counts per key from many tasks.
final class Tally: Sendable {
    private let counts = Mutex<[String: Int]>([:])

    func add(_ key: String) { counts.withLock { $0[key, default: 0] += 1 } }

    var snapshot: [String: Int] { counts.withLock { $0 } }
}
