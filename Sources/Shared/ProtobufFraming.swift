import Foundation

/// Protobuf wire bytes built from messages that are already serialized, so that a message sent
/// inside another (a result inside a reply, many results or assignments in one batch) is encoded
/// once. Only length-delimited fields: what a message field, or one element of a repeated message
/// field, encodes to.
public enum ProtobufFraming {
    /// `Hangar_V1_SubmitReply.result`.
    public static let submitReplyResult = 3
    /// The repeated message field of every batch message (`SubmitBatchReply.replies`,
    /// `AssignmentBatch.assignments`, `AttemptResultBatch.results`).
    public static let batchItems = 1

    /// Appends `bytes` (a serialized message) as field `number`, length-delimited.
    public static func append(field number: Int, _ bytes: Data, to out: inout Data) {
        appendVarint(UInt64(number) << 3 | 2, to: &out)
        appendVarint(UInt64(bytes.count), to: &out)
        out.append(bytes)
    }

    /// `bytes` as the only field `number` of an otherwise empty message.
    public static func message(field number: Int, _ bytes: Data) -> Data {
        var out = Data()
        out.reserveCapacity(bytes.count + 6)
        append(field: number, bytes, to: &out)
        return out
    }

    /// A message whose only content is the repeated message field `number`, holding `items`.
    public static func repeated(field number: Int, _ items: [Data]) -> Data {
        var out = Data()
        out.reserveCapacity(items.reduce(0) { $0 + $1.count + 6 })
        for item in items { append(field: number, item, to: &out) }
        return out
    }

    private static func appendVarint(_ value: UInt64, to out: inout Data) {
        var value = value
        while value >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
    }
}
