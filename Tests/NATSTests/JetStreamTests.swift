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

            let consumer = try await js.pullSubscribe("intake.>", durable: "workers", ackWait: .seconds(1))
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
}
