import Foundation
import GRDB
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import SwiftProtobuf
import Testing

/// The control plane of stateful sandboxes against a real nats-server, a real SQLite store and node
/// agents whose sandbox hosts are stand-ins (``NullSandboxHost``: they hold ids, run nothing).
@Suite("Stateful sandboxes: control plane", .serialized)
struct SandboxControlTests {
    @Test("create runs a sandbox on a node that lists it in its heartbeat; get, list by metadata, events")
    func createGetList() async throws {
        try await withCluster(nodes: 2, runtimes: [NullRuntime()]) { cluster in
            let created = try await cluster.createSandbox(metadata: ["app": "web"])
            let info = try #require(created.createdInfo, "expected a sandbox, got \(created)")
            #expect(info.state == .sandboxRunning)
            #expect(info.tenant == "acme" && info.runtime == "null" && info.template == "host")
            #expect(info.endsAtMs > info.createdAtMs)
            let node = try #require(Int(info.nodeID.dropFirst("node-".count)), "node id \(info.nodeID)")
            #expect(cluster.sandboxHosts[node - 1].sandboxIDs == [info.id])
            // Listed in the node's heartbeats, as the scheduler sees them.
            try await waitUntil("node \(info.nodeID) lists the sandbox in its heartbeat") {
                let nodes = try await cluster.admin("nodes", Hangar_V1_NodesRequest(), as: Hangar_V1_NodesReply.self)
                return nodes.nodes.first { $0.lastHeartbeat.nodeID == info.nodeID }?.lastHeartbeat.sandboxes
                    == [info.id]
            }
            let other = try #require(try await cluster.createSandbox(metadata: ["app": "db"]).createdInfo)

            let got = try await cluster.sandbox("get", Hangar_V1_SandboxGetRequest.with { $0.sandboxID = info.id })
            #expect(got.info.id == info.id && got.info.state == .sandboxRunning && got.info.metadata == ["app": "web"])
            var list = Hangar_V1_SandboxListRequest()
            list.metadata = ["app": "web"]
            let web = try await cluster.sandboxList(list)
            #expect(web.sandboxes.map(\.id) == [info.id])
            let all = try await cluster.sandboxList(Hangar_V1_SandboxListRequest())
            #expect(Set(all.sandboxes.map(\.id)) == [info.id, other.id])
            list = Hangar_V1_SandboxListRequest()
            list.limit = 1
            let page = try await cluster.sandboxList(list)
            #expect(page.sandboxes.map(\.id) == [other.id] && page.more)  // newest first
            list.beforeID = other.id
            #expect(try await cluster.sandboxList(list).sandboxes.map(\.id) == [info.id])
            // Another tenant lists nothing of acme's.
            #expect(try await cluster.sandboxList(Hangar_V1_SandboxListRequest(), tenant: "zeta").sandboxes.isEmpty)

            // Its events, replayed from the stream: created then started, numbered within it.
            let events = try await cluster.waitForEvents(of: info.id, count: 2)
            #expect(events.map(\.kind) == [.sandboxEventCreated, .sandboxEventStarted])
            #expect(events.map(\.seq) == [1, 2])
            #expect(events.allSatisfy { $0.streamSeq > 0 && $0.tenant == "acme" })
            // Replay from a sequence.
            var after = Hangar_V1_SandboxEventsRequest()
            after.sandboxID = info.id
            after.afterSeq = events[0].streamSeq
            let rest: Hangar_V1_SandboxEventsReply = try await cluster.sandboxRequest("events", after)
            #expect(rest.events.map(\.kind) == [.sandboxEventStarted])

            // The store has both, RUNNING, and the audit their creation and start.
            let rows = try await cluster.sandboxRows()
            #expect(rows[info.id] == "RUNNING" && rows[other.id] == "RUNNING")
            let audit = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: info.id, sinceMs: 0, limit: 100)
            #expect(audit.map(\.event) == ["sandbox.created", "sandbox.placed", "sandbox.started"])
        }
    }

    @Test("a timeout set again ends the sandbox TIMED_OUT, with its event, and the node lets it go")
    func timeoutEndsIt() async throws {
        try await withCluster(nodes: 1, runtimes: [NullRuntime()]) { cluster in
            let info = try #require(try await cluster.createSandbox(timeoutMs: 60_000).createdInfo)
            let live = try await cluster.client.subscribeConfirmed(
                Subjects.sandboxEvents(tenant: "acme", sandbox: info.id)
            )
            defer { live.unsubscribe() }
            var timeout = Hangar_V1_SandboxSetTimeoutRequest()
            timeout.sandboxID = info.id
            timeout.timeoutMs = 300
            let set = try await cluster.sandbox("timeout", timeout)
            #expect(set.info.state == .sandboxRunning)
            #expect(set.info.endsAtMs < info.endsAtMs && set.info.endsAtMs > 0)
            let ended = try await nextEvent(of: live) { $0.kind == .sandboxEventEnded }
            #expect(ended.endReason == .sandboxTimedOut)
            #expect(ended.message == "its timeout passed")
            try await waitUntil("the node lets the sandbox go") { cluster.sandboxHosts[0].sandboxIDs.isEmpty }
            let got = try await cluster.sandbox("get", Hangar_V1_SandboxGetRequest.with { $0.sandboxID = info.id })
            #expect(got.info.state == .sandboxEnded && got.info.endReason == .sandboxTimedOut)
            // Above the tenant's maximum: refused, nothing changes.
            timeout.timeoutMs = 4_000_000
            let refused = try await cluster.sandbox("timeout", timeout)
            #expect(refused.error.code == .sandboxLimitExceeded)
            let events = try await cluster.waitForEvents(of: info.id, count: 4)
            #expect(
                events.map(\.kind) == [
                    .sandboxEventCreated, .sandboxEventStarted, .sandboxEventTimeoutSet, .sandboxEventEnded,
                ]
            )
        }
    }

    @Test("kill ends the sandbox KILLED with its event, gone from the node, stored and audited")
    func killEndsIt() async throws {
        try await withCluster(nodes: 1, runtimes: [NullRuntime()]) { cluster in
            let info = try #require(try await cluster.createSandbox().createdInfo)
            let live = try await cluster.client.subscribeConfirmed("hangar.sbxevents.acme.>")
            defer { live.unsubscribe() }
            let killed = try await cluster.sandbox("kill", Hangar_V1_SandboxKillRequest.with { $0.sandboxID = info.id })
            #expect(killed.info.state == .sandboxEnded && killed.info.endReason == .sandboxKilled)
            #expect(killed.info.message == "killed by its tenant")
            let ended = try await nextEvent(of: live) { $0.kind == .sandboxEventEnded }
            #expect(ended.sandboxID == info.id && ended.endReason == .sandboxKilled && ended.seq == 3)
            try await waitUntil("the node kills the sandbox") { cluster.sandboxHosts[0].sandboxIDs.isEmpty }
            // A start placed on an earlier life of the node is refused, as an assignment would be.
            var stale = Hangar_V1_SandboxStart()
            stale.sandboxID = "s-stale"
            stale.tenant = "acme"
            stale.runtime = "null"
            stale.nodeIncarnation = "an-earlier-life"
            let answer = try await cluster.client.request(
                Subjects.sandboxStart(node: "node-1"),
                payload: try stale.serializedData(),
                timeout: .seconds(5)
            )
            let refused = try Hangar_V1_SandboxStartReply(serializedBytes: answer.payload)
            #expect(refused.refused.message.hasPrefix("placed on incarnation an-earlier-life of this node"))
            #expect(cluster.sandboxHosts[0].sandboxIDs.isEmpty)
            // A second kill answers the ended sandbox as it is.
            let again = try await cluster.sandbox("kill", Hangar_V1_SandboxKillRequest.with { $0.sandboxID = info.id })
            #expect(again.info.state == .sandboxEnded && again.info.endReason == .sandboxKilled)
            #expect(try await cluster.sandboxRows()[info.id] == "ENDED")
            let audit = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: info.id, sinceMs: 0, limit: 100)
            #expect(audit.map(\.event).suffix(2) == ["sandbox.killed", "sandbox.ended"])
            #expect(audit.last?.detail == "KILLED: killed by its tenant")
            // Killed sandboxes are listed only when asked for.
            #expect(try await cluster.sandboxList(Hangar_V1_SandboxListRequest()).sandboxes.isEmpty)
            var endedOnes = Hangar_V1_SandboxListRequest()
            endedOnes.states = [.sandboxEnded]
            #expect(try await cluster.sandboxList(endedOnes).sandboxes.map(\.id) == [info.id])
        }
    }

    @Test("a sandbox that dies on its node ends DIED; one whose node crashes ends LOST, each with an event")
    func diedAndLost() async throws {
        try await withCluster(
            nodes: 2,
            runtimes: [NullRuntime()],
            settings: SchedulerSettings(nodeTTL: .milliseconds(1000), nodeGrace: .milliseconds(500))
        ) { cluster in
            let live = try await cluster.client.subscribeConfirmed("hangar.sbxevents.acme.>")
            defer { live.unsubscribe() }
            let first = try #require(try await cluster.createSandbox().createdInfo)
            let firstNode = Int(first.nodeID.dropFirst("node-".count))!
            cluster.sandboxHosts[firstNode - 1].die(first.id, message: "its agent exited with status 9")
            let died = try await nextEvent(of: live) { $0.kind == .sandboxEventEnded && $0.sandboxID == first.id }
            #expect(died.endReason == .sandboxDied && died.message == "its agent exited with status 9")

            let second = try #require(try await cluster.createSandbox().createdInfo)
            let secondNode = Int(second.nodeID.dropFirst("node-".count))!
            await cluster.crashNode(secondNode)
            let lost = try await nextEvent(of: live, within: .seconds(15)) {
                $0.kind == .sandboxEventEnded && $0.sandboxID == second.id
            }
            #expect(lost.endReason == .sandboxLost)
            #expect(lost.message.contains("stopped sending heartbeats") && lost.message.contains("its state is gone"))
            let got = try await cluster.sandbox("get", Hangar_V1_SandboxGetRequest.with { $0.sandboxID = second.id })
            #expect(got.info.state == .sandboxEnded && got.info.endReason == .sandboxLost)
            // The surviving node takes new sandboxes.
            let third = try #require(try await cluster.createSandbox().createdInfo)
            #expect(third.state == .sandboxRunning && third.nodeID != second.nodeID)
        }
    }

    @Test("a scheduler restart keeps a running sandbox: restored from the store, confirmed by heartbeats")
    func schedulerRestart() async throws {
        let settings = SchedulerSettings(nodeTTL: .milliseconds(1000), nodeGrace: .milliseconds(500))
        try await withCluster(nodes: 1, runtimes: [NullRuntime()], settings: settings) { cluster in
            var request = Hangar_V1_SandboxCreateRequest()
            request.runtime = "null"
            request.requestID = "restart-1"
            request.metadata = ["keep": "yes"]
            let info = try #require(try await cluster.createSandbox(request).createdInfo)
            await cluster.stopScheduler()
            let (_, task) = try await cluster.startScheduler(settings: settings)
            defer { task.cancel() }
            // Once the new scheduler serves, it answers for the sandbox it restored.
            var restored = Hangar_V1_SandboxReply()
            try await waitUntil("the restarted scheduler answers") {
                guard
                    let reply = try? await cluster.sandbox(
                        "get",
                        Hangar_V1_SandboxGetRequest.with { $0.sandboxID = info.id },
                        timeout: .seconds(2)
                    )
                else { return false }
                restored = reply
                return true
            }
            #expect(restored.info.state == .sandboxRunning && restored.info.nodeID == info.nodeID)
            // Past the recovery grace (TTL + grace from the restore) the node's heartbeats have
            // confirmed it: still running, still on its node.
            try await Task.sleep(for: .milliseconds(2000))
            let confirmed = try await cluster.sandbox(
                "get",
                Hangar_V1_SandboxGetRequest.with { $0.sandboxID = info.id }
            )
            #expect(confirmed.info.state == .sandboxRunning)
            #expect(cluster.sandboxHosts[0].sandboxIDs == [info.id])
            // Its request id still answers with it.
            let repeated = try await cluster.createSandbox(request)
            #expect(repeated.duplicate && repeated.createdInfo?.id == info.id)
            // And the new scheduler can kill it.
            let killed = try await cluster.sandbox("kill", Hangar_V1_SandboxKillRequest.with { $0.sandboxID = info.id })
            #expect(killed.info.endReason == .sandboxKilled)
            try await waitUntil("the node kills the sandbox") { cluster.sandboxHosts[0].sandboxIDs.isEmpty }
        }
    }

    @Test("with no scheduler running, the node kills a sandbox at its timeout; the next scheduler ends it TIMED_OUT")
    func nodeEnforcesTimeout() async throws {
        try await withCluster(nodes: 1, runtimes: [NullRuntime()]) { cluster in
            let info = try #require(try await cluster.createSandbox(timeoutMs: 400).createdInfo)
            await cluster.stopScheduler()
            try await waitUntil("the node kills the sandbox at its timeout plus its grace") {
                cluster.sandboxHosts[0].sandboxIDs.isEmpty
            }
            let (_, task) = try await cluster.startScheduler()
            defer { task.cancel() }
            var ended = Hangar_V1_SandboxReply()
            try await waitUntil("the restarted scheduler ends the sandbox") {
                ended =
                    (try? await cluster.sandbox(
                        "get",
                        Hangar_V1_SandboxGetRequest.with { $0.sandboxID = info.id },
                        timeout: .seconds(2)
                    )) ?? Hangar_V1_SandboxReply()
                return ended.info.state == .sandboxEnded
            }
            #expect(ended.info.endReason == .sandboxTimedOut)
        }
    }

    @Test("a sandbox holds a slot of its node: counted in the heartbeat, and a job finds no free slot there")
    func sandboxHoldsASlot() async throws {
        try await withCluster(nodes: 1, slots: 1, runtimes: [NullRuntime()]) { cluster in
            let info = try #require(try await cluster.createSandbox().createdInfo)
            try await waitUntil("the heartbeat counts the sandbox's slot") {
                let nodes = try await cluster.admin("nodes", Hangar_V1_NodesRequest(), as: Hangar_V1_NodesReply.self)
                let capacity = nodes.nodes.first?.lastHeartbeat.capacity
                return capacity?.slotsUsed == 1 && capacity?.slotsTotal == 1
            }
            var assignment = Hangar_V1_Assignment()
            assignment.jobID = "j-direct"
            assignment.tenant = "acme"
            assignment.attempt = 1
            assignment.spec.runtime = "null"
            assignment.spec.argv = ["true"]
            let answer = try await cluster.client.request(
                Subjects.assign(node: "node-1"),
                payload: try assignment.serializedData(),
                timeout: .seconds(5)
            )
            let reply = try Hangar_V1_AssignReply(serializedBytes: answer.payload)
            #expect(reply.refused.reason == .noFreeSlot, "\(reply)")
            _ = try await cluster.sandbox("kill", Hangar_V1_SandboxKillRequest.with { $0.sandboxID = info.id })
            try await waitUntil("the node frees the slot") { cluster.sandboxHosts[0].sandboxIDs.isEmpty }
            let result = try await cluster.run(command("/bin/true", runtime: "null"))
            #expect(result.status == .succeeded)
        }
    }

    @Test(
        "tenant policy: at most max_live_sandboxes live at once, refused with the reason; bad requests get clear errors"
    )
    func policyAndBadRequests() async throws {
        let tenantsFile = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tenants-\(UUID().uuidString).yaml"
        )
        try "defaults:\n  max_live_sandboxes: 2\n  max_sandbox_timeout_ms: 600000\n".write(
            to: tenantsFile,
            atomically: true,
            encoding: .utf8
        )
        defer { try? FileManager.default.removeItem(at: tenantsFile) }
        try await withCluster(
            nodes: 1,
            runtimes: [NullRuntime()],
            settings: SchedulerSettings(tenantsFile: tenantsFile.path)
        ) { cluster in
            let first = try #require(try await cluster.createSandbox().createdInfo)
            _ = try #require(try await cluster.createSandbox().createdInfo)
            let third = try await cluster.createSandbox()
            #expect(third.rejected.reason == .quotaExceeded)
            #expect(
                third.rejected.message
                    == "tenant 'acme' already has 2 live sandboxes (max_live_sandboxes 2); kill one first"
            )
            // Another tenant has its own count.
            #expect(try await cluster.createSandbox(tenant: "other").createdInfo?.state == .sandboxRunning)
            _ = try await cluster.sandbox("kill", Hangar_V1_SandboxKillRequest.with { $0.sandboxID = first.id })
            #expect(try await cluster.createSandbox().createdInfo?.state == .sandboxRunning)

            // Bad requests: each answered with what is wrong; the scheduler keeps serving.
            let garbage = try await cluster.client.request(
                Subjects.sandbox(tenant: "acme", verb: "create"),
                payload: Data([0xFF, 0xFF, 0xFF]),
                timeout: .seconds(5)
            )
            let undecodable = try Hangar_V1_SandboxCreateReply(serializedBytes: garbage.payload)
            #expect(undecodable.rejected.reason == .invalidRequest && undecodable.rejected.field == "payload")
            #expect(undecodable.rejected.message.hasPrefix("the payload is not a hangar.v1.SandboxCreateRequest"))
            let badGet = try await cluster.client.request(
                Subjects.sandbox(tenant: "acme", verb: "get"),
                payload: Data([0xFF, 0xFF, 0xFF]),
                timeout: .seconds(5)
            )
            #expect(try Hangar_V1_SandboxReply(serializedBytes: badGet.payload).error.code == .sandboxInvalidRequest)
            let unknown = try await cluster.client.request(
                Subjects.sandbox(tenant: "acme", verb: "explode"),
                payload: Data(),
                timeout: .seconds(5)
            )
            #expect(
                try Hangar_V1_SandboxReply(serializedBytes: unknown.payload).error.message
                    == "unknown sandbox verb 'explode'; use create, get, list, timeout, kill or events"
            )
            var long = Hangar_V1_SandboxCreateRequest()
            long.runtime = "null"
            long.timeoutMs = 700_000
            let tooLong = try await cluster.createSandbox(long)
            #expect(tooLong.rejected.reason == .limitExceeded && tooLong.rejected.field == "timeout_ms")
            var badRuntime = Hangar_V1_SandboxCreateRequest()
            badRuntime.runtime = "teleport"
            let unknownRuntime = try await cluster.createSandbox(badRuntime)
            #expect(unknownRuntime.rejected.reason == .invalidRequest && unknownRuntime.rejected.field == "runtime")
            var badMetadata = Hangar_V1_SandboxCreateRequest()
            badMetadata.runtime = "null"
            badMetadata.metadata = ["": "x"]
            #expect(try await cluster.createSandbox(badMetadata).rejected.field == "metadata")
            let missing = try await cluster.sandbox("get", Hangar_V1_SandboxGetRequest.with { $0.sandboxID = "s-nope" })
            #expect(
                missing.error.code == .sandboxNotFound
                    && missing.error.message == "tenant 'acme' has no sandbox 's-nope'"
            )
            // Still serving.
            #expect(try await cluster.sandboxList(Hangar_V1_SandboxListRequest()).sandboxes.count == 2)
        }
    }
}

// MARK: Helpers

extension Hangar_V1_SandboxCreateReply {
    /// The sandbox, when the create was accepted.
    var createdInfo: Hangar_V1_SandboxInfo? {
        if case .created(let info) = outcome { return info }
        return nil
    }
}

extension TestCluster {
    /// Sends a sandbox control request on `tenant`'s subject and decodes the answer.
    func sandboxRequest<Reply: SwiftProtobuf.Message>(
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        tenant: String = "acme",
        timeout: Duration = .seconds(30)
    ) async throws -> Reply {
        let answer = try await client.request(
            Subjects.sandbox(tenant: tenant, verb: verb),
            payload: try request.serializedData(),
            timeout: timeout
        )
        return try Reply(serializedBytes: answer.payload)
    }

    /// get, timeout and kill.
    func sandbox(
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        tenant: String = "acme",
        timeout: Duration = .seconds(30)
    ) async throws -> Hangar_V1_SandboxReply {
        try await sandboxRequest(verb, request, tenant: tenant, timeout: timeout)
    }

    func sandboxList(
        _ request: Hangar_V1_SandboxListRequest,
        tenant: String = "acme"
    ) async throws
        -> Hangar_V1_SandboxListReply
    {
        let reply: Hangar_V1_SandboxListReply = try await sandboxRequest("list", request, tenant: tenant)
        #expect(reply.error.isEmpty, "list: \(reply.error)")
        return reply
    }

    /// Creates a `null`-runtime sandbox (answered once it runs, or failed).
    func createSandbox(
        metadata: [String: String] = [:],
        timeoutMs: UInt32 = 0,
        tenant: String = "acme"
    ) async throws -> Hangar_V1_SandboxCreateReply {
        var request = Hangar_V1_SandboxCreateRequest()
        request.runtime = "null"
        request.metadata = metadata
        request.timeoutMs = timeoutMs
        return try await createSandbox(request, tenant: tenant)
    }

    func createSandbox(
        _ request: Hangar_V1_SandboxCreateRequest,
        tenant: String = "acme"
    ) async throws
        -> Hangar_V1_SandboxCreateReply
    {
        try await sandboxRequest("create", request, tenant: tenant)
    }

    /// The sandbox's events replayed from the stream, once there are `count` (bounded wait: they
    /// are published after their state change).
    func waitForEvents(of id: String, count: Int) async throws -> [Hangar_V1_SandboxEvent] {
        var request = Hangar_V1_SandboxEventsRequest()
        request.sandboxID = id
        var events: [Hangar_V1_SandboxEvent] = []
        try await waitUntil("\(count) events of sandbox \(id)") {
            let reply: Hangar_V1_SandboxEventsReply = try await self.sandboxRequest("events", request)
            #expect(reply.error.isEmpty, "events: \(reply.error)")
            events = reply.events
            return events.count >= count
        }
        return events
    }

    /// Each stored sandbox's state.
    func sandboxRows() async throws -> [String: String] {
        let queue = try DatabaseQueue(path: databasePath)
        return try await queue.read { db in
            Dictionary(
                uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT id, state FROM sandboxes").map {
                    ($0["id"] as String, $0["state"] as String)
                }
            )
        }
    }
}

/// The first event on `subscription` that `matching` accepts, within `within`.
func nextEvent(
    of subscription: NATSSubscription,
    within: Duration = .seconds(10),
    _ matching: (Hangar_V1_SandboxEvent) -> Bool
) async throws -> Hangar_V1_SandboxEvent {
    let deadline = ContinuousClock.now + within
    while ContinuousClock.now < deadline {
        guard let message = try await firstMessage(of: subscription, within: deadline - ContinuousClock.now) else {
            break
        }
        let event = try Hangar_V1_SandboxEvent(serializedBytes: message.payload)
        if matching(event) { return event }
    }
    throw LocalNATSServerError("no matching sandbox event within \(within)")
}
