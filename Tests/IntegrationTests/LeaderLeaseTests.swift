import Foundation
import HangarNATS
import HangarScheduler
import HangarTestSupport
import Testing

/// Two schedulers' leases on one real nats-server, with a short lease.
@Suite("Leader lease over a JetStream key-value bucket")
struct LeaderLeaseTests {
    /// Short, yet with room for this test process's other suites on two cores: a renewal (every
    /// 333 ms) may be late by up to 666 ms before the leader steps down.
    // The production defaults: CI runs these suites next to two hundred others on two cores, where
    // a renewal may wait a second for its turn.
    private static let settings = LeaderLeaseSettings(
        lease: .seconds(3),
        margin: .seconds(1),
        poll: .milliseconds(250)
    )

    @Test("exactly one of two leads; when it stops renewing (killed), the other leads with a higher term in time")
    func takeoverAfterKill() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let store = try await KeyValueLeaderStore.open(try connection.jetStream())
            let log = RoleLog()
            let first = try LeaderLease(store: store, holder: "first", settings: Self.settings)
            let second = try LeaderLease(store: store, holder: "second", settings: Self.settings)
            let watchers = [log.watch(first, "first"), log.watch(second, "second")]
            let firstRun = Task { await first.run() }
            let secondRun = Task { await second.run() }

            _ = try #require(await log.waitFor(timeout: .seconds(10)) { $0.leaders.count == 1 })
            // Both run for a while (several leases): one leads, the other stays standby. On a busy
            // machine a late renewal may hand the lease over (the safe outcome); never to two.
            try await Task.sleep(for: .seconds(3))
            let steady = try #require(await log.waitFor(timeout: .seconds(10)) { $0.leaders.count == 1 })
            let (winner, term) = try #require(steady.leaders.first)
            #expect(steady.maxLeadersAtOnce == 1, "\(steady.changes)")
            // The leader renews: the key has been written more often than it changed hands (each
            // creation or takeover is one write; the bucket holds only this key, so its revision
            // counts the writes).
            let stored = try #require(try await store.read())
            let acquisitions = steady.changes.filter(\.role.isLeader).count
            #expect(stored.revision > UInt64(acquisitions), "revision \(stored.revision), \(steady.changes)")
            #expect(LeaderRecord(decoding: stored.value)?.term ?? 0 >= term)

            // kill -9 the leader: its lease loop ends, no renewal, no release of the key.
            let killedAt = ContinuousClock.now
            (winner == "first" ? firstRun : secondRun).cancel()
            let survivor = winner == "first" ? "second" : "first"
            let after = try #require(
                await log.waitFor(timeout: .seconds(10)) { state in
                    state.leaders.contains { $0.0 == survivor }
                }
            )
            let takeover = try #require(after.changes.last { $0.holder == survivor && $0.role.isLeader })
            let tookOver = takeover.at - killedAt
            let newTerm = try #require(after.leaders.first { $0.0 == survivor }?.1)
            #expect(newTerm > term)
            // lease + margin + one poll, plus the server's round trips and scheduling slack.
            #expect(
                tookOver < Self.settings.lease + Self.settings.margin + Self.settings.poll + .seconds(2),
                "took over \(tookOver) after the kill"
            )
            #expect(await log.snapshot().maxLeadersAtOnce == 1)

            firstRun.cancel()
            secondRun.cancel()
            _ = await (firstRun.value, secondRun.value)
            for watcher in watchers { await watcher.value }
            await connection.close()
        }
    }

    @Test("a leader cut off from the server (its renewal hangs) steps down before the other takes over")
    func partitionedLeaderStepsDownFirst() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let store = try await KeyValueLeaderStore.open(try connection.jetStream())
            let cut = CuttableStore(store)
            let log = RoleLog()
            // "first" alone until it leads, so the cut one is the leader.
            let first = try LeaderLease(store: cut, holder: "first", settings: Self.settings)
            let firstWatcher = log.watch(first, "first")
            let firstRun = Task { await first.run() }
            _ = try #require(await log.waitFor(timeout: .seconds(10)) { $0.leaders.map(\.0) == ["first"] })
            let second = try LeaderLease(store: store, holder: "second", settings: Self.settings)
            let secondWatcher = log.watch(second, "second")
            let secondRun = Task { await second.run() }
            try await Task.sleep(for: .seconds(1))
            #expect(await log.snapshot().leaders.map(\.0) == ["first"])
            // The leader holds the lease by its own clock now, and not past its deadline unrenewed.
            #expect(first.holds())
            #expect(!first.holds(at: .now + Self.settings.lease + .milliseconds(100)))
            #expect(!second.holds())

            await cut.cut()  // every call from "first" now waits forever
            let after = try #require(
                await log.waitFor(timeout: .seconds(10)) { state in state.leaders.map(\.0) == ["second"] }
            )
            #expect(after.maxLeadersAtOnce == 1)
            #expect(!first.holds() && second.holds())
            let firstDown = try #require(after.changes.last { $0.holder == "first" && $0.role == .standby })
            let secondUp = try #require(after.changes.last { $0.holder == "second" && $0.role.isLeader })
            // The margin between the two: the old leader stepped down by its own clock first.
            #expect(firstDown.at < secondUp.at, "\(secondUp.at - firstDown.at) apart: \(after.changes)")

            firstRun.cancel()
            secondRun.cancel()
            _ = await (firstRun.value, secondRun.value)
            await firstWatcher.value
            await secondWatcher.value
            await connection.close()
        }
    }
}

/// Every role change of the leases watched, with the time it was seen, and who leads now.
private actor RoleLog {
    struct Change: Sendable, CustomStringConvertible {
        var holder: String
        var role: LeaderRole
        var at: ContinuousClock.Instant
        var description: String { "\(holder): \(role)" }
    }

    struct State: Sendable {
        var changes: [Change] = []
        var current: [String: LeaderRole] = [:]
        /// The most leases that were leader at the same instant, replaying the changes in the order
        /// the leases made them.
        var maxLeadersAtOnce: Int {
            var roles: [String: LeaderRole] = [:]
            var most = 0
            for change in changes.sorted(by: { $0.at < $1.at }) {
                roles[change.holder] = change.role
                most = max(most, roles.values.filter(\.isLeader).count)
            }
            return most
        }
        var leaders: [(String, UInt64)] {
            current.compactMap { holder, role in
                if case .leader(let term) = role { return (holder, term) }
                return nil
            }
        }
    }

    private var state = State()

    nonisolated func watch(_ lease: LeaderLease, _ holder: String) -> Task<Void, Never> {
        Task {
            for await change in lease.roles {
                await record(holder, change)
            }
        }
    }

    /// Records a change with the time the lease made it (the watcher may see it later).
    private func record(_ holder: String, _ change: LeaderRoleChange) {
        state.changes.append(Change(holder: holder, role: change.role, at: change.at))
        state.current[holder] = change.role
    }

    func snapshot() -> State { state }

    /// Waits (polling every 20 ms, at most `timeout`) until `condition` holds; the state then, or nil.
    func waitFor(timeout: Duration, _ condition: @Sendable (State) -> Bool) async -> State? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(state) { return state }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition(state) ? state : nil
    }
}

/// A store whose calls, once cut, wait until cancelled: a scheduler cut off from the NATS servers.
private actor CuttableStore: LeaderLeaseStore {
    private let inner: KeyValueLeaderStore
    private var isCut = false

    init(_ inner: KeyValueLeaderStore) {
        self.inner = inner
    }

    func cut() { isCut = true }

    private func hangIfCut() async {
        guard isCut else { return }
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(1)) }
    }

    func read() async throws -> KeyValueEntry? {
        await hangIfCut()
        return try await inner.read()
    }

    func create(_ value: Data) async throws(KeyValueWriteError) -> UInt64 {
        await hangIfCut()
        return try await inner.create(value)
    }

    func update(_ value: Data, expectedRevision: UInt64) async throws(KeyValueWriteError) -> UInt64 {
        await hangIfCut()
        return try await inner.update(value, expectedRevision: expectedRevision)
    }
}
