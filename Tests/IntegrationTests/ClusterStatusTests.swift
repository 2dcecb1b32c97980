import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import Testing

@Suite("A scheduler and a node on three clustered nats-servers")
struct ClusterStatusTests {
    @Test(
        "streams are R3; cluster status shows each stream's leader and copies; jobs run on after the leader's server dies"
    )
    func replicatedStreamsAndStatus() async throws {
        let directory = try makeTemporaryDirectory("hangar-r3")
        defer { try? FileManager.default.removeItem(at: directory) }
        let nats = try await LocalNATSCluster(size: 3, directory: directory.appendingPathComponent("nats"))
        defer { nats.stop() }
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        func connect(_ name: String) async throws -> NATSConnection {
            var options = NATSConnectionOptions(servers: nats.urls, name: name, logger: logger)
            options.maxReconnectDelay = .milliseconds(200)
            return try await NATSConnection(options: options)
        }
        let databasePath = directory.appendingPathComponent("hangar.sqlite").path
        var config = SchedulerConfig(databasePath: databasePath)
        config.streamReplicas = 3
        config.queueTimeout = .seconds(60)
        let schedulerConnection = try await connect("scheduler")
        let scheduler = Scheduler(
            config: config,
            nats: schedulerConnection,
            store: try Store(path: databasePath),
            logger: logger
        )
        var nodeConfig = NodeConfig(nodeID: "n1", slots: 4)
        nodeConfig.heartbeatInterval = .milliseconds(200)
        let nodeConnection = try await connect("node")
        let agent = NodeAgent(config: nodeConfig, nats: nodeConnection, runtimes: [NullRuntime()], logger: logger)
        let tasks = [Task { try await scheduler.run() }, Task { try await agent.run() }]
        let client = try await connect("client")
        defer {
            for task in tasks { task.cancel() }
        }

        func runJob(_ id: String, within: Duration) async throws -> Hangar_V1_JobStatus? {
            var request = Hangar_V1_SubmitRequest()
            request.runtime = "null"
            request.argv = ["true"]
            request.requestID = id
            request.wait = true
            let deadline = ContinuousClock.now + within
            while ContinuousClock.now < deadline {
                if let answer = try? await client.request(
                    Subjects.submit(tenant: "acme"),
                    payload: try request.serializedData(),
                    timeout: .seconds(10)
                ), let reply = try? Hangar_V1_SubmitReply(serializedBytes: answer.payload),
                    case .result(let result) = reply.outcome
                {
                    return result.status
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            return nil
        }
        func status() async throws -> Hangar_V1_ClusterStatusReply {
            let answer = try await client.request(
                Subjects.admin("cluster"),
                payload: try Hangar_V1_ClusterStatusRequest().serializedData(),
                timeout: .seconds(10)
            )
            return try Hangar_V1_ClusterStatusReply(serializedBytes: answer.payload)
        }

        #expect(try await runJob("first", within: .seconds(30)) == .succeeded)
        let before = try await status()
        #expect(before.streamReplicas == 3)
        #expect(before.natsServers.count >= 3)
        #expect(before.schedulers.count == 1 && before.schedulers[0].natsServer.hasPrefix("nats://127.0.0.1:"))
        // One scheduler, no leader lease: no store log.
        #expect(Set(before.streams.map(\.name)) == Set(Streams.all).subtracting([Streams.storeLog]))
        for stream in before.streams {
            #expect(stream.error.isEmpty, "\(stream.name): \(stream.error)")
            #expect(stream.replicas == 3, "\(stream.name) has \(stream.replicas) copies")
            #expect(["n1", "n2", "n3"].contains(stream.leader), "\(stream.name) is led by '\(stream.leader)'")
            #expect(
                Set(stream.followers.map(\.server) + [stream.leader]) == ["n1", "n2", "n3"],
                "\(stream.name): \(stream.followers.map(\.server))"
            )
        }

        // The server that leads the intake stream dies: another copy takes over, the status says
        // so, and submissions are accepted and run again.
        let intake = try #require(before.streams.first { $0.name == Streams.submissions })
        let dead = intake.leader
        nats.crash(Int(dead.dropFirst())! - 1)
        #expect(try await runJob("after-leader-died", within: .seconds(30)) == .succeeded)
        var after = try await status()
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let stream = after.streams.first { $0.name == Streams.submissions }
            if let stream, !stream.leader.isEmpty, stream.leader != dead,
                stream.followers.contains(where: { $0.server == dead && $0.offline })
            {
                break
            }
            try await Task.sleep(for: .milliseconds(250))
            after = try await status()
        }
        let now = try #require(after.streams.first { $0.name == Streams.submissions })
        #expect(!now.leader.isEmpty && now.leader != dead, "the intake stream is led by '\(now.leader)'")
        #expect(
            now.followers.contains { $0.server == dead && $0.offline },
            "the dead server \(dead) is not reported offline: \(now.followers)"
        )
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        await client.close()
    }

    @Test("cluster status lists the standby schedulers the leader hears, and drops one that died")
    func listsStandbys() async throws {
        let directory = try makeTemporaryDirectory("hangar-standbys")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        // Each scheduler keeps its own store, a replica of the store log (as in production).
        func scheduler(_ name: String) throws -> Process {
            let database = directory.appendingPathComponent("\(name).sqlite").path
            return try startHangarDaemon(
                ["scheduler", "--nats", server.url, "--db", database, "--leader-lease", "3", "--log-level", "notice"],
                name: name,
                in: directory
            ).process
        }
        func logs() -> String {
            ["first", "second"].map { name in
                let text = (try? String(contentsOf: directory.appendingPathComponent("\(name).log"), encoding: .utf8))
                return "\(name) scheduler:\n" + (text ?? "").suffix(2000)
            }.joined(separator: "\n")
        }
        let first = try scheduler("first")
        let second = try scheduler("second")
        defer {
            for process in [first, second] where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        let client = try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: "client"))
        func status() async -> Hangar_V1_ClusterStatusReply? {
            guard
                let answer = try? await client.request(
                    Subjects.admin("cluster"),
                    payload: try Hangar_V1_ClusterStatusRequest().serializedData(),
                    timeout: .seconds(2)
                )
            else { return nil }
            return try? Hangar_V1_ClusterStatusReply(serializedBytes: answer.payload)
        }
        func waitForStatus(
            _ what: String,
            _ condition: (Hangar_V1_ClusterStatusReply) -> Bool
        ) async throws -> Hangar_V1_ClusterStatusReply {
            let deadline = ContinuousClock.now + .seconds(20)
            var last: Hangar_V1_ClusterStatusReply?
            while ContinuousClock.now < deadline {
                last = await status()
                if let last, condition(last) { return last }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw LocalNATSServerError(
                "not within 20 s: \(what); last status: \(String(describing: last))\n\(logs())"
            )
        }

        // The leader answers, first; the standby it heard follows, with the same term seen.
        // (A standby's first announcement may come before its first read of the lease: term 0.)
        let both = try await waitForStatus("a leader and a standby that has read the lease") {
            $0.schedulers.count == 2 && $0.schedulers[1].term == $0.schedulers[0].term
        }
        let leader = both.schedulers[0]
        let standby = both.schedulers[1]
        #expect(leader.role == "leader" && leader.term > 0 && !leader.holder.isEmpty, "\(both.schedulers)")
        #expect(standby.role == "standby" && standby.term == leader.term, "\(both.schedulers)")
        #expect(standby.holder != leader.holder && standby.natsServer == server.url, "\(both.schedulers)")
        #expect(standby.lastSeenMs < 6_000)
        // Both stores follow the store log: the leader has written its term's first entry, and the
        // standby announces the entries it has applied (its lag is the difference).
        #expect(leader.logApplied > 0, "\(both.schedulers)")
        let caughtUp = try await waitForStatus("the standby's store applied the leader's entries") {
            $0.schedulers.count == 2 && $0.schedulers[1].logApplied >= leader.logApplied
        }
        #expect(caughtUp.schedulers[1].holder == standby.holder)
        // `hangar top` shows both: the leader with its term and log position, the standby's lag.
        let (top, topLog) = try startHangarDaemon(["top", "--once", "--nats", server.url], name: "top", in: directory)
        let topDeadline = ContinuousClock.now + .seconds(20)
        while top.isRunning, ContinuousClock.now < topDeadline { try await Task.sleep(for: .milliseconds(50)) }
        if top.isRunning { kill(top.processIdentifier, SIGKILL) }
        let frame = (try? String(contentsOf: topLog, encoding: .utf8)) ?? ""
        let line = try #require(frame.split(separator: "\n").first { $0.hasPrefix("SCHEDULERS") }, "\(frame)")
        #expect(line.contains("\(leader.id) leader term \(leader.term) log "), "\(line)")
        #expect(line.contains("\(standby.id) standby lag "), "\(line)")

        // The standby dies: after three missed announcements it is no longer listed.
        let standbyProcess = standby.id.hasSuffix("pid \(first.processIdentifier)") ? first : second
        kill(standbyProcess.processIdentifier, SIGKILL)
        let alone = try await waitForStatus("the dead standby dropped") { $0.schedulers.count == 1 }
        #expect(alone.schedulers.first?.holder == leader.holder)
        await client.close()
    }
}
