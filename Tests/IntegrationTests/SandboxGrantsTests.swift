import Foundation
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Testing

/// A sandbox's grants and network go through the job rules at the scheduler: beyond the tenant's
/// maximum it is refused NOT_ALLOWED naming the grant (and audited `grant.denied`); within it the
/// normalized grants and the allowlist they make reach the node's `SandboxStart` (and are audited
/// `grant.granted`). A real scheduler, nats-server and SQLite file; `null` sandboxes.
@Suite("Stateful sandboxes: grants and network at the scheduler", .serialized)
struct SandboxGrantsTests {
    static func tenantsFile() throws -> URL {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("tenants-\(UUID().uuidString).yaml")
        try """
        tenants:
          acme:
            grants:
              allow_read: [/srv/data]
              deny_read: [/srv/data/secret]
              allow_net: [203.0.113.0/24]
            sandbox_default_grants:
              allow_net: [203.0.113.0/24]

        """.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    @Test("beyond the tenant's maximum: NOT_ALLOWED naming the grant; within it: the grants reach SandboxStart")
    func beyondAndWithin() async throws {
        let tenants = try Self.tenantsFile()
        defer { try? FileManager.default.removeItem(at: tenants) }
        try await withCluster(
            nodes: 1,
            runtimes: [NullRuntime()],
            settings: SchedulerSettings(tenantsFile: tenants.path)
        ) { cluster in
            // A copy of every start the scheduler sends node-1 (the node answers; this only listens).
            let starts = try await cluster.client.subscribeConfirmed(Subjects.sandboxStart(node: "node-1"))
            defer { starts.unsubscribe() }

            var beyond = Hangar_V1_SandboxCreateRequest()
            beyond.runtime = "null"
            beyond.grants.allowNet = ["198.51.100.7"]
            guard case .rejected(let net) = try await cluster.createSandbox(beyond).outcome else {
                Issue.record("a network grant beyond the maximum was not refused")
                return
            }
            #expect(net.reason == .notAllowed && net.field == "grants.allow_net[0]", "\(net)")
            #expect(net.message.contains("198.51.100.7"), "\(net.message)")

            beyond = Hangar_V1_SandboxCreateRequest()
            beyond.runtime = "null"
            beyond.grants.allowRead = ["/etc"]
            guard case .rejected(let path) = try await cluster.createSandbox(beyond).outcome else {
                Issue.record("a path grant beyond the maximum was not refused")
                return
            }
            #expect(path.reason == .notAllowed && path.field == "grants.allow_read[0]", "\(path)")

            // The older alias (network.allow) is bounded by the same maximum.
            beyond = Hangar_V1_SandboxCreateRequest()
            beyond.runtime = "null"
            beyond.network.mode = .networkAllowlist
            beyond.network.allow = ["192.0.2.0/24"]
            guard case .rejected(let alias) = try await cluster.createSandbox(beyond).outcome else {
                Issue.record("a network.allow beyond the maximum was not refused")
                return
            }
            #expect(alias.reason == .notAllowed && alias.field == "network.allow[0]", "\(alias)")

            var within = Hangar_V1_SandboxCreateRequest()
            within.runtime = "null"
            within.grants.allowRead = ["/srv/data/public"]
            within.grants.allowNet = ["203.0.113.9"]
            let created = try #require(try await cluster.createSandbox(within).createdInfo, "not created")
            #expect(created.state == .sandboxRunning)
            var start: Hangar_V1_SandboxStart?
            let deadline = ContinuousClock.now + .seconds(10)
            while start == nil, ContinuousClock.now < deadline,
                let message = try await firstMessage(of: starts, within: deadline - ContinuousClock.now)
            {
                let decoded = try Hangar_V1_SandboxStart(serializedBytes: message.payload)
                if decoded.sandboxID == created.id { start = decoded }
            }
            let sent = try #require(start, "no SandboxStart for \(created.id)")
            #expect(sent.grants.allowRead == ["/srv/data/public"])
            #expect(sent.grants.denyRead == ["/srv/data/secret"])  // the tenant's deny added
            #expect(sent.grants.allowNet == ["203.0.113.9"])
            #expect(sent.network.mode == .networkAllowlist)
            #expect(sent.network.allow == ["203.0.113.9/32"])

            var rows: [Hangar_V1_AuditEvent] = []
            try await waitUntil("both grant decisions are audited") {
                rows = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 1000)
                    .filter { $0.event.hasPrefix("grant.") }
                return rows.count >= 4
            }
            let granted = try #require(rows.first { $0.event == "grant.granted" })
            #expect(granted.jobID == created.id && granted.actor == "tenant:acme")
            #expect(granted.detail.contains("granted: allow_read=/srv/data/public"), "\(granted.detail)")
            #expect(granted.detail.contains("network.allow=203.0.113.9/32"), "\(granted.detail)")
            let denied = rows.filter { $0.event == "grant.denied" }.map(\.detail)
            #expect(denied.contains { $0.contains("grants.allow_net[0]") }, "\(denied)")
            #expect(denied.contains { $0.contains("grants.allow_read[0]") }, "\(denied)")
            #expect(denied.contains { $0.contains("network.allow[0]") }, "\(denied)")
        }
    }

    @Test("path grants a sandbox cannot take are refused naming them; a NETWORK_ALLOWLIST without CIDRs too")
    func refusedForSandboxes() async throws {
        let tenants = try Self.tenantsFile()
        defer { try? FileManager.default.removeItem(at: tenants) }
        try await withCluster(
            nodes: 1,
            runtimes: [NullRuntime()],
            settings: SchedulerSettings(tenantsFile: tenants.path)
        ) { cluster in
            // wasm runs one-shot jobs only: its sandboxes cannot take path grants.
            var request = Hangar_V1_SandboxCreateRequest()
            request.runtime = "wasm"
            request.grants.allowRead = ["/srv/data"]
            guard case .rejected(let wasm) = try await cluster.createSandbox(request).outcome else {
                Issue.record("a path grant on a wasm sandbox was not refused")
                return
            }
            #expect(wasm.reason == .unsupported && wasm.field == "grants.allow_read[0]", "\(wasm)")

            request = Hangar_V1_SandboxCreateRequest()
            request.runtime = "null"
            request.network.mode = .networkAllowlist
            guard case .rejected(let empty) = try await cluster.createSandbox(request).outcome else {
                Issue.record("an allowlist without CIDRs was not refused")
                return
            }
            #expect(empty.reason == .invalidRequest && empty.field == "network.allow", "\(empty)")
        }
    }

    @Test(
        "a create naming neither grants nor a network gets the tenant's sandbox default; one that names either does not"
    )
    func tenantDefault() async throws {
        let tenants = try Self.tenantsFile()
        defer { try? FileManager.default.removeItem(at: tenants) }
        try await withCluster(
            nodes: 1,
            runtimes: [NullRuntime()],
            settings: SchedulerSettings(tenantsFile: tenants.path)
        ) { cluster in
            var unset = Hangar_V1_SandboxCreateRequest()
            unset.runtime = "null"
            let defaulted = try #require(try await cluster.createSandbox(unset).createdInfo, "not created")
            let stored = try #require(try await cluster.scheduler.store.sandbox(id: defaulted.id))
            #expect(stored.request.grants.allowNet == ["203.0.113.0/24"], "\(stored.request)")
            #expect(stored.request.network.mode == .networkAllowlist)

            // An explicit "no network" (E2B's allow_internet_access=False): a network policy, mode NONE.
            var none = Hangar_V1_SandboxCreateRequest()
            none.runtime = "null"
            none.network = Hangar_V1_NetworkPolicy()
            let plain = try #require(try await cluster.createSandbox(none).createdInfo, "not created")
            let storedPlain = try #require(try await cluster.scheduler.store.sandbox(id: plain.id))
            #expect(!storedPlain.request.hasGrants && storedPlain.request.network.mode != .networkAllowlist)

            // Empty grants are explicit too.
            var empty = Hangar_V1_SandboxCreateRequest()
            empty.runtime = "null"
            empty.grants = Hangar_V1_Grants()
            let bare = try #require(try await cluster.createSandbox(empty).createdInfo, "not created")
            let storedBare = try #require(try await cluster.scheduler.store.sandbox(id: bare.id))
            #expect(storedBare.request.grants.allowNet.isEmpty && storedBare.request.network.mode != .networkAllowlist)
        }
    }
}
