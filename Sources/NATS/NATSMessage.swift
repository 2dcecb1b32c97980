import CNATS
import Foundation

/// One message received from NATS, copied out of libnats memory.
public struct NATSMessage: Sendable {
    public let subject: String
    /// The subject to answer on, if the sender expects a reply.
    public let replyTo: String?
    public let payload: Data
    /// Header values by key, in the order they were sent.
    public let headers: [String: [String]]

    public init(subject: String, replyTo: String? = nil, payload: Data, headers: [String: [String]] = [:]) {
        self.subject = subject
        self.replyTo = replyTo
        self.payload = payload
        self.headers = headers
    }

    /// Copies subject, reply, data and headers out of a libnats message (which the caller still owns).
    init(copying msg: OpaquePointer) {
        subject = String(cString: natsMsg_GetSubject(msg))
        if let reply = natsMsg_GetReply(msg) {
            let value = String(cString: reply)
            replyTo = value.isEmpty ? nil : value
        } else {
            replyTo = nil
        }
        let length = Int(natsMsg_GetDataLength(msg))
        if length > 0, let data = natsMsg_GetData(msg) {
            payload = Data(bytes: data, count: length)
        } else {
            payload = Data()
        }
        headers = Self.copyHeaders(msg)
    }

    /// The first value of a header, if present.
    public func header(_ key: String) -> String? { headers[key]?.first }

    private static func copyHeaders(_ msg: OpaquePointer) -> [String: [String]] {
        var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
        var count: Int32 = 0
        guard natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK, let keys, count > 0 else { return [:] }
        defer { free(keys) }
        var result: [String: [String]] = [:]
        for index in 0..<Int(count) {
            guard let keyPointer = keys[index] else { continue }
            var values: UnsafeMutablePointer<UnsafePointer<CChar>?>?
            var valueCount: Int32 = 0
            guard natsMsgHeader_Values(msg, keyPointer, &values, &valueCount) == NATS_OK, let values else {
                continue
            }
            defer { free(values) }
            result[String(cString: keyPointer)] = (0..<Int(valueCount)).compactMap {
                values[$0].map { String(cString: $0) }
            }
        }
        return result
    }
}

/// Builds a libnats message with headers; the caller destroys it.
func makeNATSMessage(
    subject: String,
    replyTo: String?,
    payload: Data,
    headers: [String: String]
) throws(NATSError) -> OpaquePointer {
    var msg: OpaquePointer?
    let status = payload.withUnsafeBytes { raw -> natsStatus in
        natsMsg_Create(
            &msg,
            subject,
            replyTo,
            raw.baseAddress?.assumingMemoryBound(to: CChar.self),
            Int32(raw.count)
        )
    }
    try NATSError.check(status, "natsMsg_Create(\(subject))")
    guard let msg else { throw NATSError(kind: .invalidArgument, operation: "natsMsg_Create", message: "no message") }
    for (key, value) in headers {
        let headerStatus = natsMsgHeader_Set(msg, key, value)
        if headerStatus != NATS_OK {
            natsMsg_Destroy(msg)
            throw NATSError(status: headerStatus, operation: "natsMsgHeader_Set(\(key))")
        }
    }
    return msg
}
