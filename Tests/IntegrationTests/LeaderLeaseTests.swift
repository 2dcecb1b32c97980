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
    static let productionSettings = LeaderLeaseSettings(
        lease: .seconds(3),
        margin: .seconds(1),
        poll: .milliseconds(250)
    )
    private static let settings = productionSettings

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
            let firstDown = try #require(after.changes.last { $0.holder == "first" && !$0.role.isLeader })
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

/// Leases on three clustered nats-servers, the bucket replicated on all three.
@Suite("Leader lease on a cluster of three nats-servers")
struct LeaderLeaseClusterTests {
    @Test(
        "the leader lives through its bucket's stream election (the server leading it killed): same holder, same term"
    )
    func outlivesBucketElection() async throws {
        let directory = try makeTemporaryDirectory("hangar-lease-election")
        defer { try? FileManager.default.removeItem(at: directory) }
        let cluster = try await LocalNATSCluster(size: 3, directory: directory)
        defer { cluster.stop() }
        var connections: [NATSConnection] = []
        var stores: [KeyValueLeaderStore] = []
        for name in ["first", "second"] {
            var options = NATSConnectionOptions(servers: cluster.urls, name: name)
            options.maxReconnectDelay = .milliseconds(200)
            let connection = try await NATSConnection(options: options)
            connections.append(connection)
            // The metadata leader is elected; the first bucket create may still meet a settling cluster.
            let settle = ContinuousClock.now + .seconds(20)
            while true {
                do {
                    stores.append(try await KeyValueLeaderStore.open(try connection.jetStream(), replicas: 3))
                    break
                } catch {
                    if ContinuousClock.now >= settle { throw error }
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        let log = RoleLog()
        let settings = LeaderLeaseTests.productionSettings
        let first = try LeaderLease(store: stores[0], holder: "first", settings: settings)
        let second = try LeaderLease(store: stores[1], holder: "second", settings: settings)
        let watchers = [log.watch(first, "first"), log.watch(second, "second")]
        let runs = [Task { await first.run() }, Task { await second.run() }]
        let steady = try #require(await log.waitFor(timeout: .seconds(20)) { $0.leaders.count == 1 })
        let (holder, term) = try #require(steady.leaders.first)

        // Kill the server leading the bucket's stream: its Raft group waits 4-9 s before it elects
        // another, longer than the 3 s lease, so the holder cannot renew meanwhile.
        let bucketStream = "KV_\(KeyValueLeaderStore.bucketName)"
        let status = try #require(try await connections[0].jetStream().streamStatus(bucketStream))
        let index = try #require(Int(status.leader.dropFirst())) - 1
        #expect((0..<3).contains(index), "stream leader \(status.leader)")
        let killedAt = ContinuousClock.now
        let changesBefore = steady.changes.count
        cluster.crash(index)

        let after = try #require(
            await log.waitFor(timeout: .seconds(40)) { state in
                let since = state.changes.dropFirst(changesBefore)
                return since.contains { $0.holder == holder && $0.role == .suspended(term: term) }
                    && state.leaders.count == 1
            },
            "the holder was never suspended, or nobody leads again"
        )
        let since = Array(after.changes.dropFirst(changesBefore))
        // Suspended while nobody could write the key; never two leaders at once.
        #expect(after.maxLeadersAtOnce == 1, "\(after.changes)")
        let suspended = try #require(since.first { $0.holder == holder && $0.role == .suspended(term: term) })
        if after.leaders.map(\.0) == [holder] {
            // Usually: the holder takes its own record back, in the same term, and the other
            // never led.
            #expect(after.leaders.map(\.1) == [term], "\(since)")
            #expect(!since.contains { $0.holder != holder && $0.role.isLeader }, "\(since)")
            let back = try #require(since.last { $0.holder == holder && $0.role.isLeader })
            print(
                "lease election test: suspended \(suspended.at - killedAt) after the kill, leading again after \(back.at - killedAt)"
            )
        } else {
            // Sometimes the other's write lands first once the bucket has a leader again (it
            // waited out the lease and the margin by its own clock): it leads in a higher term,
            // and the suspended holder never leads again (README, "Cluster"; BENCHMARKS run 3).
            let other = try #require(after.leaders.first, "\(since)")
            #expect(other.0 != holder && other.1 > term, "\(since)")
            let taken = try #require(since.firstIndex { $0.holder == other.0 && $0.role.isLeader })
            #expect(!since[taken...].contains { $0.holder == holder && $0.role.isLeader }, "\(since)")
            print(
                "lease election test: suspended \(suspended.at - killedAt) after the kill; the other led first, after \(since[taken].at - killedAt)"
            )
        }

        for run in runs { run.cancel() }
        for run in runs { await run.value }
        for watcher in watchers { await watcher.value }
        for connection in connections { await connection.close() }
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
