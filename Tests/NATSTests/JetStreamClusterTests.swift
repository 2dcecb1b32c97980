import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("JetStream on a cluster of three real nats-servers")
struct JetStreamClusterTests {
    @Test("an R3 stream takes publishes and keeps every message while any one server is dead")
    func replicatedStreamSurvivesEachServer() async throws {
        let directory = try makeTemporaryDirectory("hangar-nats-cluster")
        defer { try? FileManager.default.removeItem(at: directory) }
        let cluster = try await LocalNATSCluster(size: 3, directory: directory)
        defer { cluster.stop() }
        var options = NATSConnectionOptions(servers: cluster.urls, name: "cluster-test")
        options.maxReconnectDelay = .milliseconds(200)
        let connection = try await NATSConnection(options: options)
        let js = try connection.jetStream()
        var config = JetStreamStreamConfig(name: "TEST_R3", subjects: ["r3.>"], retention: .workQueue)
        config.replicas = 3
        // The metadata leader is elected; the first stream create may still meet a settling cluster.
        let settle = ContinuousClock.now + .seconds(20)
        while true {
            do {
                try await js.ensureStream(config)
                break
            } catch {
                if ContinuousClock.now >= settle { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        _ = try await connection.jetStreamPublish(
            "r3.a",
            payload: Data("before".utf8),
            timeout: .seconds(15),
            waitForLeader: true
        )

        // An R1 stream lives on one server: killing that one would make these publishes fail.
        for index in 0..<cluster.size {
            cluster.crash(index)
            // A request sent while the cluster notices the death can vanish (routed to the dead
            // server): sent again under the same message id, as the node's results outbox does,
            // so the stream keeps one copy (the read below checks it).
            let deadline = ContinuousClock.now + .seconds(30)
            var ack: JetStreamPublishAck?
            while ack == nil {
                do {
                    ack = try await connection.jetStreamPublish(
                        "r3.a",
                        payload: Data("without n\(index + 1)".utf8),
                        messageID: "m\(index)",
                        timeout: .seconds(5),
                        waitForLeader: true
                    )
                } catch let error as NATSError
                    where [.timeout, .noResponders].contains(error.kind) && ContinuousClock.now < deadline
                {
                    continue  // no answer, or no stream leader yet (an election takes 4-9 s)
                }
            }
            #expect(ack?.stream == "TEST_R3")
            try await cluster.restart(index)
        }

        let consumer = try await js.pullSubscribe("r3.>", durable: "reader", stream: "TEST_R3")
        var read: [String] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while read.count < 4 && ContinuousClock.now < deadline {
            let batch = (try? await consumer.fetchAvailable(max: 10, wait: .seconds(1))) ?? []
            for message in batch {
                read.append(String(decoding: message.message.payload, as: UTF8.self))
                try message.ack()
            }
        }
        #expect(read == ["before", "without n1", "without n2", "without n3"])
        await connection.close()
    }

    @Test("waitForLeader gives up at its timeout when no stream captures the subject")
    func waitForLeaderIsBounded() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let started = ContinuousClock.now
            await #expect(throws: NATSError.self) {
                _ = try await connection.jetStreamPublish(
                    "nowhere.a",
                    payload: Data(),
                    timeout: .milliseconds(600),
                    waitForLeader: true
                )
            }
            // Tried again for the whole timeout (not failed at the first "no responders"), and not longer.
            let took = started.duration(to: .now)
            #expect(took >= .milliseconds(450) && took < .seconds(5))
            await connection.close()
        }
    }
}
