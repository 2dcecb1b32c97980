import Foundation
import HangarShared
import Testing

@testable import HangarNode

@Suite("Result outbox")
struct ResultOutboxTests {
    @Test("a batch framed from results serialized alone decodes as the same AttemptResultBatch")
    func framedBatchDecodes() throws {
        var results: [Hangar_V1_AttemptResult] = []
        for index in 0..<5 {
            var result = Hangar_V1_AttemptResult()
            result.jobID = "job-\(index)"
            result.attempt = UInt32(index + 1)
            result.status = .succeeded
            // Lengths of one, two and three varint bytes.
            result.stdout = Data(repeating: UInt8(index), count: [0, 100, 200, 20_000, 3][index])
            results.append(result)
        }
        let payload = ResultOutbox.batchPayload(try results.map { try $0.serializedData() })
        let decoded = try Hangar_V1_AttemptResultBatch(serializedBytes: payload)
        #expect(decoded.results == results)
        var expected = Hangar_V1_AttemptResultBatch()
        expected.results = results
        #expect(payload == (try expected.serializedData()))
    }
}
