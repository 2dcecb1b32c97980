import Foundation
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import Testing

/// Expects `body` to fail with the server's permission refusal.
func expectPermissionDenied(
    _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("\(what): the server allowed it", sourceLocation: sourceLocation)
    } catch let error as NATSError {
        #expect(error.kind == .permissionDenied, "\(what): \(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("\(what): unexpected error \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Tenant isolation by NATS permissions", .serialized)
struct PermissionTests {
    @Test("tenant A cannot submit or cancel on B's subjects; its own submissions run")
    func cannotPublishAsAnotherTenant() async throws {
        try await withAuthorizedCluster { cluster in
            await expectPermissionDenied("submit request on hangar.submit.b") {
                _ = try await cluster.submit(nullJob(wait: false), as: cluster.tenantA, tenant: "b")
            }
            await expectPermissionDenied("plain publish on hangar.submit.b") {
                try await cluster.tenantA.publishConfirmed(
                    Subjects.submit(tenant: "b"),
                    payload: try nullJob(wait: false).serializedData()
                )
            }
            await expectPermissionDenied("cancel on hangar.cancel.b") {
                try await cluster.tenantA.publishConfirmed(Subjects.cancel(tenant: "b"), payload: Data())
            }
            await expectPermissionDenied("a fake heartbeat") {
                try await cluster.tenantA.publishConfirmed(Subjects.heartbeat(node: "n1"), payload: Data())
            }
            await expectPermissionDenied("publishing into the intake stream (only the scheduler admits)") {
                try await cluster.tenantA.publishConfirmed(
                    Subjects.intake(tenant: "a"),
                    payload: try nullJob(wait: false).serializedData()
                )
            }
            await expectPermissionDenied("reading the intake stream through the JetStream API") {
                try await cluster.tenantA.publishConfirmed(
                    "$JS.API.STREAM.MSG.GET.\(Streams.submissions)",
                    payload: Data("{\"seq\":1}".utf8)
                )
            }
            await expectPermissionDenied("appending to the store log (only the scheduler writes its store)") {
                try await cluster.tenantA.publishConfirmed(Subjects.storeLog, payload: Data())
            }
            await expectPermissionDenied("reading the store log through the JetStream API") {
                try await cluster.tenantA.publishConfirmed(
                    "$JS.API.STREAM.MSG.GET.\(Streams.storeLog)",
                    payload: Data("{\"seq\":1}".utf8)
                )
            }
            // Nothing of A's reached B's queue: B has no job in the store.
            let rows = try await cluster.scheduler.store.auditRows(tenant: "b", jobID: nil, sinceMs: 0, limit: 100)
            #expect(rows.isEmpty, "B's audit trail: \(rows)")
            // A's own subject works with the same connection.
            let own = try await cluster.submit(nullJob(wait: true), as: cluster.tenantA, tenant: "a")
            guard case .result(let result) = own.outcome else {
                Issue.record("expected a result on A's own subject, got \(own)")
                return
            }
            #expect(result.tenant == "a" && result.status == .succeeded)
        }
    }

    @Test("tenant A cannot subscribe to B's results, to all results, or to B's inbox")
    func cannotReadAnotherTenantsMessages() async throws {
        try await withAuthorizedCluster { cluster in
            for subject in [
                "hangar.result.b.>", "hangar.result.>", "hangar.result.*.x", "_INBOX.t.b.>", "_INBOX.>", ">",
            ] {
                await expectPermissionDenied("subscribe to \(subject)") {
                    _ = try await cluster.tenantA.subscribeConfirmed(subject)
                }
            }
            // B's own subscription works and receives B's result.
            let mine = try await cluster.tenantB.subscribeConfirmed("hangar.result.b.>")
            defer { mine.unsubscribe() }
            let reply = try await cluster.submit(nullJob(wait: false), as: cluster.tenantB, tenant: "b")
            guard case .accepted(let accepted) = reply.outcome else {
                Issue.record("expected Accepted, got \(reply)")
                return
            }
            let received = try await firstMessage(of: mine, within: .seconds(10))
            #expect(received?.subject == Subjects.result(tenant: "b", job: accepted.jobID))
        }
    }

    @Test("tenant A cannot read B's job: not on B's job subject, not through the admin API, not on its own")
    func cannotLookUpAnotherTenantsJob() async throws {
        try await withAuthorizedCluster { cluster in
            let reply = try await cluster.submit(nullJob(wait: true), as: cluster.tenantB, tenant: "b")
            guard case .result(let result) = reply.outcome else {
                Issue.record("expected B's result, got \(reply)")
                return
            }
            var lookup = Hangar_V1_JobRequest()
            lookup.jobID = result.jobID
            let payload = try lookup.serializedData()
            await expectPermissionDenied("lookup on hangar.job.b") {
                _ = try await cluster.tenantA.request(Subjects.job(tenant: "b"), payload: payload, timeout: .seconds(5))
            }
            await expectPermissionDenied("lookup through hangar.admin.job") {
                _ = try await cluster.tenantA.request(Subjects.admin("job"), payload: payload, timeout: .seconds(5))
            }
            // On its own subject the scheduler answers as if the job did not exist, and audits it.
            let answer = try await cluster.tenantA.request(
                Subjects.job(tenant: "a"),
                payload: payload,
                timeout: .seconds(5)
            )
            let refused = try Hangar_V1_JobReply(serializedBytes: answer.payload)
            #expect(refused.error == "tenant 'a' has no job '\(result.jobID)'")
            #expect(refused.result.jobID.isEmpty && refused.tenant.isEmpty)
            let deadline = ContinuousClock.now + .seconds(5)
            var denied: [Hangar_V1_AuditEvent] = []
            while denied.isEmpty && ContinuousClock.now < deadline {
                denied = try await cluster.scheduler.store.auditRows(
                    tenant: nil,
                    jobID: result.jobID,
                    sinceMs: 0,
                    limit: 100
                )
                .filter { $0.event == "access.denied" }
                if denied.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(denied.map(\.actor) == ["tenant:a"])
            // B reads its own job.
            let own = try await cluster.tenantB.request(
                Subjects.job(tenant: "b"),
                payload: payload,
                timeout: .seconds(5)
            )
            let mine = try Hangar_V1_JobReply(serializedBytes: own.payload)
            #expect(mine.result.jobID == result.jobID && mine.tenant == "b")
        }
    }

    @Test("tenant A cannot make the scheduler answer into B's inbox: dropped and audited, no job")
    func cannotAimRepliesAtAnotherTenant() async throws {
        try await withAuthorizedCluster { cluster in
            let inbox = try await cluster.tenantB.subscribeConfirmed("_INBOX.t.b.>")
            defer { inbox.unsubscribe() }
            let jobsBefore = try await cluster.scheduler.store.count("jobs")
            try await cluster.tenantA.publishConfirmed(
                Subjects.submit(tenant: "a"),
                payload: try nullJob(wait: false).serializedData(),
                replyTo: "_INBOX.t.b.spoofed.1"
            )
            try await cluster.tenantA.publishConfirmed(
                Subjects.job(tenant: "a"),
                payload: try Hangar_V1_JobRequest().serializedData(),
                replyTo: "_INBOX.t.b.spoofed.2"
            )
            let denied = try await accessDenied(cluster, actor: "tenant:a", count: 2)
            #expect(denied.count == 2 && denied.allSatisfy { $0.detail.contains("not in tenant-a's own inbox") })
            #expect(try await firstMessage(of: inbox, within: .milliseconds(300)) == nil)
            #expect(try await cluster.scheduler.store.count("jobs") == jobsBefore)
        }
    }

    @Test("confused deputy: B aims the scheduler's answers at A's result subject or A's intake; nothing reaches A")
    func confusedDeputy() async throws {
        try await withAuthorizedCluster { cluster in
            // A listens where a forged Result would land.
            let results = try await cluster.tenantA.subscribeConfirmed("hangar.result.a.>")
            defer { results.unsubscribe() }
            let jobsBefore = try await cluster.scheduler.store.count("jobs")
            var forged = nullJob(wait: true)
            forged.argv = ["echo", "bob was here"]
            let target = "hangar.result.a.j-alice-1"
            // Wait mode (the whole Result would go there), async mode (Accepted), a request that
            // does not decode (a Rejection), and the durable intake stream under A's name.
            for (payload, replyTo) in [
                (try forged.serializedData(), target),
                (try nullJob(wait: false).serializedData(), target),
                (Data([0xFF, 0xFF, 0xFF]), target),
                (try nullJob(wait: false).serializedData(), Subjects.intake(tenant: "a")),
            ] {
                try await cluster.tenantB.publishConfirmed(
                    Subjects.submit(tenant: "b"),
                    payload: payload,
                    replyTo: replyTo
                )
            }
            let denied = try await accessDenied(cluster, actor: "tenant:b", count: 4)
            #expect(denied.count == 4, "audited: \(denied.map(\.detail))")
            #expect(denied.filter { $0.detail.contains(target) }.count == 3)
            #expect(denied.filter { $0.detail.contains("hangar.intake.a") }.count == 1)
            // A's own start-up job (see `waitUntilServing`) may publish its result here; nothing else may.
            while let message = try await firstMessage(of: results, within: .milliseconds(300)) {
                let result = try? Hangar_V1_Result(serializedBytes: message.payload)
                if message.subject == target || result?.tenant != "a" {
                    Issue.record("A received \(message.payload.count) bytes on \(message.subject) that B aimed there")
                }
            }
            // Nothing was admitted: no job for anyone, nothing in A's intake.
            #expect(try await cluster.scheduler.store.count("jobs") == jobsBefore)
            // B's own inbox still works.
            let own = try await cluster.submit(nullJob(wait: true), as: cluster.tenantB, tenant: "b")
            guard case .result(let result) = own.outcome else {
                Issue.record("expected B's own result, got \(own)")
                return
            }
            #expect(result.tenant == "b")
        }
    }

    /// The scheduler's `access.denied` audit rows by `actor`, once there are `count` (bounded wait).
    private func accessDenied(
        _ cluster: AuthorizedCluster,
        actor: String,
        count: Int
    ) async throws -> [Hangar_V1_AuditEvent] {
        var denied: [Hangar_V1_AuditEvent] = []
        let deadline = ContinuousClock.now + .seconds(5)
        while denied.count < count && ContinuousClock.now < deadline {
            denied = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 1000)
                .filter { $0.event == "access.denied" && $0.actor == actor }
            if denied.count < count { try await Task.sleep(for: .milliseconds(20)) }
        }
        return denied
    }

    @Test("a node may use only its own subjects; bad credentials are refused at connect")
    func nodesAndLogins() async throws {
        try await withAuthorizedCluster { cluster in
            let node = try await cluster.login(.node("n1"))
            await expectPermissionDenied("node n1 reporting a result as n2") {
                try await node.publishConfirmed(Subjects.nodeResult(node: "n2"), payload: Data())
            }
            await expectPermissionDenied("node n1 reading n2's assignments") {
                _ = try await node.subscribeConfirmed(Subjects.assign(node: "n2"))
            }
            await expectPermissionDenied("node n1 submitting a job") {
                try await node.publishConfirmed(Subjects.submit(tenant: "a"), payload: Data())
            }
            await expectPermissionDenied("node n1 publishing into the intake stream") {
                try await node.publishConfirmed(Subjects.intake(tenant: "a"), payload: Data())
            }
            await expectPermissionDenied("node n1 appending to the store log") {
                try await node.publishConfirmed(Subjects.storeLog, payload: Data())
            }
            await expectPermissionDenied("node n1 reading the results stream through the JetStream API") {
                try await node.publishConfirmed(
                    "$JS.API.CONSUMER.MSG.NEXT.\(Streams.results).\(Streams.consumer)",
                    payload: Data()
                )
            }
            // Its own subjects are allowed; its result is stored by the stream (the PubAck reaches
            // its own inbox).
            try await node.publishConfirmed(Subjects.heartbeat(node: "n1"), payload: Data())
            let ack = try await node.jetStreamPublish(
                Subjects.nodeResult(node: "n1"),
                payload: Data(),
                messageID: "x/1"
            )
            #expect(ack.stream == Streams.results)
            await node.close()

            var wrong = try NATSCredentials.load(path: cluster.auth.credentialsPath(for: .tenant("a")))
            let nkey = try #require(wrong.nkey, "tenant credentials log in with an NKey")
            #expect(wrong.password == nil)
            wrong.seed = NKeyPair.generateUser().seed  // tenant a's public key, another private key
            do {
                let connection = try await connectForTest(cluster.server, credentials: wrong)
                await connection.close()
                Issue.record("the server accepted a nonce signed with the wrong seed")
            } catch let error as NATSError {
                #expect(error.kind == .authenticationFailed, "\(error)")
            }
            do {
                let anonymous = try await connectForTest(cluster.server)
                await anonymous.close()
                Issue.record("the server accepted a connection without credentials")
            } catch let error as NATSError {
                #expect(error.kind == .authenticationFailed, "\(error)")
            }
            // The scheduler heard of the wrong signature from the server and audited it.
            var failures: [Hangar_V1_AuditEvent] = []
            let deadline = ContinuousClock.now + .seconds(5)
            while failures.isEmpty && ContinuousClock.now < deadline {
                failures = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 1000)
                    .filter { $0.event == "auth.failed" && $0.detail.contains("user \(nkey) ") }
                if failures.isEmpty { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(failures.first?.actor == "nats", "audit rows for failed logins: \(failures)")
        }
    }

    @Test("the server's configuration holds public keys only, never a seed or password")
    func configurationHoldsNoSecret() throws {
        let directory = try makeTemporaryDirectory("hangar-auth")
        defer { try? FileManager.default.removeItem(at: directory) }
        let auth = AuthDirectory(path: directory.path)
        try auth.prepareLocalCluster(nodes: ["n1"], tenants: ["a"], operators: ["admin"])
        let config = try String(contentsOfFile: auth.configPath, encoding: .utf8)
        let all = try auth.allCredentials()
        #expect(all.count == 5)  // scheduler, system, n1, a, admin
        for credentials in all {
            let seed = try #require(credentials.seed, "\(credentials.user) has no NKey")
            #expect(config.contains("nkey: \"\(credentials.nkey ?? "")\""), "\(credentials.user) is not in the config")
            #expect(!config.contains(seed), "\(credentials.user)'s seed is in the server's configuration")
        }
        #expect(!config.contains("password"))
    }

    @Test("tenant add: a new tenant works after the server reloads; its file never grants another tenant")
    func addTenantAndReload() async throws {
        try await withAuthorizedCluster { cluster in
            let (credentials, created) = try cluster.auth.ensure(.tenant("c"))
            #expect(created)
            let attributes = try FileManager.default.attributesOfItem(
                atPath: cluster.auth.credentialsPath(for: .tenant("c"))
            )
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            #expect(credentials.inboxPrefix == "_INBOX.t.c")
            cluster.server.reload()
            let deadline = ContinuousClock.now + .seconds(10)
            var connection: NATSConnection?
            while connection == nil && ContinuousClock.now < deadline {
                connection = try? await connectForTest(cluster.server, credentials: credentials)
                if connection == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            guard let connection else {
                Issue.record("tenant c could not log in after the reload")
                return
            }
            defer { Task { await connection.close() } }
            let reply = try await cluster.submit(nullJob(wait: true), as: connection, tenant: "c")
            guard case .result(let result) = reply.outcome else {
                Issue.record("expected a result, got \(reply)")
                return
            }
            #expect(result.tenant == "c")
            await expectPermissionDenied("c submitting as a") {
                _ = try await cluster.submit(nullJob(wait: false), as: connection, tenant: "a")
            }
        }
    }
}

/// The first message of `subscription`, or nil if none arrives within `timeout`.
func firstMessage(of subscription: NATSSubscription, within timeout: Duration) async throws -> NATSMessage? {
    try await withThrowingTaskGroup(of: NATSMessage?.self) { group in
        group.addTask {
            var iterator = subscription.makeAsyncIterator()
            return await iterator.next()
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        let first = try await group.next() ?? nil
        group.cancelAll()
        return first
    }
}
