import CNATS
import Foundation
import Synchronization

/// Frees the libnats subscriptions of one connection only once its read loop can no longer be
/// using them: a work-around for a use-after-free in libnats 3.4.1 (Debian bookworm's; fixed
/// upstream in v3.6.1, nats.c issue #637 / PR #638).
///
/// The bug (line numbers are v3.4.1's `src/`): the read loop's `natsConn_processMsg` looks the
/// subscription up by sid under `subsMu` (conn.c:2631-2642) and lets go of the lock **without
/// taking a reference**; it then allocates the message and runs the message filter (conn.c:2650-
/// 2662), and only then reads `sub->libDlvWorker` / `sub->mu` and locks it (conn.c:2670-2688). If
/// another thread unsubscribes in that window (`natsConn_removeSubscription`, conn.c:2976, drops
/// the hash's reference), and the delivery thread and `natsSubscription_Destroy` (sub.c:1440) drop
/// theirs, `_freeSubscription` (sub.c:50-78) frees the subscription and its mutex under the read
/// loop: it then locks freed memory (a SIGILL, a hang or heap corruption).
///
/// So no subscription is freed while its connection is open: ``retire(_:teardown:)`` first takes
/// a reference of our own (`natsSub_retain`, see ``LibnatsSubscriptionReference``), then tears the
/// subscription down as before (`natsSubscription_Destroy`: unsubscribes at once, so no message is
/// delivered to us any more, the completion callback runs and releases our callback context), and
/// keeps that reference in this graveyard until one of two things proves the read loop is done
/// with the pointer:
///
/// - **A successful `natsConnection_FlushTimeout` started after the unsubscribe.** The read loop is
///   one thread that handles the bytes it reads in order (`_readLoop` conn.c:2204-2240 →
///   `natsParser_Parse`). A flush sends a PING (conn.c:3478-3498) and returns `NATS_OK` only when
///   `natsConn_processPong` (conn.c:2930-2951, called only by that parser) handled the PONG that
///   answers it (pongs are matched by count, conn.c:2939-2940); a disconnect or close fails the
///   flush instead (`_clearPendingFlushRequests` sets `id = -1`, conn.c:1221-1242, and the flush
///   returns `NATS_CONNECTION_CLOSED`/`_DISCONNECTED`, conn.c:3511-3521). The PONG comes after every
///   byte the server sent before it, so by then the `natsConn_processMsg` call that might hold our
///   pointer has returned. Messages for that sid still in the socket buffer are parsed before the
///   PONG too, and after the unsubscribe the lookup no longer finds the sid (conn.c:2636, `sub ==
///   NULL` returns at conn.c:2644). After a reconnect the PONG is read by a new read loop, started
///   only after `_doReconnect` joined the old one (conn.c:1533). A subscription still valid after
///   the teardown (libnats refused the unsubscribe, e.g. while the connection drains) is still in
///   the hash, not covered by the flush, and waits.
/// - **The connection's closed callback.** `_close` joins the read loop (conn.c:2561) before it
///   posts that callback (conn.c:2567); `natsConnection_IsClosed` alone is not enough (the status
///   is set at conn.c:2499, before the join).
///
/// Memory stays bounded on a long-lived connection: each retirement starts (or joins) a sweep on
/// ``reaperThread`` that flushes once for everything retired so far and frees it; a sweep that
/// cannot flush (disconnected, timed out) tries again every ``retryDelay``. The reference each
/// subscription holds on its connection (`natsSub_create` retains it, `_freeSubscription` releases
/// it, sub.c:76) keeps the `natsConnection` memory alive while anything waits here, so a sweep may
/// use the connection pointer even after `NATSConnection` destroyed it.
///
/// It also knows the subject of each live subscription, so that the async error handler can name it
/// without touching a subscription pointer libnats hands it unretained (the second 3.4.1 bug, fixed
/// in v3.7.0 by PR #659: `natsAsyncCb_PostErrHandler` keeps the pointer without a reference,
/// asynccb.c:47-55).
final class SubscriptionReaper: Sendable {
    /// How long one sweep's flush may take.
    static let flushTimeout = Duration.seconds(2)
    /// How long a sweep that could not flush waits before it tries again.
    static let retryDelay = Duration.seconds(1)

    private struct State {
        /// The connection, set once it exists.
        var connection: UncheckedPointer?
        /// Retired subscriptions that we still hold a reference to.
        var pending: [UncheckedPointer] = []
        var sweeping = false
        /// The closed callback came: the read loop is gone, nothing needs to wait any more.
        var closed = false
        /// Subjects of live subscriptions, by address (only compared, never dereferenced).
        var subjects: [UInt: String] = [:]
    }

    private enum Next { case stop, now, later }

    private let state = Mutex(State())

    init() {}

    /// Sets the connection once it is connected.
    func attach(_ connection: OpaquePointer) {
        state.withLock { $0.connection = UncheckedPointer(connection) }
    }

    /// Remembers the subject of a new subscription, for the error handler.
    func register(_ subscription: OpaquePointer, subject: String) {
        state.withLock { $0.subjects[UInt(bitPattern: subscription)] = subject }
    }

    /// The subject of `subscription` if it is a live subscription of this connection. Does not
    /// dereference the pointer. A stale pointer whose address a new subscription reuses gets the
    /// new one's subject (a wrong log label, never a crash).
    func subject(of subscription: OpaquePointer) -> String? {
        state.withLock { $0.subjects[UInt(bitPattern: subscription)] }
    }

    /// Retired subscriptions not freed yet.
    var pendingCount: Int { state.withLock { $0.pending.count } }

    /// Tears `subscription` down with `teardown` (which must unsubscribe it and drop the caller's
    /// reference, i.e. `natsSubscription_Destroy`) and frees it once the read loop cannot hold it.
    func retire(_ subscription: OpaquePointer, teardown: () -> Void) {
        guard let reference = LibnatsSubscriptionReference.shared else {
            // A libnats without the symbols: tear down at once, as before this work-around.
            state.withLock { _ = $0.subjects.removeValue(forKey: UInt(bitPattern: subscription)) }
            teardown()
            return
        }
        reference.retain(subscription)
        teardown()
        let (releaseNow, startSweep) = state.withLock { state -> (Bool, Bool) in
            state.subjects.removeValue(forKey: UInt(bitPattern: subscription))
            if state.closed { return (true, false) }
            state.pending.append(UncheckedPointer(subscription))
            if state.sweeping || state.connection == nil { return (false, false) }
            state.sweeping = true
            return (false, true)
        }
        if releaseNow { reference.release(subscription) }
        if startSweep { reaperThread.submit { self.sweep() } }
    }

    /// Called from the closed callback: the read loop has been joined, free everything.
    func connectionClosed() {
        let all = state.withLock { state in
            state.closed = true
            state.subjects = [:]
            defer { state.pending = [] }
            return state.pending
        }
        guard let reference = LibnatsSubscriptionReference.shared else { return }
        for subscription in all { reference.release(subscription.pointer) }
    }

    /// One flush for everything retired so far; runs on `reaperThread`.
    private func sweep() {
        let taken = state.withLock { state -> ([UncheckedPointer], UncheckedPointer)? in
            guard !state.closed, !state.pending.isEmpty, let connection = state.connection else {
                state.sweeping = false
                return nil
            }
            defer { state.pending = [] }
            return (state.pending, connection)
        }
        guard let (batch, connection) = taken, let reference = LibnatsSubscriptionReference.shared else { return }
        // Only subscriptions out of the connection's hash (closed) are covered by the flush. Read
        // once: a subscription may close meanwhile, and must land on exactly one side.
        let valid = batch.map { natsSubscription_IsValid($0.pointer) }
        let unsubscribed = zip(batch, valid).filter { !$0.1 }.map(\.0)
        let stillValid = zip(batch, valid).filter { $0.1 }.map(\.0)
        var flushed = false
        let closedUnderneath = natsConnection_IsClosed(connection.pointer)
        if !unsubscribed.isEmpty, natsConnection_Status(connection.pointer) == NATS_CONN_STATUS_CONNECTED {
            flushed = natsConnection_FlushTimeout(connection.pointer, Self.flushTimeout.milliseconds) == NATS_OK
        }
        let freed = flushed ? unsubscribed : []
        let kept = flushed ? stillValid : batch
        let (release, next) = state.withLock { state -> ([UncheckedPointer], Next) in
            if state.closed {
                // The closed callback came during the flush and freed what was pending; this batch
                // was out of the list, so it is freed here.
                state.sweeping = false
                return (batch, .stop)
            }
            state.pending.append(contentsOf: kept)
            if state.pending.isEmpty || closedUnderneath {
                // Nothing left, or the connection is closing: its closed callback frees the rest.
                state.sweeping = false
                return (freed, .stop)
            }
            return (freed, state.pending.count > kept.count ? .now : .later)
        }
        for subscription in release { reference.release(subscription.pointer) }
        switch next {
        case .stop:
            break
        case .now:
            reaperThread.submit { self.sweep() }
        case .later:
            Task.detached {
                try? await Task.sleep(for: Self.retryDelay)
                reaperThread.submit { self.sweep() }
            }
        }
    }
}

/// The thread that runs every connection's sweeps, one at a time. Not ``blockingPool``: a flush
/// waits behind everything the server sent before its PONG (up to the reaper's flush timeout), and
/// must not hold a thread that connects, flushes and JetStream calls need. One is enough: a sweep
/// frees everything its connection retired so far, so a slow one only delays the others' frees.
let reaperThread = BlockingThreadPool(size: 1, name: "hangar.nats.reaper")

/// libnats' own reference counting of a subscription, `natsSub_retain` / `natsSub_release`
/// (sub.c:82-107). They are not in libnats' public header, but `libnats.so` exports them (3.4.1:
/// `nm -D`), so they are looked up at run time. With them a subscription can be torn down with the
/// public API (which, for a JetStream subscription, also keeps a durable consumer: `natsSubscription_
/// Destroy` clears the "delete consumer" flag first, sub.c:1456-1459) while its memory stays ours.
struct LibnatsSubscriptionReference: @unchecked Sendable {
    // @unchecked Sendable: two C function pointers, immutable.
    typealias Function = @convention(c) (OpaquePointer?) -> Void

    private let retainFunction: Function
    private let releaseFunction: Function

    /// nil if this libnats does not export them; subscriptions are then freed at once.
    static let shared: LibnatsSubscriptionReference? = {
        NATSLibrary.open()
        // RTLD_DEFAULT: every library loaded in the process (libnats is linked in).
        guard let retain = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "natsSub_retain"),
            let release = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "natsSub_release")
        else { return nil }
        return LibnatsSubscriptionReference(
            retainFunction: unsafeBitCast(retain, to: Function.self),
            releaseFunction: unsafeBitCast(release, to: Function.self)
        )
    }()

    func retain(_ subscription: OpaquePointer) { retainFunction(subscription) }
    func release(_ subscription: OpaquePointer) { releaseFunction(subscription) }
}
