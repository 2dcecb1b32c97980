import Foundation
import HangarNATS
import HangarNode
import HangarShared
import Testing

@Suite("Node limits and files out, through the scheduler", .serialized)
struct NodeLimitsTests {
    @Test("a job above every node's maximum for its runtime is rejected at once, naming the limit")
    func aboveNodeMaximum() async throws {
        let cluster = try await TestCluster.start(nodes: 2, runtimes: [NullRuntime()]) { _, config in
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

@Suite("Live output of a running job")
struct LiveOutputTests {
    @Test("a running job's output chunks arrive on hangar.logs.<tenant>.<job> before it ends")
    func liveChunks() async throws {
        try await withCluster(nodes: 1) { cluster in
            var request = command("/bin/sh", "-c", "sleep 1; echo first; sleep 3; echo second")
            request.wait = false
            guard case .accepted(let accepted) = try await cluster.submit(request).outcome else {
                Issue.record("expected Accepted")
                return
            }
            let logs = try cluster.client.subscribe(Subjects.logs(tenant: "acme", job: accepted.jobID))
            try await cluster.client.flush()
            let first = Task { () -> NATSMessage? in
                for await message in logs { return message }
                return nil
            }
            let timeout = Task {
                try? await Task.sleep(for: .seconds(10))
                logs.unsubscribe()
            }
            let chunk = await first.value
            timeout.cancel()
            #expect(chunk.map { String(decoding: $0.payload, as: UTF8.self) } == "first\n")
            #expect(chunk?.header("Hangar-Stream") == "stdout")
            #expect(chunk?.header("Hangar-Offset") == "0")
            // The job is still running when its first line is out.
            var query = Hangar_V1_JobRequest()
            query.jobID = accepted.jobID
            let answer = try await cluster.client.request(
                Subjects.admin("job"),
                payload: try query.serializedData(),
                timeout: .seconds(5)
            )
            let reply = try Hangar_V1_JobReply(serializedBytes: answer.payload)
            guard case .status(let status) = reply.outcome else {
                Issue.record("the job had already ended: \(reply)")
                return
            }
            #expect(status == .running)
            logs.unsubscribe()
        }
    }
}
