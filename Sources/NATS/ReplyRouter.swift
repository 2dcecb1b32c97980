import CNATS
import HeapModule
import Synchronization

/// Routes replies arriving on the connection's one inbox subscription (`<inbox prefix>.<nuid>.*`) to the
/// requests waiting for them, so a request costs one publish and no subscription of its own.
///
/// Timeouts cost no task or timer per request: each request's deadline goes into a heap, and one
/// sweeper task, running only while requests wait, fails the expired ones every ``sweepInterval``
/// (so a timeout fires up to that much late).
final class ReplyRouter: Sendable {
    /// How often the sweeper looks for expired requests.
    static let sweepInterval = Duration.milliseconds(10)

    private struct Waiting {
        let subject: String
        let timeout: Duration
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<NATSMessage, any Error>
    }

    private struct Deadline: Comparable {
        let at: ContinuousClock.Instant
        let id: UInt64

        static func < (lhs: Self, rhs: Self) -> Bool { (lhs.at, lhs.id) < (rhs.at, rhs.id) }
    }

    private struct State {
        var waiting: [UInt64: Waiting] = [:]
        /// Deadlines of waiting requests, and of answered ones until they come due or the heap is
        /// rebuilt (answered requests are not looked up in the heap).
        var deadlines = Heap<Deadline>()
        var sweeping = false
    }

    let prefix: String
    private let counter = Atomic<UInt64>(0)
    private let state = Mutex(State())

    init(prefix: String) {
        self.prefix = prefix
    }

    func nextID() -> UInt64 { counter.add(1, ordering: .relaxed).newValue }

    /// Registers the request `id`, sent on `subject`, as waiting for its reply for at most `timeout`.
    func register(
        _ id: UInt64,
        subject: String,
        timeout: Duration,
        _ continuation: CheckedContinuation<NATSMessage, any Error>
    ) {
        let deadline = ContinuousClock.now + timeout
        let startSweeper = state.withLock { state in
            state.waiting[id] = Waiting(
                subject: subject,
                timeout: timeout,
                deadline: deadline,
                continuation: continuation
            )
            state.deadlines.insert(Deadline(at: deadline, id: id))
            if state.deadlines.count > 1024 && state.deadlines.count > 2 * state.waiting.count {
                state.deadlines = Heap(state.waiting.map { Deadline(at: $0.value.deadline, id: $0.key) })
            }
            defer { state.sweeping = true }
            return !state.sweeping
        }
        if startSweeper {
            Task.detached { await self.sweep() }
        }
    }

    /// Resumes the request `id` once; later calls for the same id do nothing.
    func complete(_ id: UInt64, with result: Result<NATSMessage, any Error>) {
        let entry = state.withLock { $0.waiting.removeValue(forKey: id) }
        entry?.continuation.resume(with: result)
    }

    /// Fails every request waiting for a reply to a publish on `subject` (the server refused it).
    func fail(subject: String, with error: NATSError) {
        let refused = state.withLock { state in
            let ids = state.waiting.filter { $0.value.subject == subject }.map(\.key)
            return ids.compactMap { state.waiting.removeValue(forKey: $0)?.continuation }
        }
        for continuation in refused { continuation.resume(throwing: error) }
    }

    var pendingCount: Int { state.withLock { $0.waiting.count } }

    /// Fails expired requests every `sweepInterval` until none waits.
    private func sweep() async {
        while true {
            try? await Task.sleep(for: Self.sweepInterval)
            let now = ContinuousClock.now
            let (expired, done) = state.withLock { state -> ([Waiting], Bool) in
                var expired: [Waiting] = []
                while let first = state.deadlines.min, first.at <= now {
                    state.deadlines.removeMin()
                    if let waiting = state.waiting.removeValue(forKey: first.id) { expired.append(waiting) }
                }
                if state.waiting.isEmpty {
                    state.deadlines = Heap()
                    state.sweeping = false
                    return (expired, true)
                }
                return (expired, false)
            }
            for waiting in expired {
                waiting.continuation.resume(
                    throwing: NATSError(
                        kind: .timeout,
                        operation: "request(\(waiting.subject))",
                        message: "no reply within \(waiting.timeout)"
                    )
                )
            }
            if done { return }
        }
    }

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

    static func raw(
        connection: OpaquePointer,
        subject: String,
        context router: ReplyRouter,
        reaper: SubscriptionReaper
    ) throws(NATSError) -> Self {
        let context = Unmanaged.passRetained(router).toOpaque()
        var sub: OpaquePointer?
        let status = natsConnection_Subscribe(&sub, connection, subject, routerOnMessage, context)
        guard status == NATS_OK, let sub else {
            Unmanaged<ReplyRouter>.fromOpaque(context).release()
            throw NATSError(status: status, operation: "subscribe(\(subject))")
        }
        let completion = natsSubscription_SetOnCompleteCB(sub, routerOnComplete, context)
        if completion != NATS_OK {
            reaper.retire(sub) { natsSubscription_Destroy(sub) }
            Unmanaged<ReplyRouter>.fromOpaque(context).release()
            throw NATSError(status: completion, operation: "natsSubscription_SetOnCompleteCB(\(subject))")
        }
        natsSubscription_SetPendingLimits(sub, 1_000_000, 512 * 1024 * 1024)
        reaper.register(sub, subject: subject)
        return Self(pointer: sub)
    }

    /// Unsubscribes at once; `reaper` frees the subscription once the read loop cannot hold it.
    func release(reaper: SubscriptionReaper) {
        let pointer = pointer
        reaper.retire(pointer) { natsSubscription_Destroy(pointer) }
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
