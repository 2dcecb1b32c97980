import CNATS
import Foundation

extension JetStream {
    /// The message stored at `sequence` in `stream` (subject, headers, payload), or nil if the
    /// stream no longer holds it (acknowledged from a work-queue stream, or removed by a limit).
    public func message(stream: String, sequence: UInt64) async throws(NATSError) -> NATSMessage? {
        let context = UncheckedPointer(self.context)
        return try await runBlocking { () throws(NATSError) -> NATSMessage? in
            var msg: OpaquePointer?
            var code = jsErrCode(rawValue: 0)
            let status = js_GetMsg(&msg, context.pointer, stream, sequence, nil, &code)
            if status == NATS_NOT_FOUND || code == JSNoMessageFoundErr { return nil }
            try NATSError.check(status, "get message \(sequence) of \(stream) [js error \(code.rawValue)]")
            guard let msg else { return nil }
            defer { natsMsg_Destroy(msg) }
            return NATSMessage(copying: msg)
        }
    }
}

extension JetStream {
    /// Removes the messages of `stream` below `sequence` (what a retention limit would remove).
    public func purge(stream: String, keepingFrom sequence: UInt64) async throws(NATSError) {
        let context = UncheckedPointer(self.context)
        try await runBlocking { () throws(NATSError) in
            var options = jsOptions()
            try NATSError.check(jsOptions_Init(&options), "jsOptions_Init")
            options.Stream.Purge.Sequence = sequence
            var code = jsErrCode(rawValue: 0)
            let status = js_PurgeStream(context.pointer, stream, &options, &code)
            try NATSError.check(status, "purge \(stream) below \(sequence) [js error \(code.rawValue)]")
        }
    }
}
