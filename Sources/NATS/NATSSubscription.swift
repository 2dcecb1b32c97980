import CNATS
import Logging
import Synchronization

/// A subscription whose messages arrive as an `AsyncSequence`.
///
/// Messages are buffered up to `bufferLimit`; beyond that the newest are dropped, counted in
/// ``droppedCount`` and logged as a slow consumer, so a stuck reader never blocks libnats or grows
/// memory without bound. Iterating keeps the subscription alive; ending the iteration (or
/// ``unsubscribe()``) ends it.
public final class NATSSubscription: AsyncSequence, @unchecked Sendable {
    // @unchecked Sendable: `handle` is a libnats subscription, whose API is thread-safe; the only
    // mutable Swift state (`closed`) sits behind a Mutex.
    public typealias Element = NATSMessage

    public let subject: String
    public let queueGroup: String?
    private let handle: OpaquePointer
    private let box: SubscriptionBox
    /// Frees the libnats subscription once its connection's read loop cannot hold it any more.
    private let reaper: SubscriptionReaper
    private let stream: AsyncStream<NATSMessage>
    private let closed = Mutex(false)

    init(
        connection: OpaquePointer,
        subject: String,
        queueGroup: String?,
        bufferLimit: Int,
        logger: Logger,
        reaper: SubscriptionReaper
    ) throws(NATSError) {
        let (stream, continuation) = AsyncStream.makeStream(
            of: NATSMessage.self,
            bufferingPolicy: .bufferingOldest(Swift.max(1, bufferLimit))
        )
        let box = SubscriptionBox(subject: subject, continuation: continuation, logger: logger)
        // The box is retained for libnats; the completion callback releases it once libnats has
        // delivered the last message.
        let context = Unmanaged.passRetained(box).toOpaque()
        var sub: OpaquePointer?
        let status: natsStatus
        if let queueGroup {
            status = natsConnection_QueueSubscribe(
                &sub,
                connection,
                subject,
                queueGroup,
                subscriptionOnMessage,
                context
            )
        } else {
            status = natsConnection_Subscribe(&sub, connection, subject, subscriptionOnMessage, context)
        }
        guard status == NATS_OK, let sub else {
            Unmanaged<SubscriptionBox>.fromOpaque(context).release()
            continuation.finish()
            throw NATSError(status: status, operation: "subscribe(\(subject))")
        }
        let completionStatus = natsSubscription_SetOnCompleteCB(sub, subscriptionOnComplete, context)
        if completionStatus != NATS_OK {
            reaper.retire(sub) { natsSubscription_Destroy(sub) }
            Unmanaged<SubscriptionBox>.fromOpaque(context).release()
            continuation.finish()
            throw NATSError(status: completionStatus, operation: "natsSubscription_SetOnCompleteCB(\(subject))")
        }
        // libnats keeps its own pending queue too; let ours be the bound that matters.
        natsSubscription_SetPendingLimits(sub, Int32(Swift.max(65_536, bufferLimit)), 256 * 1024 * 1024)
        self.subject = subject
        self.queueGroup = queueGroup
        self.handle = sub
        self.box = box
        self.stream = stream
        self.reaper = reaper
        reaper.register(sub, subject: subject)
    }

    deinit {
        // `natsSubscription_Destroy` unsubscribes (unless already done, sub.c:1449-1464) and drops
        // our reference; the reaper keeps one of its own until the read loop is done with it (a
        // libnats 3.4.1 use-after-free otherwise, see `SubscriptionReaper`).
        let handle = handle
        reaper.retire(handle) { natsSubscription_Destroy(handle) }
    }

    /// Messages dropped because the consumer fell behind the buffer limit.
    public var droppedCount: Int { box.dropped.load(ordering: .relaxed) }

    /// Stops delivery at once; the sequence ends after buffered messages.
    public func unsubscribe() {
        let wasClosed = closed.withLock { value in
            defer { value = true }
            return value
        }
        guard !wasClosed else { return }
        natsSubscription_Unsubscribe(handle)
    }

    /// Stops taking new messages but delivers those already received, then ends the sequence.
    public func drain() {
        let wasClosed = closed.withLock { value in
            defer { value = true }
            return value
        }
        guard !wasClosed else { return }
        natsSubscription_Drain(handle)
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(subscription: self, base: stream.makeAsyncIterator())
    }

    /// Iterates buffered messages; holds the subscription alive while iterating.
    public struct Iterator: AsyncIteratorProtocol {
        let subscription: NATSSubscription
        var base: AsyncStream<NATSMessage>.Iterator

        public mutating func next() async -> NATSMessage? {
            await base.next()
        }
    }
}

/// What libnats' C callbacks need to reach Swift: retained for libnats, released on completion.
final class SubscriptionBox: Sendable {
    let subject: String
    let continuation: AsyncStream<NATSMessage>.Continuation
    let logger: Logger
    let dropped = Atomic<Int>(0)

    init(subject: String, continuation: AsyncStream<NATSMessage>.Continuation, logger: Logger) {
        self.subject = subject
        self.continuation = continuation
        self.logger = logger
    }

    func deliver(_ message: NATSMessage) {
        if case .dropped = continuation.yield(message) {
            let total = dropped.add(1, ordering: .relaxed).newValue
            if total == 1 || total.isMultiple(of: 1000) {
                logger.warning(
                    "slow consumer: dropping messages",
                    metadata: ["nats.subject": "\(subject)", "nats.dropped": "\(total)"]
                )
            }
        }
    }
}

private let subscriptionOnMessage: natsMsgHandler = { _, _, msg, closure in
    guard let msg, let closure else { return }
    let box = Unmanaged<SubscriptionBox>.fromOpaque(closure).takeUnretainedValue()
    let message = NATSMessage(copying: msg)
    natsMsg_Destroy(msg)
    box.deliver(message)
}

private let subscriptionOnComplete: natsOnCompleteCB = { closure in
    guard let closure else { return }
    let box = Unmanaged<SubscriptionBox>.fromOpaque(closure).takeRetainedValue()
    box.continuation.finish()
}
