import Foundation
import HangarNATS
import HangarTestSupport
import Testing

/// Closing a connection while other tasks publish, request and read on it, then dropping every
/// reference, over and over. Under ASan (`scripts/check-leaks`) any libnats object or callback
/// context used after it was freed fails the run; in a plain run the process must not crash.
@Suite("NATS binding: close while busy")
struct CloseRaceTests {
    @Test("close, drain and release while publishing, requesting and reading, 30 times")
    func closeWhileBusy() async throws {
        try await withNATSServer { server in
            let responder = try await connectForTest(server, name: "responder")
            let echo = try responder.subscribe("race.echo")
            try await responder.flush()
            let serving = Task {
                for await message in echo { try? responder.reply(to: message, payload: message.payload) }
            }
            var completed = 0
            for round in 0..<30 {
                let connection = try await connectForTest(server, name: "racer-\(round)")
                let subscription = try connection.subscribe("race.\(round).>")
                let reader = Task {
                    var count = 0
                    for await _ in subscription { count += 1 }
                    return count
                }
                let workers = (0..<4).map { worker in
                    Task {
                        var sent = 0
                        for index in 0..<200 {
                            do {
                                try connection.publish("race.\(round).\(worker)", payload: Data(count: 64))
                                if index.isMultiple(of: 10) {
                                    _ = try await connection.request(
                                        "race.echo",
                                        payload: Data("x".utf8),
                                        headers: ["N": "\(index)"],
                                        timeout: .milliseconds(200)
                                    )
                                }
                                sent += 1
                            } catch {
                                // Closed underneath us: expected, keep going so calls race the close.
                            }
                        }
                        return sent
                    }
                }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...15)))
                if round.isMultiple(of: 2) {
                    await connection.close()
                } else {
                    await connection.drain(timeout: .milliseconds(500))
                }
                for worker in workers { completed += await worker.value }
                subscription.unsubscribe()
                _ = await reader.value
            }
            #expect(completed > 0)
            echo.unsubscribe()
            _ = await serving.value
            await responder.close()
        }
    }
}
