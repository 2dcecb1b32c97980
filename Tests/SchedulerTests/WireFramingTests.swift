import Foundation
import HangarShared
import Testing

@testable import HangarScheduler

/// Replies and batches built from bytes already serialized must be exactly what SwiftProtobuf
/// would encode: tenants and nodes decode them with it.
@Suite("Wire framing of encoded messages")
struct WireFramingTests {
    private func result(_ index: Int) -> Hangar_V1_Result {
        var result = Hangar_V1_Result()
        result.jobID = "job-\(index)"
        result.tenant = "acme"
        result.status = .succeeded
        // Lengths of one, two and three varint bytes.
        result.stdout = Data(repeating: UInt8(index), count: [0, 100, 20_000][index % 3])
        return result
    }

    @Test("a result framed as a SubmitReply is the SubmitReply SwiftProtobuf encodes")
    func submitReply() throws {
        for index in 0..<3 {
            let framed = ProtobufFraming.message(
                field: ProtobufFraming.submitReplyResult,
                try result(index).serializedData()
            )
            var reply = Hangar_V1_SubmitReply()
            reply.outcome = .result(result(index))
            #expect(framed == (try reply.serializedData()))
        }
    }

    @Test("a batch's answers, given in any order, come back as one SubmitBatchReply in request order")
    func submitBatchReply() throws {
        let batches = SubmitBatches()
        let subjects = batches.open(count: 3, replyTo: "_INBOX.x")
        var replies: [Hangar_V1_SubmitReply] = []
        for index in 0..<3 {
            var reply = Hangar_V1_SubmitReply()
            if index == 1 {
                var accepted = Hangar_V1_Accepted()
                accepted.jobID = "job-1"
                reply.outcome = .accepted(accepted)
            } else {
                reply.outcome = .result(result(index))
            }
            replies.append(reply)
        }
        #expect(batches.answer(subjects[2], try replies[2].serializedData()) == nil)
        #expect(batches.answer(subjects[0], try replies[0].serializedData()) == nil)
        // A second answer for the same request does not count.
        #expect(batches.answer(subjects[0], try replies[1].serializedData()) == nil)
        let complete = try #require(batches.answer(subjects[1], try replies[1].serializedData()))
        #expect(complete.replyTo == "_INBOX.x")
        var expected = Hangar_V1_SubmitBatchReply()
        expected.replies = replies
        let payload = ReplyFitting.batch(complete.replies, limit: 1 << 20)
        #expect(payload == (try expected.serializedData()))
        #expect(try Hangar_V1_SubmitBatchReply(serializedBytes: payload).replies == replies)
        #expect(batches.pendingCount == 0)
    }

    @Test("assignments framed from their own bytes are the AssignmentBatch SwiftProtobuf encodes")
    func assignmentBatch() throws {
        var assignments: [Hangar_V1_Assignment] = []
        for index in 0..<4 {
            var assignment = Hangar_V1_Assignment()
            assignment.jobID = "job-\(index)"
            assignment.attempt = UInt32(index + 1)
            assignment.traceparent = "00-\(String(repeating: "a", count: 32))-\(String(repeating: "b", count: 16))-01"
            assignments.append(assignment)
        }
        let framed = ProtobufFraming.repeated(
            field: ProtobufFraming.batchItems,
            try assignments.map { try $0.serializedData() }
        )
        var expected = Hangar_V1_AssignmentBatch()
        expected.assignments = assignments
        #expect(framed == (try expected.serializedData()))
    }
}
