import Foundation
import HangarNode
import HangarScheduler
import HangarShared
import Testing

/// Every grant decision is in the tamper-evident audit trail: a job granted host paths is audited
/// `grant.granted` with what it asked and got; a request beyond the tenant's maximum is refused and
/// audited `grant.denied` with the grant named. A real scheduler, nats-server and SQLite file.
@Suite("Grant decisions in the audit trail")
struct GrantAuditTests {
    @Test("granted and denied grants are audited with what was asked, and the chain stays intact")
    func audited() async throws {
        let tenantsFile = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tenants-\(UUID().uuidString).yaml"
        )
        try "tenants:\n  acme:\n    grants:\n      allow_read: [/srv/data]\n      deny_read: [/srv/data/secret]\n"
            .write(to: tenantsFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: tenantsFile) }
        try await withCluster(nodes: 1, settings: SchedulerSettings(tenantsFile: tenantsFile.path)) { cluster in
            var request = Hangar_V1_SubmitRequest()
            request.runtime = "null"
            request.argv = ["/bin/true"]
            request.grants.allowRead = ["/srv/data/public"]
            let result = try await cluster.run(request)
            #expect(result.status == .succeeded, "\(result)")

            var beyond = request
            beyond.grants.allowRead = ["/etc"]
            let reply = try await cluster.submit(beyond)
            guard case .rejected(let rejected) = reply.outcome else {
                Issue.record("expected a rejection, got \(reply)")
                return
            }
            #expect(rejected.reason == .notAllowed && rejected.field == "grants.allow_read[0]")

            var rows: [Hangar_V1_AuditEvent] = []
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                rows = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 1000)
                    .filter { $0.event.hasPrefix("grant.") }
                if rows.count >= 2 { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            let granted = rows.first { $0.event == "grant.granted" }
            #expect(granted?.jobID == result.jobID)
            #expect(granted?.actor == "tenant:acme")
            #expect(
                granted?.detail
                    == "asked: allow_read=/srv/data/public; granted: allow_read=/srv/data/public deny_read=/srv/data/secret",
                "\(String(describing: granted))"
            )
            let denied = rows.first { $0.event == "grant.denied" }
            #expect(denied?.detail.contains("asked: allow_read=/etc") == true, "\(String(describing: denied))")
            #expect(denied?.detail.contains("grants.allow_read[0]") == true)
            let (_, firstBad, _) = try await cluster.scheduler.store.verifyAudit()
            #expect(firstBad == nil)
        }
    }
}
