import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("Request timeouts (one deadline sweeper per connection)")
struct RequestTimeoutTests {
    @Test("after thousands of answered requests with long timeouts, a short one still times out")
    func shortTimeoutAfterManyAnswered() async throws {
        try await withNATSServer { server in
            let service = try await connectForTest(server, name: "service")
            let client = try await connectForTest(server, name: "client")
            let echo = try service.subscribe("test.echo")
            let silent = try service.subscribe("test.silent")
            try await service.flush()
            let serving = Task {
                for await message in echo { try? service.reply(to: message, payload: message.payload) }
            }
            // Answered requests leave their (long) deadlines behind in the connection's heap.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<16 {
                    group.addTask {
                        for index in 0..<200 {
                            let payload = Data("\(worker)-\(index)".utf8)
                            let answer = try await client.request("test.echo", payload: payload, timeout: .seconds(600))
                            #expect(answer.payload == payload)
                        }
                    }
                }
                try await group.waitForAll()
            }
            // Two short requests in flight at once, with different timeouts, to a silent subscriber.
            let started = ContinuousClock.now
            async let late = timeoutAfter(client, .milliseconds(600))
            async let early = timeoutAfter(client, .milliseconds(150))
            let (earlyElapsed, lateElapsed) = try await (early, late)
            #expect(earlyElapsed >= .milliseconds(150))
            #expect(lateElapsed >= .milliseconds(600))
            #expect(earlyElapsed < lateElapsed)
            #expect(ContinuousClock.now - started < .seconds(5))

            // The connection still answers afterwards (the sweeper restarts when needed).
            let answer = try await client.request("test.echo", payload: Data("again".utf8), timeout: .seconds(5))
            #expect(answer.payload == Data("again".utf8))
            #expect(try await timeoutAfter(client, .milliseconds(100)) >= .milliseconds(100))

            serving.cancel()
            echo.unsubscribe()
            silent.unsubscribe()
            await client.close()
            await service.close()
        }
    }

    /// Sends a request nobody answers; returns how long it took to time out. Fails the test if it
    /// was answered or failed otherwise, or if it did not end within 10 s (then it is cancelled).
    private func timeoutAfter(_ client: NATSConnection, _ timeout: Duration) async throws -> Duration {
        let started = ContinuousClock.now
        let outcome = await withTaskGroup(of: String?.self) { group in
            group.addTask {
                do {
                    _ = try await client.request("test.silent", payload: Data(), timeout: timeout)
                    return "a request to a silent subscriber was answered"
                } catch let error as NATSError where error.kind == .timeout {
                    return "\(error)".contains("test.silent") ? nil : "the timeout does not name the subject: \(error)"
                } catch {
                    return "expected a timeout, got \(error)"
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                return "no timeout within 10 s"
            }
            let first = await group.next() ?? "no outcome"
            group.cancelAll()
            return first
        }
        if let outcome { Issue.record("request with timeout \(timeout): \(outcome)") }
        return ContinuousClock.now - started
    }
}
