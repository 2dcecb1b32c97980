import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("JetStream calls against a real nats-server")
struct JetStreamTests {
    @Test("ensure stream, de-duplicated publish, pull fetch with ack / nak / term")
    func streamRoundTrip() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let js = try connection.jetStream()
            let config = JetStreamStreamConfig(name: "TEST_INTAKE", subjects: ["intake.>"])
            try await js.ensureStream(config)
            try await js.ensureStream(config)  // idempotent

            let first = try await js.publish("intake.a", payload: Data("one".utf8), messageID: "req-1")
            let again = try await js.publish("intake.a", payload: Data("one".utf8), messageID: "req-1")
            #expect(!first.duplicate)
            #expect(again.duplicate)
            #expect(again.sequence == first.sequence)
            _ = try await js.publish("intake.b", payload: Data("two".utf8), messageID: "req-2", headers: ["K": "v"])
            _ = try await js.publish("intake.c", payload: Data("three".utf8), messageID: "req-3")

            // An ack wait far longer than the test: under load (CI ran this once 7.8 s long) a 1 s
            // one expired between the fetch and the acks, and all three came back.
            let consumer = try await js.pullSubscribe("intake.>", durable: "workers", ackWait: .seconds(60))
            let batch = try await consumer.fetch(batch: 10, timeout: .seconds(2))
            #expect(batch.map { String(decoding: $0.message.payload, as: UTF8.self) } == ["one", "two", "three"])
            #expect(batch[1].message.header("K") == "v")
            try batch[0].ack()
            try batch[1].nak()
            try batch[2].term()

            // Only the nak'ed message comes back.
            let redelivered = try await consumer.fetch(batch: 10, timeout: .seconds(3))
            #expect(redelivered.map { String(decoding: $0.message.payload, as: UTF8.self) } == ["two"])
            try redelivered.first?.ack()
            let empty = try await consumer.fetch(batch: 10, timeout: .milliseconds(500))
            #expect(empty.isEmpty)
            await connection.close()
        }
    }

    @Test(
        "a durable consumer made with one ack wait takes another through setAckWait; unchanged, binding it is refused"
    )
    func consumerAckWaitChanges() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let js = try connection.jetStream()
            try await js.ensureStream(JetStreamStreamConfig(name: "TEST_ACKWAIT", subjects: ["ackwait.>"]))
            // No consumer yet: nothing to change.
            #expect(try await js.setAckWait(stream: "TEST_ACKWAIT", durable: "old", to: .seconds(10)) == false)
            _ = try await js.pullSubscribe("ackwait.>", durable: "old", stream: "TEST_ACKWAIT", ackWait: .seconds(30))
            // Bound as it is with another ack wait: libnats refuses the mismatch.
            await #expect(throws: NATSError.self) {
                _ = try await js.pullSubscribe(
                    "ackwait.>",
                    durable: "old",
                    stream: "TEST_ACKWAIT",
                    ackWait: .seconds(10)
                )
            }
            #expect(try await js.setAckWait(stream: "TEST_ACKWAIT", durable: "old", to: .seconds(10)) == true)
            _ = try await js.pullSubscribe("ackwait.>", durable: "old", stream: "TEST_ACKWAIT", ackWait: .seconds(10))
            #expect(try await js.setAckWait(stream: "TEST_ACKWAIT", durable: "old", to: .seconds(10)) == false)
            await connection.close()
        }
    }

    @Test("fetchAvailable: what is ready, at most max; then nothing; a work queue drops what was acked")
    func fetchAvailable() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let js = try connection.jetStream()
            var config = JetStreamStreamConfig(name: "TEST_WQ", subjects: ["wq.>"], retention: .workQueue)
            config.discardNew = true
            try await js.ensureStream(config)
            for index in 0..<5 {
                let ack = try await connection.jetStreamPublish(
                    "wq.a",
                    payload: Data("\(index)".utf8),
                    messageID: "m\(index)"
                )
                #expect(ack.stream == "TEST_WQ" && !ack.duplicate)
            }
            let again = try await connection.jetStreamPublish("wq.a", payload: Data("0".utf8), messageID: "m0")
            #expect(again.duplicate && again.sequence == 1)
            let consumer = try await js.pullSubscribe("wq.>", durable: "w", stream: "TEST_WQ")
            let first = try await consumer.fetchAvailable(max: 3, wait: .seconds(5))
            #expect(first.map { String(decoding: $0.message.payload, as: UTF8.self) } == ["0", "1", "2"])
            let rest = try await consumer.fetchAvailable(max: 3, wait: .seconds(5))
            #expect(rest.map { String(decoding: $0.message.payload, as: UTF8.self) } == ["3", "4"])
            for message in first + rest { try message.ack() }
            try await connection.flush()
            #expect(try await consumer.fetchAvailable(max: 3, wait: .milliseconds(300)).isEmpty)
            // Acknowledged messages are gone from a work-queue stream; reading one back says so.
            var gone = false
            for _ in 0..<50 where !gone {
                gone = try await js.message(stream: "TEST_WQ", sequence: 1) == nil
                if !gone { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(gone)
            await expectNoStream(connection)
            await connection.close()
        }
    }

    /// A publish no stream captures fails with no responders (how the scheduler learns that
    /// JetStream or its stream is missing).
    private func expectNoStream(_ connection: NATSConnection) async {
        do {
            _ = try await connection.jetStreamPublish("nostream.x", payload: Data(), timeout: .seconds(2))
            Issue.record("a publish outside every stream was acknowledged")
        } catch let error as NATSError {
            #expect(error.kind == .noResponders, "\(error)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}
