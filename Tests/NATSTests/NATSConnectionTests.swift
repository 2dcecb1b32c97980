import Foundation
import HangarNATS
import HangarTestSupport
import Synchronization
import Testing

@Suite("NATS binding against a real nats-server")
struct NATSConnectionTests {
    @Test("publish with headers reaches a subscriber intact")
    func publishSubscribeHeaders() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let subscription = try connection.subscribe("test.headers")
            try await connection.flush()
            try connection.publish(
                "test.headers",
                payload: Data("hello".utf8),
                headers: ["Trace-Id": "abc", "X-N": "1"]
            )
            var iterator = subscription.makeAsyncIterator()
            let message = try #require(await iterator.next())
            #expect(message.subject == "test.headers")
            #expect(String(decoding: message.payload, as: UTF8.self) == "hello")
            #expect(message.header("Trace-Id") == "abc")
            #expect(message.header("X-N") == "1")
            await connection.close()
        }
    }

    @Test("request/reply, timeout and no responders")
    func requestReply() async throws {
        try await withNATSServer { server in
            let service = try await connectForTest(server, name: "service")
            let client = try await connectForTest(server, name: "client")
            let subscription = try service.subscribe("test.echo", queueGroup: "echo")
            try await service.flush()
            let serving = Task {
                for await message in subscription {
                    try? service.reply(to: message, payload: Data(message.payload.reversed()))
                }
            }
            let answer = try await client.request("test.echo", payload: Data("abc".utf8), timeout: .seconds(2))
            #expect(String(decoding: answer.payload, as: UTF8.self) == "cba")

            await #expect(throws: NATSError.self) {
                _ = try await client.request("test.nobody", payload: Data(), timeout: .seconds(2))
            }
            do {
                _ = try await client.request("test.nobody", payload: Data(), timeout: .seconds(2))
            } catch let error as NATSError {
                #expect(error.kind == .noResponders)
            }

            // A subscriber that never answers: the request times out.
            let silent = try service.subscribe("test.silent")
            try await service.flush()
            let started = ContinuousClock.now
            do {
                _ = try await client.request("test.silent", payload: Data(), timeout: .milliseconds(200))
                Issue.record("expected a timeout")
            } catch let error as NATSError {
                #expect(error.kind == .timeout)
            }
            // Its own 200 ms, not a longer wait: a loaded test process stalls its tasks for up to
            // ~1.7 s at times, so the bound leaves room.
            #expect(ContinuousClock.now - started < .seconds(5))
            silent.unsubscribe()
            subscription.unsubscribe()
            serving.cancel()
            await client.close()
            await service.close()
        }
    }

    @Test("many concurrent requests each get their own answer (stress, no races)")
    func concurrentRequests() async throws {
        try await withNATSServer { server in
            let service = try await connectForTest(server, name: "service")
            let client = try await connectForTest(server, name: "client")
            let subscription = try service.subscribe("test.double")
            try await service.flush()
            let serving = Task {
                for await message in subscription {
                    let value = Int(String(decoding: message.payload, as: UTF8.self)) ?? -1
                    try? service.reply(to: message, payload: Data(String(value * 2).utf8))
                }
            }
            let count = 2000
            let mismatches = try await withThrowingTaskGroup(of: Bool.self) { group in
                for value in 0..<count {
                    group.addTask {
                        let answer = try await client.request(
                            "test.double",
                            payload: Data(String(value).utf8),
                            timeout: .seconds(10)
                        )
                        return String(decoding: answer.payload, as: UTF8.self) == String(value * 2)
                    }
                }
                var bad = 0
                for try await ok in group where !ok { bad += 1 }
                return bad
            }
            #expect(mismatches == 0)
            serving.cancel()
            subscription.unsubscribe()
            await client.close()
            await service.close()
        }
    }

    @Test("a slow consumer drops beyond its buffer and says so")
    func slowConsumer() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let subscription = try connection.subscribe("test.flood", bufferLimit: 10)
            try await connection.flush()
            for index in 0..<500 {
                try connection.publish("test.flood", payload: Data(String(index).utf8))
            }
            try await connection.flush()
            // Let libnats deliver everything into the bounded buffer.
            let deadline = ContinuousClock.now + .seconds(5)
            while subscription.droppedCount < 490 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(subscription.droppedCount == 490)
            var iterator = subscription.makeAsyncIterator()
            let first = try #require(await iterator.next())
            #expect(String(decoding: first.payload, as: UTF8.self) == "0")
            await connection.close()
        }
    }

    @Test("drain delivers pending messages and ends the sequence")
    func drainEndsSequence() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let publisher = try await connectForTest(server, name: "publisher")
            let subscription = try connection.subscribe("test.drain")
            try await connection.flush()
            for index in 0..<100 { try publisher.publish("test.drain", payload: Data(String(index).utf8)) }
            try await publisher.flush()
            try await Task.sleep(for: .milliseconds(100))
            await connection.drain()
            var received = 0
            for await _ in subscription { received += 1 }
            #expect(received == 100)
            #expect(!connection.isConnected)
            await publisher.close()
        }
    }

    @Test("reconnects after the server restarts, and subscriptions keep working")
    func reconnect() async throws {
        let directory = try makeTemporaryDirectory("hangar-nats-restart")
        defer { try? FileManager.default.removeItem(at: directory) }
        var server = try await LocalNATSServer(directory: directory)
        let port = server.port
        let connection = try await connectForTest(server)
        let subscription = try connection.subscribe("test.after")
        try await connection.flush()
        server.crash()
        // The client must see the server go before it comes back, or no reconnect is tested.
        let gone = ContinuousClock.now + .seconds(10)
        while connection.isConnected && ContinuousClock.now < gone {
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(!connection.isConnected, "the client did not notice the server's crash within 10 s")
        server = try await LocalNATSServer(directory: directory, port: port)
        let deadline = ContinuousClock.now + .seconds(10)
        while connection.reconnectCount == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(connection.reconnectCount >= 1)
        let publisher = try await connectForTest(server, name: "publisher")
        try publisher.publish("test.after", payload: Data("back".utf8))
        try await publisher.flush()
        var iterator = subscription.makeAsyncIterator()
        let message = try #require(await iterator.next())
        #expect(String(decoding: message.payload, as: UTF8.self) == "back")
        await publisher.close()
        await connection.close()
        server.stop()
    }
}
