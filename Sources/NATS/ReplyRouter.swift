import CNATS
import Synchronization

/// Routes replies arriving on the connection's one inbox subscription (`<inbox prefix>.<nuid>.*`) to the
/// requests waiting for them, so a request costs one publish and no subscription of its own.
final class ReplyRouter: Sendable {
    let prefix: String
    private let counter = Atomic<UInt64>(0)
    private let pending = Mutex<[UInt64: (subject: String, continuation: CheckedContinuation<NATSMessage, any Error>)]>(
        [:]
    )

    init(prefix: String) {
        self.prefix = prefix
    }

    func nextID() -> UInt64 { counter.add(1, ordering: .relaxed).newValue }

    /// Registers the request `id`, sent on `subject`, as waiting for its reply.
    func register(_ id: UInt64, subject: String, _ continuation: CheckedContinuation<NATSMessage, any Error>) {
        pending.withLock { $0[id] = (subject, continuation) }
    }

    /// Resumes the request `id` once; later calls for the same id do nothing.
    func complete(_ id: UInt64, with result: Result<NATSMessage, any Error>) {
        let entry = pending.withLock { $0.removeValue(forKey: id) }
        entry?.continuation.resume(with: result)
    }

    /// Fails every request waiting for a reply to a publish on `subject` (the server refused it).
    func fail(subject: String, with error: NATSError) {
        let refused = pending.withLock { pending in
            let ids = pending.filter { $0.value.subject == subject }.map(\.key)
            return ids.compactMap { pending.removeValue(forKey: $0)?.continuation }
        }
        for continuation in refused { continuation.resume(throwing: error) }
    }

    var pendingCount: Int { pending.withLock { $0.count } }

    /// Called from libnats' delivery thread.
    func route(_ msg: OpaquePointer) {
        let subject = String(cString: natsMsg_GetSubject(msg))
        guard subject.hasPrefix(prefix), let id = UInt64(subject.dropFirst(prefix.count)) else { return }
        if natsMsg_IsNoResponders(msg) {
            complete(
                id,
                with: .failure(
                    NATSError(kind: .noResponders, operation: "request", message: "no service is listening")
                )
            )
            return
        }
        complete(id, with: .success(NATSMessage(copying: msg)))
    }
}

/// A libnats subscription that hands raw messages to a `ReplyRouter`; the router is retained for
/// libnats and released by the completion callback.
struct NATSSubscriptionHandle: @unchecked Sendable {
    // @unchecked Sendable: wraps a libnats subscription, which is thread-safe.
    let pointer: OpaquePointer

    static func raw(connection: OpaquePointer, subject: String, context router: ReplyRouter) throws(NATSError) -> Self {
        let context = Unmanaged.passRetained(router).toOpaque()
        var sub: OpaquePointer?
        let status = natsConnection_Subscribe(&sub, connection, subject, routerOnMessage, context)
        guard status == NATS_OK, let sub else {
            Unmanaged<ReplyRouter>.fromOpaque(context).release()
            throw NATSError(status: status, operation: "subscribe(\(subject))")
        }
        let completion = natsSubscription_SetOnCompleteCB(sub, routerOnComplete, context)
        if completion != NATS_OK {
            natsSubscription_Unsubscribe(sub)
            natsSubscription_Destroy(sub)
            Unmanaged<ReplyRouter>.fromOpaque(context).release()
            throw NATSError(status: completion, operation: "natsSubscription_SetOnCompleteCB(\(subject))")
        }
        natsSubscription_SetPendingLimits(sub, 1_000_000, 512 * 1024 * 1024)
        return Self(pointer: sub)
    }

    func release() {
        natsSubscription_Unsubscribe(pointer)
        natsSubscription_Destroy(pointer)
    }
}

private let routerOnMessage: natsMsgHandler = { _, _, msg, closure in
    guard let msg else { return }
    defer { natsMsg_Destroy(msg) }
    guard let closure else { return }
    Unmanaged<ReplyRouter>.fromOpaque(closure).takeUnretainedValue().route(msg)
}

private let routerOnComplete: natsOnCompleteCB = { closure in
    guard let closure else { return }
    Unmanaged<ReplyRouter>.fromOpaque(closure).release()
}
