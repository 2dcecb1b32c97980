import Foundation
import HangarShared
import SwiftProtobuf

/// Makes answers fit in one NATS message. A Result carries up to `output_bytes` of stdout, of
/// stderr and of files; a wait-mode batch carries many Results. Whatever would exceed the server's
/// `max_payload` goes out with its output left out (`Result.output_omitted`): status, exit code,
/// usage and truncation flags stay, and the whole Result is stored, to be fetched by job id. So a
/// waiting client always gets an answer instead of hanging until its own timeout.
enum ReplyFitting {
    /// What one length-delimited item of `count` bytes adds to a message: tag, length, bytes.
    static func framedSize(_ count: Int) -> Int {
        var length = 1
        var value = UInt64(count)
        while value >= 0x80 {
            value >>= 7
            length += 1
        }
        return 1 + length + count
    }

    /// `result` (a serialized `Result`) if it fits in `limit` bytes, else the same Result with its
    /// output left out.
    static func fit(result: Data, limit: Int) -> Data {
        guard result.count > limit, var decoded = try? Hangar_V1_Result(serializedBytes: result) else { return result }
        omitOutput(&decoded)
        return (try? decoded.serializedData()) ?? result
    }

    /// `reply` (a serialized `SubmitReply`) if it fits in `limit` bytes, else the same reply with its
    /// Result's output left out.
    static func fit(reply: Data, limit: Int) -> Data {
        reply.count > limit ? omittingOutput(reply: reply) : reply
    }

    /// A `SubmitBatchReply` framed from `replies` (each a serialized `SubmitReply`), within `limit`
    /// bytes: the largest replies lose their output first, until the whole fits.
    static func batch(_ replies: [Data], limit: Int) -> Data {
        var replies = replies
        var total = replies.reduce(0) { $0 + framedSize($1.count) }
        if total > limit {
            for index in replies.indices.sorted(by: { replies[$0].count > replies[$1].count }) {
                let smaller = omittingOutput(reply: replies[index])
                total -= framedSize(replies[index].count) - framedSize(smaller.count)
                replies[index] = smaller
                if total <= limit { break }
            }
        }
        return ProtobufFraming.repeated(field: ProtobufFraming.batchItems, replies)
    }

    /// The reply with its Result's stdout, stderr and files left out; other replies unchanged.
    static func omittingOutput(reply: Data) -> Data {
        guard var decoded = try? Hangar_V1_SubmitReply(serializedBytes: reply),
            case .result(var result) = decoded.outcome
        else { return reply }
        omitOutput(&result)
        decoded.outcome = .result(result)
        return (try? decoded.serializedData()) ?? reply
    }

    private static func omitOutput(_ result: inout Hangar_V1_Result) {
        guard !result.stdout.isEmpty || !result.stderr.isEmpty || !result.files.isEmpty else { return }
        result.stdout = Data()
        result.stderr = Data()
        result.files = []
        result.outputOmitted = true
    }
}
