import Foundation
import HangarShared
import Testing

@testable import HangarScheduler

@Suite("Replies always fit in one NATS message")
struct ReplyFittingTests {
    private func result(_ job: String, output: Int) -> Hangar_V1_Result {
        var result = Hangar_V1_Result()
        result.jobID = job
        result.status = .succeeded
        result.stdout = Data(repeating: 0x61, count: output)
        result.stderr = Data(repeating: 0x62, count: output)
        result.stdoutTruncated = true
        var file = Hangar_V1_FileOut()
        file.path = "out.bin"
        file.content = Data(repeating: 0x63, count: output)
        result.files = [file]
        result.usage.stdoutBytes = UInt64(output) * 2
        return result
    }

    private func reply(_ result: Hangar_V1_Result) throws -> Data {
        var reply = Hangar_V1_SubmitReply()
        reply.outcome = .result(result)
        return try reply.serializedData()
    }

    @Test("a wait-mode batch whose results exceed the limit keeps status and sizes, leaves output out, says so")
    func batchFits() throws {
        // Three results of 4 MiB stdout + 4 MiB stderr (+ files), as in the report: 25 MiB together.
        let replies = try (0..<3).map { try reply(result("job-\($0)", output: 4 << 20)) }
        let limit = 16 << 20
        let payload = ReplyFitting.batch(replies, limit: limit)
        #expect(payload.count <= limit)
        let decoded = try Hangar_V1_SubmitBatchReply(serializedBytes: payload)
        #expect(decoded.replies.count == 3)
        var omitted = 0
        for (index, one) in decoded.replies.enumerated() {
            guard case .result(let result) = one.outcome else {
                Issue.record("reply \(index) is not a result")
                continue
            }
            #expect(result.jobID == "job-\(index)" && result.status == .succeeded)
            #expect(result.usage.stdoutBytes == 8 << 20 && result.stdoutTruncated)
            if result.outputOmitted {
                omitted += 1
                #expect(result.stdout.isEmpty && result.stderr.isEmpty && result.files.isEmpty)
            } else {
                #expect(result.stdout.count == 4 << 20)
            }
        }
        // 25 MiB into 16: two lose their output, one keeps it (largest first, only as many as needed).
        #expect(omitted == 2)
    }

    @Test("a batch under the limit is framed unchanged; a single reply over it loses its output only")
    func underAndSingle() throws {
        let small = try reply(result("small", output: 10))
        #expect(
            ReplyFitting.batch([small, small], limit: 1 << 20) == ProtobufFraming.repeated(field: 1, [small, small])
        )
        #expect(ReplyFitting.fit(reply: small, limit: 1 << 20) == small)
        let big = try reply(result("big", output: 1 << 20))
        let fitted = try Hangar_V1_SubmitReply(serializedBytes: ReplyFitting.fit(reply: big, limit: 1 << 20))
        guard case .result(let result) = fitted.outcome else {
            Issue.record("not a result: \(fitted)")
            return
        }
        #expect(result.outputOmitted && result.jobID == "big" && result.stdout.isEmpty)
        let encoded = try result.serializedData()
        #expect(
            ReplyFitting.fit(result: try self.result("r", output: 1 << 20).serializedData(), limit: 1 << 20).count
                < 1024
        )
        #expect(ReplyFitting.fit(result: encoded, limit: 1 << 20) == encoded)
    }
}
