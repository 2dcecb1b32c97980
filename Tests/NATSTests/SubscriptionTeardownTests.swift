import CNATS
import Foundation
import HangarTestSupport
import Synchronization
import Testing

@testable import HangarNATS

/// libnats 3.4.1 reads a subscription in its read loop after letting go of the lock it looked it up
/// under, without a reference (conn.c `natsConn_processMsg`; fixed upstream in v3.6.1). Releasing a
/// subscription while a message for it is in that window used to free it under the read loop:
/// these tests do that on purpose and fail (crash, or a read loop stuck on freed memory turned into
/// a failure by a deadline) unless `SubscriptionReaper` keeps the memory until the read loop is
/// done. Both widen the window with the exported hook that runs inside it
/// (`natsConn_setFilterWithClosure`, as the C reproducer does) and fill freed memory of a
/// subscription's size with garbage right away, so that a read of a freed subscription crashes
/// instead of finding the old pointers still there.
@Suite("NATS binding: subscription teardown while messages arrive")
struct SubscriptionTeardownTests {
    @Test("a subscription released while the read loop is inside natsConn_processMsg for it")
    func releaseInsideTheWindow() async throws {
        let setFilter = try #require(MessageFilterHook.setFilter, "libnats exports natsConn_setFilterWithClosure")
        try await withNATSServer { server in
            let connection = try await connectForTest(server, name: "window")
            let sprayer = try await Sprayer(server, subject: "teardown.spray")
            let spray = sprayer.spray

            var subscription: NATSSubscription? = try connection.subscribe("teardown.window")
            try await connection.flush()
            let filter = WindowFilter(holdMicroseconds: 500_000, every: 1)
            // Retained for libnats; released once the connection is closed (kept if the read loop
            // got stuck: it still points at it).
            let filterContext = Unmanaged.passRetained(filter)
            setFilter(connection.handle, holdingFilter, filterContext.toOpaque())
            filter.armed.store(true, ordering: .releasing)
            try connection.publish("teardown.window", payload: Data("in the window".utf8))
            try #require(await waitUntil(.seconds(5)) { filter.holds.load(ordering: .acquiring) > 0 })

            // The read loop holds the subscription's pointer now (it sleeps in the filter).
            // Unsubscribe, and give the delivery thread the time to run the completion callback and
            // drop its reference, so that releasing ours is what frees the subscription, on this
            // thread: the memory of a subscription's size taken right after (no suspension point in
            // between) is then that subscription's (glibc's per-thread cache is last-in first-out).
            subscription?.unsubscribe()
            try await Task.sleep(for: .milliseconds(50))
            subscription = nil
            spray.fill()
            // In case the delivery thread freed it after all: fill there too.
            let sprayedBefore = spray.count
            for _ in 0..<3 { try sprayer.connection.publish("teardown.spray", payload: Data()) }
            #expect(await waitUntil(.seconds(2)) { spray.count >= sprayedBefore + 3 })

            // The read loop leaves the filter and goes on with the subscription it looked up.
            guard await connectionStillWorks(connection) else {
                abandon(connection, sprayer.connection)
                Issue.record("the read loop is stuck after a subscription was released under it")
                return
            }
            #expect(subscription == nil)
            // Freed once the read loop is done with it, without closing the connection.
            #expect(await waitUntil(.seconds(5)) { connection.events.reaper.pendingCount == 0 })

            await connection.close()
            filterContext.release()
            await sprayer.close()
        }
    }

    @Test("subscriptions created and released in a tight loop while messages for them keep coming, 3 s")
    func churnUnderTraffic() async throws {
        let setFilter = try #require(MessageFilterHook.setFilter, "libnats exports natsConn_setFilterWithClosure")
        try await withNATSServer { server in
            let connection = try await connectForTest(server, name: "churn")
            let publisher = try await connectForTest(server, name: "churn-publisher")
            let sprayer = try await Sprayer(server, subject: "churn.spray")

            // Every 4th message the read loop pauses 2 ms inside the window.
            let filter = WindowFilter(holdMicroseconds: 2_000, every: 4)
            filter.armed.store(true, ordering: .releasing)
            let filterContext = Unmanaged.passRetained(filter)
            setFilter(connection.handle, holdingFilter, filterContext.toOpaque())

            let subjects = 8
            let deadline = ContinuousClock.now + .seconds(3)
            let counts = ChurnCounts()
            // Threads of their own, as in the C reproducer: tasks would share the two cooperative
            // threads with every suite running alongside and get little done under load.
            await runOnThreads(6) { worker in
                var index = worker
                if worker < 3 {
                    while ContinuousClock.now < deadline {
                        index += 1
                        if (try? publisher.publish("churn.\(index % subjects)", payload: Data(count: 32))) != nil {
                            counts.published.add(1, ordering: .relaxed)
                        }
                        if index.isMultiple(of: 16) {
                            try? sprayer.connection.publish("churn.spray", payload: Data())
                            // About 10,000 messages a second each: more than the paused read loop
                            // takes, without loading the machine for the suites running alongside.
                            usleep(1_000)
                        }
                    }
                    return
                }
                while ContinuousClock.now < deadline {
                    index += 1
                    guard let subscription = try? connection.subscribe("churn.\(index % subjects)") else { continue }
                    if index.isMultiple(of: 2) { usleep(UInt32.random(in: 100...3_000)) }
                    // Released here, while messages for its subject keep coming.
                    withExtendedLifetime(subscription) {}
                    counts.released.add(1, ordering: .relaxed)
                }
            }
            filter.armed.store(false, ordering: .releasing)
            guard await connectionStillWorks(connection) else {
                abandon(connection, publisher, sprayer.connection)
                Issue.record("the read loop is stuck after \(counts.released.load(ordering: .relaxed)) releases")
                return
            }
            #expect(counts.released.load(ordering: .relaxed) > 100)
            #expect(counts.published.load(ordering: .relaxed) > 1000)
            #expect(filter.holds.load(ordering: .relaxed) > 10)
            // Freed while the connection stays open: memory stays bounded on a long-lived connection.
            #expect(await waitUntil(.seconds(5)) { connection.events.reaper.pendingCount == 0 })

            await connection.close()
            filterContext.release()
            await publisher.close()
            await sprayer.close()
        }
    }

    @Test("the reply subscription and pull consumers are freed safely too")
    func replySubscriptionAndPullConsumer() async throws {
        try await withNATSServer { server in
            for round in 0..<20 {
                let connection = try await connectForTest(server, name: "reply-\(round)")
                // A request nobody answers in time leaves a late reply on its way to the inbox.
                let service = try await connectForTest(server, name: "late-\(round)")
                let requests = try service.subscribe("late.echo")
                try await service.flush()
                let serving = Task {
                    for await message in requests {
                        try? await Task.sleep(for: .milliseconds(30))
                        try? service.reply(to: message, payload: Data())
                    }
                }
                for _ in 0..<5 {
                    _ = try? await connection.request("late.echo", payload: Data(), timeout: .milliseconds(10))
                }
                let jetStream = try connection.jetStream()
                try await jetStream.ensureStream(
                    JetStreamStreamConfig(name: "TEARDOWN", subjects: ["teardown.js"], storage: .memory)
                )
                var consumer: JetStreamPullConsumer? = try await jetStream.pullSubscribe(
                    "teardown.js",
                    durable: "teardown",
                    stream: "TEARDOWN"
                )
                _ = try await consumer?.fetchAvailable(max: 1, wait: .milliseconds(5))
                consumer = nil
                #expect(consumer == nil)
                // Released while the connection is open: freed after a flush, not at close.
                #expect(await waitUntil(.seconds(5)) { connection.events.reaper.pendingCount == 0 })
                // The connection is dropped at the end of the round while late replies still arrive
                // (NATSConnection.deinit frees its reply subscription).
                requests.unsubscribe()
                _ = await serving.value
                await service.close()
            }
        }
    }
}

/// `natsConn_setFilterWithClosure`: exported by libnats but not in its header. The filter runs in
/// the read loop inside `natsConn_processMsg`, between the subscription lookup and its use.
enum MessageFilterHook {
    typealias Filter =
        @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?, UnsafeMutableRawPointer?) ->
        Void
    typealias SetFilter = @convention(c) (OpaquePointer?, Filter?, UnsafeMutableRawPointer?) -> Void

    static var setFilter: SetFilter? {
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "natsConn_setFilterWithClosure").map {
            unsafeBitCast($0, to: SetFilter.self)
        }
    }
}

final class ChurnCounts: Sendable {
    let released = Atomic<Int>(0)
    let published = Atomic<Int>(0)
    let finished = Atomic<Int>(0)
}

/// Makes the read loop sleep inside the window on every `every`-th message while armed.
final class WindowFilter: Sendable {
    let holdMicroseconds: UInt32
    let every: Int
    let armed = Atomic<Bool>(false)
    let seen = Atomic<Int>(0)
    let holds = Atomic<Int>(0)

    init(holdMicroseconds: UInt32, every: Int) {
        self.holdMicroseconds = holdMicroseconds
        self.every = every
    }
}

private let holdingFilter: MessageFilterHook.Filter = { _, _, closure in
    guard let closure else { return }
    let filter = Unmanaged<WindowFilter>.fromOpaque(closure).takeUnretainedValue()
    guard filter.armed.load(ordering: .acquiring) else { return }
    guard filter.seen.add(1, ordering: .relaxed).newValue.isMultiple(of: filter.every) else { return }
    if filter.every == 1 { filter.armed.store(false, ordering: .releasing) }
    filter.holds.add(1, ordering: .releasing)
    usleep(filter.holdMicroseconds)
}

/// Takes blocks of a libnats subscription's size (`calloc(1, sizeof(natsSubscription))`, 248 bytes
/// in 3.4.1: the same malloc bin) and fills them with a non-canonical address pattern, so that a
/// freed subscription is reused at once and any pointer read from it crashes.
final class Spray: @unchecked Sendable {
    // @unchecked Sendable: `blocks` is only touched under `lock`.
    private let lock = NSLock()
    private var blocks: [UnsafeMutableRawPointer] = []
    private let filled = Atomic<Int>(0)
    static let blockSize = 248
    static let keep = 1024

    var count: Int { filled.load(ordering: .acquiring) }

    /// Takes a few blocks (the thread's most recently freed ones come first), then lets the oldest
    /// go, so that memory stays bounded.
    func fill() {
        var taken: [UnsafeMutableRawPointer] = []
        for _ in 0..<64 {
            guard let block = malloc(Self.blockSize) else { continue }
            memset(block, 0x41, Self.blockSize)
            taken.append(block)
        }
        let surplus = lock.withLock { () -> [UnsafeMutableRawPointer] in
            blocks.append(contentsOf: taken)
            guard blocks.count > Self.keep else { return [] }
            defer { blocks.removeFirst(blocks.count - Self.keep) }
            return Array(blocks.prefix(blocks.count - Self.keep))
        }
        for block in surplus { free(block) }
        filled.add(1, ordering: .releasing)
    }

    deinit {
        for block in blocks { free(block) }
    }
}

/// A connection with a raw libnats subscription whose callback calls `Spray.fill()` for every
/// message: on libnats' shared delivery thread, which all subscriptions of the process use.
final class Sprayer: Sendable {
    let connection: NATSConnection
    let spray = Spray()
    private let subscription: UncheckedPointer

    init(_ server: LocalNATSServer, subject: String) async throws {
        connection = try await connectForTest(server, name: "sprayer")
        var raw: OpaquePointer?
        // Retained for libnats until the completion callback (after the last message callback).
        let context = Unmanaged.passRetained(spray).toOpaque()
        let status = natsConnection_Subscribe(&raw, connection.handle, subject, sprayOnMessage, context)
        guard status == NATS_OK, let raw, natsSubscription_SetOnCompleteCB(raw, sprayOnComplete, context) == NATS_OK
        else { throw NATSError(status: status, operation: "subscribe(\(subject))") }
        subscription = UncheckedPointer(raw)
        try await connection.flush()
    }

    /// Closes the connection (which joins its read loop and ends the subscription); the blocks go
    /// with the `Spray`.
    func close() async {
        await connection.close()
        natsSubscription_Destroy(subscription.pointer)
    }
}

/// Runs on libnats' shared delivery thread, the one that frees a subscription when it drops the
/// last reference after the completion callback.
private let sprayOnMessage: natsMsgHandler = { _, _, msg, closure in
    if let closure { Unmanaged<Spray>.fromOpaque(closure).takeUnretainedValue().fill() }
    if let msg { natsMsg_Destroy(msg) }
}

private let sprayOnComplete: natsOnCompleteCB = { closure in
    if let closure { Unmanaged<Spray>.fromOpaque(closure).release() }
}

/// Connections whose read loop may be stuck on freed memory: closing one would join that thread
/// forever, so they are kept (and the test fails) instead.
private let abandoned = Mutex<[NATSConnection]>([])

private func abandon(_ connections: NATSConnection...) {
    abandoned.withLock { $0.append(contentsOf: connections) }
}

/// Runs `body(0..<count)` on as many new threads and returns when all have ended.
private func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let remaining = ChurnCounts()
        for index in 0..<count {
            Thread {
                body(index)
                if remaining.finished.add(1, ordering: .acquiringAndReleasing).newValue == count {
                    continuation.resume()
                }
            }
            .start()
        }
    }
}

/// A flush round trip through the read loop, within a deadline (a stuck read loop fails it).
private func connectionStillWorks(_ connection: NATSConnection) async -> Bool {
    do {
        try await connection.flush(timeout: .seconds(5))
        return true
    } catch {
        return false
    }
}

private func waitUntil(_ limit: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}
