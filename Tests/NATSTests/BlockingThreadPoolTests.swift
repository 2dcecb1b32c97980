import Foundation
import Synchronization
import Testing

@testable import HangarNATS

@Suite("Blocking thread pool")
struct BlockingThreadPoolTests {
    /// More blocking calls than threads: all complete, never more than `size` at once, and the pool
    /// does use all its threads.
    @Test func boundsConcurrentBlockingCalls() async throws {
        let pool = BlockingThreadPool(size: 4, name: "test.blocking")
        defer { pool.shutdown() }
        let gauge = ConcurrencyGauge()
        let calls = 24
        let finished = await withTaskGroup(of: Int.self, returning: [Int].self) { group in
            for index in 0..<calls {
                group.addTask {
                    await pool.run { () -> Int in
                        gauge.enter()
                        usleep(20_000)  // a blocking call, as libnats makes them
                        gauge.leave()
                        return index
                    }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(finished.sorted() == Array(0..<calls))
        #expect(gauge.most <= 4)
        #expect(gauge.most == 4)
        #expect(gauge.running == 0)
    }

    /// An error thrown on a pool thread reaches the caller, typed.
    @Test func rethrowsTheCallsError() async {
        let pool = BlockingThreadPool(size: 1, name: "test.blocking.error")
        defer { pool.shutdown() }
        await #expect(throws: NATSError.self) {
            try await pool.run { () throws(NATSError) -> Int in
                throw NATSError(kind: .timeout, operation: "test", message: "timed out")
            }
        }
    }

    /// The library's pool (what `runBlocking` uses) has the documented size, and more concurrent
    /// calls than that through `runBlocking` complete.
    @Test func runBlockingUsesTheBoundedPool() async throws {
        #expect(blockingPool.size == 4)
        let gauge = ConcurrencyGauge()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    try await runBlocking { () throws(NATSError) in
                        gauge.enter()
                        usleep(10_000)
                        gauge.leave()
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(gauge.most <= blockingPool.size)
    }
}

/// How many calls run at once now, and the most there ever were.
private final class ConcurrencyGauge: Sendable {
    private let now = Atomic<Int>(0)
    private let highest = Atomic<Int>(0)

    var running: Int { now.load(ordering: .sequentiallyConsistent) }
    var most: Int { highest.load(ordering: .sequentiallyConsistent) }

    func enter() {
        let count = now.add(1, ordering: .sequentiallyConsistent).newValue
        _ = highest.max(count, ordering: .sequentiallyConsistent)
    }

    func leave() {
        now.subtract(1, ordering: .sequentiallyConsistent)
    }
}
