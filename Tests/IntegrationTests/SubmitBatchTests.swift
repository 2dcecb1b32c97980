import Foundation
import HangarNATS
import HangarShared
import Testing

@Suite("Batch submit (SubmitBatchRequest)")
struct SubmitBatchTests {
    @Test("each request of a batch is admitted or rejected on its own; answers come back in order")
    func waitModeBatch() async throws {
        try await withCluster(nodes: 2, slots: 8) { cluster in
            var batch = Hangar_V1_SubmitBatchRequest()
            for index in 0..<20 {
                var request = command("/bin/true", runtime: "null")
                request.wait = true
                if index == 7 { request.argv = [] }  // invalid: no argv and no code
                if index == 11 { request.template = "no-such-template" }  // no node holds it
                batch.requests.append(request)
            }
            let replies = try await send(batch, cluster)
            #expect(replies.count == 20)
            var jobIDs: Set<String> = []
            for (index, reply) in replies.enumerated() {
                switch reply.outcome {
                case .result(let result) where index != 7 && index != 11:
                    #expect(result.status == .succeeded, "request \(index): \(result)")
                    jobIDs.insert(result.jobID)
                case .rejected(let rejected) where index == 7:
                    #expect(rejected.reason == .invalidRequest, "request 7: \(rejected)")
                case .rejected(let rejected) where index == 11:
                    #expect(rejected.reason == .unsupported, "request 11: \(rejected)")
                default:
                    Issue.record("request \(index): unexpected \(reply)")
                }
            }
            #expect(jobIDs.count == 18, "each accepted request is its own job")
        }
    }

    @Test("without wait, a batch is answered with one Accepted per request once they are stored")
    func acceptedBatch() async throws {
        try await withCluster(nodes: 1, slots: 8) { cluster in
            var batch = Hangar_V1_SubmitBatchRequest()
            for index in 0..<5 {
                var request = command("/bin/true", runtime: "null")
                request.requestID = "batch-\(index % 4)"  // the last one repeats the first
                batch.requests.append(request)
            }
            let replies = try await send(batch, cluster)
            let accepted = replies.compactMap { reply -> Hangar_V1_Accepted? in
                if case .accepted(let accepted) = reply.outcome { return accepted }
                return nil
            }
            #expect(accepted.count == 5, "replies: \(replies)")
            #expect(Set(accepted.map(\.jobID)).count == 4)
            #expect(accepted.count == 5 && accepted[4].jobID == accepted[0].jobID && accepted[4].duplicate)

            var tooMany = Hangar_V1_SubmitBatchRequest()
            tooMany.requests = Array(repeating: command("/bin/true", runtime: "null"), count: SubmitBatch.maxCount + 1)
            let refused = try await send(tooMany, cluster)
            #expect(refused.count == SubmitBatch.maxCount + 1)
            #expect(
                refused.allSatisfy {
                    if case .rejected(let rejected) = $0.outcome { return rejected.reason == .invalidRequest }
                    return false
                }
            )
        }
    }

    private func send(
        _ batch: Hangar_V1_SubmitBatchRequest,
        _ cluster: TestCluster
    ) async throws -> [Hangar_V1_SubmitReply] {
        let answer = try await cluster.client.request(
            Subjects.submit(tenant: "acme"),
            payload: try batch.serializedData(),
            headers: [SubmitBatch.header: SubmitBatch.value],
            timeout: .seconds(60)
        )
        return try Hangar_V1_SubmitBatchReply(serializedBytes: answer.payload).replies
    }
}
