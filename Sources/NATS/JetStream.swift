import CNATS
import Foundation

/// The configuration of a JetStream stream that ``JetStream/ensureStream(_:)`` creates or updates.
public struct JetStreamStreamConfig: Sendable {
    public enum Storage: Sendable { case file, memory }
    public enum Retention: Sendable { case limits, workQueue }

    public var name: String
    public var subjects: [String]
    public var storage: Storage
    public var retention: Retention
    /// How long the server remembers message ids for de-duplication.
    public var duplicateWindow: Duration
    /// Zero: keep forever (within the other limits).
    public var maxAge: Duration
    /// -1: unlimited.
    public var maxBytes: Int64
    /// When the stream is full: refuse new messages (true) instead of dropping the oldest (false).
    public var discardNew = false
    /// How many servers of a JetStream cluster hold a copy (1, 3 or 5; a single server takes 1).
    /// Each message is stored on a majority before its publish is acknowledged (Raft), so an R3
    /// stream loses nothing when one server dies.
    public var replicas = 1

    public init(
        name: String,
        subjects: [String],
        storage: Storage = .file,
        retention: Retention = .limits,
        duplicateWindow: Duration = .seconds(120),
        maxAge: Duration = .zero,
        maxBytes: Int64 = -1
    ) {
        self.name = name
        self.subjects = subjects
        self.storage = storage
        self.retention = retention
        self.duplicateWindow = duplicateWindow
        self.maxAge = maxAge
        self.maxBytes = maxBytes
    }
}

/// What the server said about a JetStream publish.
public struct JetStreamPublishAck: Sendable, Equatable {
    public let stream: String
    public let sequence: UInt64
    /// The message id was already in the stream's duplicate window; nothing new was stored.
    public let duplicate: Bool

    /// Wraps the server's answer.
    public init(stream: String, sequence: UInt64, duplicate: Bool) {
        self.stream = stream
        self.sequence = sequence
        self.duplicate = duplicate
    }
}

/// JetStream calls over one connection. All of them wait for the server and run off the
/// cooperative thread pool.
public final class JetStream: @unchecked Sendable {
    // @unchecked Sendable: `context` is a libnats jsCtx, safe to use from any thread; `owner` keeps
    // the connection alive for as long as the context is used.
    let context: OpaquePointer
    private let owner: NATSConnection
    private let timeout: Duration
    /// The connection's reaper, which frees released pull subscriptions.
    let reaper: SubscriptionReaper

    init(connection: OpaquePointer, owner: NATSConnection, timeout: Duration) throws(NATSError) {
        var options = jsOptions()
        try NATSError.check(jsOptions_Init(&options), "jsOptions_Init")
        options.Wait = timeout.milliseconds
        var context: OpaquePointer?
        try NATSError.check(natsConnection_JetStream(&context, connection, &options), "natsConnection_JetStream")
        guard let context else { throw NATSError(kind: .invalidArgument, operation: "JetStream", message: "nil") }
        self.context = context
        self.owner = owner
        self.timeout = timeout
        self.reaper = owner.events.reaper
    }

    deinit {
        jsCtx_Destroy(context)
    }

    /// Creates the stream, or updates it to `config` if it exists.
    public func ensureStream(_ config: JetStreamStreamConfig) async throws(NATSError) {
        let context = UncheckedPointer(self.context)
        try await runBlocking { () throws(NATSError) in
            var cfg = jsStreamConfig()
            try NATSError.check(jsStreamConfig_Init(&cfg), "jsStreamConfig_Init")
            let name = strdup(config.name)
            let subjects = config.subjects.map { UnsafePointer(strdup($0)) }
            defer {
                free(name)
                for subject in subjects { free(UnsafeMutablePointer(mutating: subject)) }
            }
            cfg.Name = UnsafePointer(name)
            cfg.Storage = config.storage == .file ? js_FileStorage : js_MemoryStorage
            cfg.Retention = config.retention == .limits ? js_LimitsPolicy : js_WorkQueuePolicy
            cfg.Duplicates = config.duplicateWindow.nanoseconds
            cfg.MaxAge = config.maxAge.nanoseconds
            cfg.MaxBytes = config.maxBytes
            if config.discardNew { cfg.Discard = js_DiscardNew }
            cfg.Replicas = Int64(config.replicas)
            try subjects.withUnsafeBufferPointer { buffer throws(NATSError) in
                cfg.Subjects = UnsafeMutablePointer(mutating: buffer.baseAddress)
                cfg.SubjectsLen = Int32(buffer.count)
                var info: UnsafeMutablePointer<jsStreamInfo>?
                var code = jsErrCode(rawValue: 0)
                // An existing stream is updated, not added again: nats-server 2.9 counts an add's
                // byte reservation before it notices the name exists, so a second add can fail
                // with "insufficient storage resources".
                var status = js_GetStreamInfo(&info, context.pointer, name, nil, &code)
                if let found = info {
                    jsStreamInfo_Destroy(found)
                    info = nil
                }
                if status == NATS_OK {
                    status = js_UpdateStream(&info, context.pointer, &cfg, nil, &code)
                } else {
                    status = js_AddStream(&info, context.pointer, &cfg, nil, &code)
                    if status != NATS_OK && code == JSStreamNameExistErr {
                        status = js_UpdateStream(&info, context.pointer, &cfg, nil, &code)
                    }
                }
                if let info { jsStreamInfo_Destroy(info) }
                try NATSError.check(status, "ensureStream(\(config.name)) [js error \(code.rawValue)]")
            }
        }
    }

    /// Publishes into a stream and waits for the server's ack. `messageID` de-duplicates within the
    /// stream's duplicate window.
    public func publish(
        _ subject: String,
        payload: Data,
        messageID: String? = nil,
        headers: [String: String] = [:]
    ) async throws(NATSError) -> JetStreamPublishAck {
        let context = UncheckedPointer(self.context)
        let timeout = self.timeout
        return try await runBlocking { () throws(NATSError) in
            let msg = try makeNATSMessage(subject: subject, replyTo: nil, payload: payload, headers: headers)
            defer { natsMsg_Destroy(msg) }
            var options = jsPubOptions()
            try NATSError.check(jsPubOptions_Init(&options), "jsPubOptions_Init")
            options.MaxWait = timeout.milliseconds
            let id: UnsafeMutablePointer<CChar>? = messageID.flatMap { strdup($0) }
            defer { free(id) }
            options.MsgId = UnsafePointer(id)
            var ack: UnsafeMutablePointer<jsPubAck>?
            var code = jsErrCode(rawValue: 0)
            let status = js_PublishMsg(&ack, context.pointer, msg, &options, &code)
            defer { if let ack { jsPubAck_Destroy(ack) } }
            try NATSError.check(status, "jetstream publish(\(subject)) [js error \(code.rawValue)]")
            guard let ack else {
                throw NATSError(kind: .invalidArgument, operation: "jetstream publish", message: "no ack")
            }
            return JetStreamPublishAck(
                stream: ack.pointee.Stream.map { String(cString: $0) } ?? "",
                sequence: ack.pointee.Sequence,
                duplicate: ack.pointee.Duplicate
            )
        }
    }

    /// Sets the ack wait of durable consumer `durable` of `stream` to `ackWait` if it exists with
    /// another (its other settings kept), so that binding it with `ackWait` is not refused as a
    /// configuration mismatch: how a consumer made by an earlier version takes a new ack wait.
    /// Returns whether it changed it; nothing happens when the consumer does not exist.
    @discardableResult
    public func setAckWait(stream: String, durable: String, to ackWait: Duration) async throws(NATSError) -> Bool {
        let context = UncheckedPointer(self.context)
        return try await runBlocking { () throws(NATSError) -> Bool in
            var info: UnsafeMutablePointer<jsConsumerInfo>?
            var code = jsErrCode(rawValue: 0)
            let status = js_GetConsumerInfo(&info, context.pointer, stream, durable, nil, &code)
            defer { if let info { jsConsumerInfo_Destroy(info) } }
            if status == NATS_NOT_FOUND || code == JSConsumerNotFoundErr { return false }
            try NATSError.check(status, "consumer info \(stream)/\(durable) [js error \(code.rawValue)]")
            guard let config = info?.pointee.Config, config.pointee.AckWait != ackWait.nanoseconds else { return false }
            config.pointee.AckWait = ackWait.nanoseconds
            var updated: UnsafeMutablePointer<jsConsumerInfo>?
            let update = js_UpdateConsumer(&updated, context.pointer, stream, config, nil, &code)
            if let updated { jsConsumerInfo_Destroy(updated) }
            try NATSError.check(update, "update consumer \(stream)/\(durable) [js error \(code.rawValue)]")
            return true
        }
    }

    /// Binds a durable pull consumer on `subject` (created if missing) with explicit acks. With
    /// `stream`, libnats binds to that stream without looking it up by subject.
    public func pullSubscribe(
        _ subject: String,
        durable: String,
        stream: String? = nil,
        ackWait: Duration = .seconds(30),
        maxDeliver: Int = -1
    ) async throws(NATSError) -> JetStreamPullConsumer {
        let context = UncheckedPointer(self.context)
        let sub = try await runBlocking { () throws(NATSError) in
            var options = jsSubOptions()
            try NATSError.check(jsSubOptions_Init(&options), "jsSubOptions_Init")
            // Named: libnats binds to it directly instead of looking the stream up by subject.
            let streamName: UnsafeMutablePointer<CChar>? = stream.flatMap { strdup($0) }
            defer { free(streamName) }
            options.Stream = UnsafePointer(streamName)
            options.Config.AckWait = ackWait.nanoseconds
            options.Config.MaxDeliver = Int64(maxDeliver)
            var sub: OpaquePointer?
            var code = jsErrCode(rawValue: 0)
            let status = js_PullSubscribe(&sub, context.pointer, subject, durable, nil, &options, &code)
            try NATSError.check(status, "pullSubscribe(\(subject), \(durable)) [js error \(code.rawValue)]")
            guard let sub else { throw NATSError(kind: .invalidArgument, operation: "pullSubscribe", message: "nil") }
            return UncheckedPointer(sub)
        }
        reaper.register(sub.pointer, subject: subject)
        return JetStreamPullConsumer(subscription: sub.pointer, owner: self)
    }
}

/// A durable pull consumer: fetch batches, then ack, nak or term each message.
public final class JetStreamPullConsumer: @unchecked Sendable {
    // @unchecked Sendable: wraps a libnats subscription (thread-safe); `owner` keeps the JetStream
    // context and its connection alive.
    let subscription: OpaquePointer
    private let owner: JetStream

    init(subscription: OpaquePointer, owner: JetStream) {
        self.subscription = subscription
        self.owner = owner
    }

    deinit {
        // `natsSubscription_Destroy` unsubscribes without deleting the durable consumer (sub.c:
        // 1456-1464); the reaper frees the subscription once the read loop cannot hold it (pull
        // answers or a 408 can still arrive; a libnats 3.4.1 use-after-free otherwise, see
        // `SubscriptionReaper`).
        let subscription = subscription
        owner.reaper.retire(subscription) { natsSubscription_Destroy(subscription) }
    }

    /// Fetches up to `batch` messages, waiting at most `timeout` for the first. Returns an empty
    /// array when none arrived in time.
    public func fetch(batch: Int, timeout: Duration) async throws(NATSError) -> [JetStreamMessage] {
        let sub = UncheckedPointer(subscription)
        let pointers = try await runBlocking { () throws(NATSError) -> [UncheckedPointer] in
            var list = natsMsgList()
            var code = jsErrCode(rawValue: 0)
            let status = natsSubscription_Fetch(&list, sub.pointer, Int32(batch), timeout.milliseconds, &code)
            if status == NATS_TIMEOUT { return [] }
            try NATSError.check(status, "fetch [js error \(code.rawValue)]")
            var result: [UncheckedPointer] = []
            for index in 0..<Int(list.Count) {
                if let msg = list.Msgs[index] {
                    result.append(UncheckedPointer(msg))
                    list.Msgs[index] = nil  // ownership moves to JetStreamMessage
                }
            }
            natsMsgList_Destroy(&list)
            return result
        }
        return pointers.map { JetStreamMessage(owning: $0.pointer, consumer: self) }
    }

    /// Removes the interest; the durable consumer stays on the server.
    public func unsubscribe() {
        natsSubscription_Unsubscribe(subscription)
    }
}

/// A message fetched from a pull consumer. Must be acknowledged one way or another.
public final class JetStreamMessage: @unchecked Sendable {
    // @unchecked Sendable: owns one libnats message; ack/nak/term are thread-safe in libnats.
    private let msg: OpaquePointer
    /// Acks go through the message's subscription: keep it (and its connection) alive as long as the
    /// message, or an ack after the consumer was released would lock freed memory.
    private let consumer: JetStreamPullConsumer
    public let message: NATSMessage

    init(owning msg: OpaquePointer, consumer: JetStreamPullConsumer) {
        self.msg = msg
        self.consumer = consumer
        self.message = NATSMessage(copying: msg)
    }

    deinit {
        natsMsg_Destroy(msg)
    }

    /// The stream sequence of this message.
    public var sequence: UInt64 { natsMsg_GetSequence(msg) }

    /// Done: the server will not deliver it again.
    public func ack() throws(NATSError) {
        try NATSError.check(natsMsg_Ack(msg, nil), "ack")
    }

    /// Not done: deliver it again (to this or another consumer).
    public func nak() throws(NATSError) {
        try NATSError.check(natsMsg_Nak(msg, nil), "nak")
    }

    /// Not done yet: deliver it again after `delay` (e.g. the store is failing: no hot retry loop).
    public func nak(delay: Duration) throws(NATSError) {
        try NATSError.check(natsMsg_NakWithDelay(msg, delay.milliseconds, nil), "nak")
    }

    /// Never deliver it again, without processing it (e.g. it cannot be decoded).
    public func term() throws(NATSError) {
        try NATSError.check(natsMsg_Term(msg, nil), "term")
    }
}

extension Duration {
    /// Whole nanoseconds, for JetStream's int64 durations.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
