import Foundation
import HangarNATS
import HangarShared
import Testing

/// One tenant's flood of valid, large requests must not break anyone else's service.
@Suite("A flood from one tenant", .serialized)
struct FloodTests {
    /// A valid request of about 8 MiB: 4 MiB of stdin and 4 MiB of files (each at its bound).
    private func large(_ index: Int) -> Hangar_V1_SubmitRequest {
        var request = command("true", runtime: "null")
        request.stdin = Data(repeating: UInt8(index & 0x7F), count: 4 << 20)
        var file = Hangar_V1_FileIn()
        file.path = "blob.bin"
        file.content = Data(repeating: 0x41, count: (4 << 20) - 64)
        request.files = [file]
        return request
    }

    @Test(
        "40 concurrent 8 MiB requests: byte budget refuses most, the other tenant's running jobs finish, no node goes down"
    )
    func floodDoesNotStarveOthers() async throws {
        try await withCluster(
            nodes: 1,
            slots: 8,
            // The default TTL and grace (3 s + 2 s): a loaded CI machine must not fake a dead node.
            settings: SchedulerSettings(nodeTTL: .seconds(3), nodeGrace: .seconds(2))
        ) { cluster in
            // The calm tenant's jobs run through the flood: four started before it, four during it.
            func calmJob() async throws -> Hangar_V1_Result {
                try await cluster.run(
                    command("/bin/sh", "-c", "sleep 1.5; echo calm", timeoutMs: 60_000),
                    tenant: "calm"
                )
            }
            let early = (0..<4).map { _ in Task { try await calmJob() } }
            let started = ContinuousClock.now
            let flood = (0..<40).map { index in
                Task { () throws -> Hangar_V1_SubmitReply in
                    let payload = try large(index).serializedData()
                    let answer = try await cluster.client.request(
                        Subjects.submit(tenant: "flood"),
                        payload: payload,
                        timeout: .seconds(60)
                    )
                    return try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
                }
            }
            let during = (0..<4).map { _ in Task { try await calmJob() } }
            // Every request of the flood is answered; most are refused by the byte budget.
            var accepted: [String] = []
            var refused = 0
            for task in flood {
                let reply = try await task.value
                switch reply.outcome {
                case .accepted(let job): accepted.append(job.jobID)
                case .rejected(let rejected):
                    #expect([.rateLimited, .queueFull].contains(rejected.reason), "\(rejected)")
                    #expect(rejected.retryAfterMs > 0)
                    refused += 1
                default: Issue.record("unexpected reply \(reply)")
                }
            }
            let elapsed = started.duration(to: .now)
            // Burst 32 MiB plus 8 MiB/s: at most 4 + one per second of the flood got in.
            let allowed = 4 + Int(elapsed.components.seconds) + 1
            #expect(accepted.count <= allowed, "accepted \(accepted.count) of 40 in \(elapsed)")
            #expect(accepted.count + refused == 40)
            // The calm tenant's jobs all finish, successfully.
            for task in early + during {
                let result = try await task.value
                #expect(result.status == .succeeded && String(decoding: result.stdout, as: UTF8.self) == "calm\n")
            }
            // Nothing accepted is lost: every accepted flood job ends SUCCEEDED.
            for id in accepted {
                var done: Hangar_V1_Result?
                let deadline = ContinuousClock.now + .seconds(30)
                while done == nil && ContinuousClock.now < deadline {
                    done = try await cluster.scheduler.store.job(id: id)?.result
                    if done == nil { try await Task.sleep(for: .milliseconds(50)) }
                }
                #expect(done?.status == .succeeded, "flood job \(id): \(String(describing: done))")
            }
            // No node was declared down.
            let downs = try await cluster.scheduler.store.auditRows(tenant: nil, jobID: nil, sinceMs: 0, limit: 10_000)
                .filter { $0.event == "node.down" }
            #expect(downs.isEmpty, "nodes declared down: \(downs.map(\.detail))")
        }
    }
}
