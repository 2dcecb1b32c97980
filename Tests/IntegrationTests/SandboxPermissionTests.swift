import Foundation
import HangarClusterTestSupport
import HangarNATS
import HangarScheduler
import HangarShared
import SwiftProtobuf
import Testing

/// Stateful sandboxes under Hangar's generated NATS authorization: each tenant reaches only its
/// own sandboxes and events, each node only its own sandbox subjects.
@Suite("Stateful sandboxes: tenant isolation", .serialized)
struct SandboxPermissionTests {
    @Test("tenant B cannot see, time out or kill A's sandbox, read its events, or aim the answers at A's inbox")
    func tenantsAreIsolated() async throws {
        try await withAuthorizedCluster { cluster in
            let events = try await cluster.tenantA.subscribeConfirmed("hangar.sbxevents.a.>")
            defer { events.unsubscribe() }
            var create = Hangar_V1_SandboxCreateRequest()
            create.runtime = "null"
            let created: Hangar_V1_SandboxCreateReply = try await request(
                cluster.tenantA,
                "a",
                "create",
                create,
                timeout: .seconds(20)
            )
            guard case .created(let sandbox) = created.outcome else {
                Issue.record("A could not create a sandbox: \(created)")
                return
            }
            #expect(sandbox.state == .sandboxRunning)
            let id = sandbox.id

            // On its own subjects B is told A's sandbox does not exist, and each try is audited.
            let get: Hangar_V1_SandboxReply = try await request(
                cluster.tenantB,
                "b",
                "get",
                Hangar_V1_SandboxGetRequest.with { $0.sandboxID = id }
            )
            #expect(get.error.code == .sandboxNotFound && get.error.message == "tenant 'b' has no sandbox '\(id)'")
            let kill: Hangar_V1_SandboxReply = try await request(
                cluster.tenantB,
                "b",
                "kill",
                Hangar_V1_SandboxKillRequest.with { $0.sandboxID = id }
            )
            #expect(kill.error.code == .sandboxNotFound)
            let timeout: Hangar_V1_SandboxReply = try await request(
                cluster.tenantB,
                "b",
                "timeout",
                Hangar_V1_SandboxSetTimeoutRequest.with {
                    $0.sandboxID = id
                    $0.timeoutMs = 1
                }
            )
            #expect(timeout.error.code == .sandboxNotFound)
            let replay: Hangar_V1_SandboxEventsReply = try await request(
                cluster.tenantB,
                "b",
                "events",
                Hangar_V1_SandboxEventsRequest.with { $0.sandboxID = id }
            )
            #expect(replay.events.isEmpty && replay.error.isEmpty)
            let denied = try await auditRows(cluster, count: 3) { $0.event == "access.denied" && $0.jobID == id }
            #expect(denied.count == 3 && denied.allSatisfy { $0.actor == "tenant:b" })

            // A's subjects are closed to B by the server.
            await expectPermissionDenied("B killing on hangar.sandbox.a.kill") {
                try await cluster.tenantB.publishConfirmed(
                    Subjects.sandbox(tenant: "a", verb: "kill"),
                    payload: try Hangar_V1_SandboxKillRequest.with { $0.sandboxID = id }.serializedData()
                )
            }
            for subject in ["hangar.sbxevents.a.>", "hangar.sbxevents.>", "hangar.sandbox.a.kill"] {
                await expectPermissionDenied("B subscribing to \(subject)") {
                    _ = try await cluster.tenantB.subscribeConfirmed(subject)
                }
            }
            await expectPermissionDenied("B reading the events stream through the JetStream API") {
                try await cluster.tenantB.publishConfirmed(
                    "$JS.API.STREAM.MSG.GET.\(Streams.sandboxEvents)",
                    payload: Data("{\"seq\":1}".utf8)
                )
            }

            // The reply-subject trick: B asks on its own subject for the answer in A's inbox.
            let inbox = try await cluster.tenantA.subscribeConfirmed("_INBOX.t.a.>")
            defer { inbox.unsubscribe() }
            try await cluster.tenantB.publishConfirmed(
                Subjects.sandbox(tenant: "b", verb: "list"),
                payload: try Hangar_V1_SandboxListRequest().serializedData(),
                replyTo: "_INBOX.t.a.spoofed.1"
            )
            let spoofed = try await auditRows(cluster) {
                $0.event == "access.denied" && $0.actor == "tenant:b" && $0.detail.contains("hangar.sandbox.b.list")
            }
            #expect(spoofed.count == 1 && spoofed[0].detail.contains("not in tenant-b's own inbox"))
            #expect(try await firstMessage(of: inbox, within: .milliseconds(300)) == nil)

            // A's sandbox is untouched and A still reaches it; A's events reached only A.
            let mine: Hangar_V1_SandboxReply = try await request(
                cluster.tenantA,
                "a",
                "get",
                Hangar_V1_SandboxGetRequest.with { $0.sandboxID = id }
            )
            #expect(mine.info.state == .sandboxRunning)
            let first = try #require(try await firstMessage(of: events, within: .seconds(5)))
            #expect(try Hangar_V1_SandboxEvent(serializedBytes: first.payload).sandboxID == id)
            // A replays its own events through the scheduler (which reads the stream as itself).
            var ownReplay = Hangar_V1_SandboxEventsReply()
            let deadline = ContinuousClock.now + .seconds(5)
            while ownReplay.events.count < 2 && ContinuousClock.now < deadline {
                ownReplay = try await request(
                    cluster.tenantA,
                    "a",
                    "events",
                    Hangar_V1_SandboxEventsRequest.with { $0.sandboxID = id }
                )
                #expect(ownReplay.error.isEmpty, "A's replay: \(ownReplay.error)")
                if ownReplay.events.count < 2 { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(ownReplay.events.map(\.kind) == [.sandboxEventCreated, .sandboxEventStarted])
        }
    }

    @Test("a node may take only its own sandbox starts and kills and report only its own deaths")
    func nodesKeepToTheirOwn() async throws {
        try await withAuthorizedCluster { cluster in
            let node = try await cluster.login(.node("n1"))
            defer { Task { await node.close() } }
            for subject in [Subjects.sandboxStart(node: "n2"), Subjects.sandboxKill(node: "n2"), "hangar.sbxevents.>"] {
                await expectPermissionDenied("node n1 subscribing to \(subject)") {
                    _ = try await node.subscribeConfirmed(subject)
                }
            }
            await expectPermissionDenied("node n1 reporting n2's sandbox death") {
                try await node.publishConfirmed(Subjects.sandboxDied(node: "n2"), payload: Data())
            }
            await expectPermissionDenied("node n1 creating a sandbox as a tenant") {
                try await node.publishConfirmed(Subjects.sandbox(tenant: "a", verb: "create"), payload: Data())
            }
            try await node.publishConfirmed(Subjects.sandboxDied(node: "n1"), payload: Data())
        }
    }

    private func request<Reply: SwiftProtobuf.Message>(
        _ connection: NATSConnection,
        _ tenant: String,
        _ verb: String,
        _ message: some SwiftProtobuf.Message,
        timeout: Duration = .seconds(5)
    ) async throws -> Reply {
        let answer = try await connection.request(
            Subjects.sandbox(tenant: tenant, verb: verb),
            payload: try message.serializedData(),
            timeout: timeout
        )
        return try Reply(serializedBytes: answer.payload)
    }

    /// Audit rows `matching`, once there are `count` (bounded wait; audits are group-committed).
    private func auditRows(
        _ cluster: AuthorizedCluster,
        count: Int = 1,
        _ matching: (Hangar_V1_AuditEvent) -> Bool
    ) async throws -> [Hangar_V1_AuditEvent] {
        var rows: [Hangar_V1_AuditEvent] = []
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            rows = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 1000)
                .filter(matching)
            if rows.count >= count { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        return rows
    }
}
