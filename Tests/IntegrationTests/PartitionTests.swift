import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import Testing

/// A node on another "host" (a network namespace joined by a veth link, reaching nats-server over
/// real TCP) is cut off by taking its link down, then healed.
@Suite("A node host cut off by a real network partition", .serialized)
struct PartitionTests {
    @Test(
        "declared down after TTL + grace, its job retried on another node; after the heal its late result changes nothing"
    )
    func nodeHostPartitioned() async throws {
        let peer = try TestPeer.start(tag: String(UUID().uuidString.prefix(6)).lowercased())
        defer { peer.stop() }
        let directory = try makeTemporaryDirectory("hangar-partition")
        defer { try? FileManager.default.removeItem(at: directory) }
        // nats-server listens on the host's end of the link only: the far node reaches it over the veth.
        let server = try await LocalNATSServer(
            directory: directory.appendingPathComponent("nats"),
            host: peer.address(1)
        )
        defer { server.stop() }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name, logger: logger))
        }
        let databasePath = directory.appendingPathComponent("hangar.sqlite").path
        var config = SchedulerConfig(databasePath: databasePath)
        config.nodeTTL = .milliseconds(1500)
        config.nodeGrace = .seconds(1)
        config.assignTimeout = .seconds(10)
        let scheduler = Scheduler(
            config: config,
            nats: try await connect("scheduler"),
            store: try Store(path: databasePath),
            logger: logger
        )
        var tasks = [Task { try await scheduler.run() }]
        defer { for task in tasks { task.cancel() } }

        // The far node: `hangar node agent` in the peer's network namespace, its own state folder.
        let farState = directory.appendingPathComponent("far")
        let (far, farLog) = try startHangarDaemon(
            [
                "node", "agent", "--nats", server.url, "--id", "far", "--slots", "2", "--runtimes", "process",
                "--state-dir", farState.path, "--log-level", "warning",
                // Sandbox uids of its own: the suites of this test process use the standard ones.
                "--sandbox-uids", "3600100:8",
            ],
            name: "far",
            in: directory,
            networkNamespace: peer.name
        )

        func node(_ id: String) async -> Hangar_V1_NodeInfo? {
            await scheduler.stats().nodes.first { $0.lastHeartbeat.nodeID == id }
        }
        func waitUntil(_ what: String, within limit: Duration, _ condition: () async throws -> Bool) async throws {
            let deadline = ContinuousClock.now + limit
            while try await !condition() {
                guard ContinuousClock.now < deadline else {
                    let log = (try? String(contentsOf: farLog, encoding: .utf8)) ?? ""
                    let runtimes = await node("far")?.lastHeartbeat.runtimes.map { "\($0.name): \($0.detail)" } ?? []
                    throw LocalNATSServerError(
                        "not within \(limit): \(what); the far node's runtimes \(runtimes), its log:\n\(log.suffix(2000))"
                    )
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        try await waitUntil("the far node reports the process runtime ready", within: .seconds(30)) {
            await node("far")?.lastHeartbeat.runtimes.contains { $0.name == "process" && $0.available } == true
        }

        // A job that runs 4 s on the far node (the only node so far).
        let client = try await connect("client")
        var request = Hangar_V1_SubmitRequest()
        request.runtime = "process"
        request.argv = ["/bin/sleep", "4"]
        request.retry.maxAttempts = 3
        let answer = try await client.request(
            Subjects.submit(tenant: "acme"),
            payload: try request.serializedData(),
            timeout: .seconds(10)
        )
        let reply = try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
        guard case .accepted(let accepted) = reply.outcome else {
            Issue.record("the job was not accepted: \(reply)")
            return
        }
        let jobID = accepted.jobID
        try await waitUntil("the job runs on the far node", within: .seconds(20)) {
            await node("far")?.lastHeartbeat.capacity.slotsUsed == 1
        }

        // A second node on this host, then the far host's link goes down.
        let resources = NodeResources(users: SandboxUsers(first: 3_600_000, count: 8))
        let near = NodeAgent(
            config: {
                var config = NodeConfig(nodeID: "near", slots: 2)
                config.heartbeatInterval = .milliseconds(250)
                return config
            }(),
            nats: try await connect("near"),
            runtimes: [ProcessRuntime(resources: resources)],
            resources: resources,
            logger: logger
        )
        tasks.append(Task { try await near.run() })
        try await waitUntil("the near node reports the process runtime ready", within: .seconds(30)) {
            await node("near")?.lastHeartbeat.runtimes.contains { $0.name == "process" && $0.available } == true
        }
        try TestPeer.shell(["ip", "link", "set", peer.hostInterface, "down"])
        let cut = ContinuousClock.now

        // Declared down after TTL + grace; attempt 2 runs on the near node and ends the job.
        try await waitUntil("the far node is declared down", within: .seconds(15)) { await node("far")?.state == .down }
        // TTL + grace count from the node's last heartbeat, which came up to a second (its interval)
        // before the cut.
        #expect(cut.duration(to: .now) >= .milliseconds(1500), "declared down before TTL + grace")
        var result: Hangar_V1_Result?
        try await waitUntil("the job ends", within: .seconds(30)) {
            result = try await scheduler.store.job(id: jobID)?.result
            return result != nil
        }
        #expect(result?.status == .succeeded)
        #expect(result?.nodeID == "near" && result?.attempt == 2, "\(String(describing: result))")

        // Healed: the far node comes back, and its attempt 1's result arrives late and is only audited.
        try TestPeer.shell(["ip", "link", "set", peer.hostInterface, "up"])
        try await waitUntil("the far node is back", within: .seconds(30)) { await node("far")?.state == .up }
        try await waitUntil("attempt 1's late result is audited", within: .seconds(30)) {
            try await scheduler.store.auditEvents(jobID: jobID).contains { $0.event == "result.late" }
        }
        let stored = try await scheduler.store.job(id: jobID)?.result
        #expect(stored?.nodeID == "near" && stored?.attempt == 2, "the late result replaced the job's outcome")
        #expect(try await scheduler.store.finishedEventCounts()[jobID] == 1)
        far.terminate()
        await client.close()
    }

    @Test(
        "the leading scheduler's host cut off: the standby leads in time, the old leader acts no more, and it exits once healed"
    )
    func leaderHostPartitioned() async throws {
        let peer = try TestPeer.start(tag: String(UUID().uuidString.prefix(6)).lowercased())
        defer { peer.stop() }
        let directory = try makeTemporaryDirectory("hangar-leader-partition")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(
            directory: directory.appendingPathComponent("nats"),
            host: peer.address(1)
        )
        defer { server.stop() }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let database = directory.appendingPathComponent("hangar.sqlite").path

        /// `hangar scheduler --leader-lease 3`, in the peer's namespace (the far host) or here.
        func scheduler(_ name: String, far: Bool) throws -> (Process, URL) {
            try startHangarDaemon(
                [
                    "scheduler", "--nats", server.url, "--db", database, "--leader-lease", "3", "--node-ttl", "1.5",
                    "--node-grace", "1", "--log-level", "notice",
                ],
                name: name,
                in: directory,
                networkNamespace: far ? peer.name : nil
            )
        }
        func read(_ log: URL) -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        func waitUntil(_ what: String, within limit: Duration, _ condition: () async throws -> Bool) async throws {
            let deadline = ContinuousClock.now + limit
            while try await !condition() {
                guard ContinuousClock.now < deadline else {
                    let logs = ["far-scheduler", "near-scheduler"].map {
                        "\($0):\n" + read(directory.appendingPathComponent("\($0).log")).suffix(1500)
                    }
                    throw LocalNATSServerError("not within \(limit): \(what)\n" + logs.joined(separator: "\n"))
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        let (old, oldLog) = try scheduler("far-scheduler", far: true)
        defer { if old.isRunning { kill(old.processIdentifier, SIGKILL) } }
        try await waitUntil("the far scheduler leads", within: .seconds(30)) { read(oldLog).contains("] leading") }
        let (standby, standbyLog) = try scheduler("near-scheduler", far: false)
        defer { if standby.isRunning { kill(standby.processIdentifier, SIGKILL) } }
        try await waitUntil("the near scheduler waits as a standby", within: .seconds(30)) {
            read(standbyLog).contains("standby: waiting for the leader lease")
        }

        // One node, on this host.
        let node = NodeAgent(
            config: {
                var config = NodeConfig(nodeID: "n1", slots: 4)
                config.heartbeatInterval = .milliseconds(250)
                config.stateDirectory = directory.appendingPathComponent("node-state").path
                return config
            }(),
            nats: try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: "node")),
            runtimes: [NullRuntime()],
            logger: logger
        )
        let nodeTask = Task { try await node.run() }
        defer { nodeTask.cancel() }
        let client = try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: "client"))
        /// Submits a `null` job and waits for its result in the store: who placed it shows in the term.
        func runJob(_ requestID: String, within limit: Duration) async throws -> Hangar_V1_Result? {
            var request = Hangar_V1_SubmitRequest()
            request.runtime = "null"
            request.argv = ["true"]
            request.requestID = requestID
            let deadline = ContinuousClock.now + limit
            var jobID: String?
            while jobID == nil && ContinuousClock.now < deadline {
                if let answer = try? await client.request(
                    Subjects.submit(tenant: "acme"),
                    payload: try request.serializedData(),
                    timeout: .seconds(2)
                ), case .accepted(let accepted) = try Hangar_V1_SubmitReply(serializedBytes: answer.payload).outcome {
                    jobID = accepted.jobID
                }
            }
            guard let jobID else { return nil }
            let store = try Store(path: database)
            while ContinuousClock.now < deadline {
                if let result = try await store.job(id: jobID)?.result { return result }
                try await Task.sleep(for: .milliseconds(100))
            }
            return nil
        }
        let before = try await runJob("before-cut", within: .seconds(30))
        #expect(before?.status == .succeeded, "\(String(describing: before))")

        // The far host's link goes down: its scheduler cannot renew, nor reach anyone.
        try TestPeer.shell(["ip", "link", "set", peer.hostInterface, "down"])
        let cut = ContinuousClock.now
        try await waitUntil("the standby leads", within: .seconds(15)) { read(standbyLog).contains("] leading") }
        let tookOver = cut.duration(to: .now)
        print("leader partition: the standby led \(tookOver) after the cut")
        // Lease (3 s) + margin (1 s) + poll (0.5 s) after the last renewal seen, plus the start of a
        // process under load.
        #expect(tookOver < .seconds(7), "took over \(tookOver) after the cut")
        let after = try await runJob("after-cut", within: .seconds(30))
        #expect(after?.status == .succeeded, "\(String(describing: after))")
        // The cut-off leader stopped acting by its own clock (and is still alive, suspended).
        try await waitUntil("the far scheduler is suspended", within: .seconds(10)) {
            read(oldLog).contains("could not renew the leader lease in time")
        }

        // Healed: its attempt to take its record back is refused (the key moved on); it exits, so
        // that a restart comes back as a standby.
        try TestPeer.shell(["ip", "link", "set", peer.hostInterface, "up"])
        try await waitUntil("the far scheduler exits", within: .seconds(40)) { !old.isRunning }
        #expect(old.terminationStatus == 3, "\(read(oldLog).suffix(1500))")
        // It learns it from the lease (its record was replaced) or from the store log (an append
        // of a store write it queued meanwhile is refused: the new leader's term writes the log).
        #expect(
            read(oldLog).contains("lost the leader lease")
                || read(oldLog).contains("no longer leads: a scheduler of term"),
            "\(read(oldLog).suffix(1500))"
        )
        // The new leader still serves.
        let healed = try await runJob("after-heal", within: .seconds(30))
        #expect(healed?.status == .succeeded, "\(String(describing: healed))")
        #expect(standby.isRunning)
        standby.terminate()
        standby.waitUntilExit()
        await client.close()
    }
}
