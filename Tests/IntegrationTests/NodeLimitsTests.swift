import Foundation
import HangarNode
import HangarShared
import Testing

@Suite("Node limits and files out, through the scheduler", .serialized)
struct NodeLimitsTests {
    @Test("a job above every node's maximum for its runtime is rejected at once, naming the limit")
    func aboveNodeMaximum() async throws {
        let cluster = try await TestCluster.start(nodes: 2, runtimes: [NullRuntime()]) { config in
            var limits = RuntimeLimits.standard()
            limits.maximum.timeoutMs = 2000
            config.runtimeLimits["null"] = limits
        }
        do {
            var request = command("/bin/true", runtime: "null", timeoutMs: 5000)
            request.wait = true
            let reply = try await cluster.submit(request, timeout: .seconds(10))
            guard case .rejected(let rejected) = reply.outcome else {
                Issue.record("expected a rejection, got \(reply)")
                await cluster.stop()
                return
            }
            #expect(rejected.reason == .noCapacity)
            #expect(rejected.message.contains("limits.timeout_ms"), "\(rejected.message)")
            // Within the maximum it runs.
            let result = try await cluster.run(command("/bin/true", runtime: "null", timeoutMs: 2000))
            #expect(result.status == .succeeded, "\(result)")
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    @Test("files_out comes back in the Result")
    func filesOut() async throws {
        try await withCluster(nodes: 1) { cluster in
            var request = command("/bin/sh", "-c", "mkdir out && echo 42 > out/answer.txt && echo no > skip.log")
            request.filesOut = ["out/*.txt", "*.json"]
            let result = try await cluster.run(request)
            #expect(result.status == .succeeded, "\(result)")
            #expect(result.files.map(\.path) == ["out/answer.txt"])
            #expect(result.files.first.map { String(decoding: $0.content, as: UTF8.self) } == "42\n")
        }
    }
}
