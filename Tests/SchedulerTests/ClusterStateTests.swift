import HangarScheduler
import HangarShared
import Testing

@Suite("Cluster state and first-fit placement")
struct ClusterStateTests {
    func heartbeat(
        _ id: String,
        slots: UInt32,
        runtimes: [String] = ["process"],
        labels: [String: String] = [:]
    )
        -> Hangar_V1_NodeHeartbeat
    {
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.nodeID = id
        heartbeat.incarnation = "i-\(id)"
        heartbeat.capacity.slotsTotal = slots
        heartbeat.runtimes = runtimes.map {
            var runtime = Hangar_V1_RuntimeAvailability()
            runtime.name = $0
            runtime.available = true
            return runtime
        }
        heartbeat.labels = labels
        return heartbeat
    }

    @Test("no node: wait; node up: placed; node silent past the TTL: down")
    func liveness() {
        var cluster = ClusterState(downAfter: .seconds(5))
        let start = ContinuousClock.now
        #expect(cluster.place(runtime: "process", labels: [:], at: start) == .wait("no node is up"))
        cluster.record(heartbeat("a", slots: 1), from: "a", at: start)
        #expect(cluster.place(runtime: "process", labels: [:], at: start) == .node("a"))
        #expect(cluster.isUp("a", at: start + .seconds(4)))
        #expect(!cluster.isUp("a", at: start + .seconds(6)))
        #expect(cluster.place(runtime: "process", labels: [:], at: start + .seconds(6)) == .wait("no node is up"))
    }

    @Test("reservations fill nodes; load spreads to the node with most free slots")
    func reservations() {
        var cluster = ClusterState()
        let now = ContinuousClock.now
        cluster.record(heartbeat("a", slots: 2), from: "a", at: now)
        cluster.record(heartbeat("b", slots: 2), from: "b", at: now)
        var placed: [String] = []
        for _ in 0..<4 {
            guard case .node(let id) = cluster.place(runtime: "process", labels: [:], at: now) else {
                Issue.record("expected a placement")
                return
            }
            cluster.reserve(id)
            placed.append(id)
        }
        #expect(placed.sorted() == ["a", "a", "b", "b"])
        #expect(cluster.place(runtime: "process", labels: [:], at: now) == .wait("all 2 nodes that fit are full"))
        cluster.release("b")
        #expect(cluster.place(runtime: "process", labels: [:], at: now) == .node("b"))
    }

    @Test("runtime and labels filter, and the explanation names the constraint")
    func feasibility() {
        var cluster = ClusterState()
        let now = ContinuousClock.now
        cluster.record(heartbeat("a", slots: 2, runtimes: ["null"], labels: ["zone": "x"]), from: "a", at: now)
        guard case .impossible(let why) = cluster.place(runtime: "process", labels: [:], at: now) else {
            Issue.record("expected impossible")
            return
        }
        #expect(why.contains("runtime 'process'"))
        guard case .impossible(let labelWhy) = cluster.place(runtime: "null", labels: ["zone": "y"], at: now) else {
            Issue.record("expected impossible")
            return
        }
        #expect(labelWhy.contains("zone=y"))
        #expect(cluster.place(runtime: "null", labels: ["zone": "x"], at: now) == .node("a"))
    }

    @Test("a refusing node is skipped until its next heartbeat; a restart clears reservations")
    func fullAndRestart() {
        var cluster = ClusterState()
        let now = ContinuousClock.now
        cluster.record(heartbeat("a", slots: 4), from: "a", at: now)
        cluster.reserve("a")
        cluster.markFull("a")
        #expect(cluster.place(runtime: "process", labels: [:], at: now) == .wait("all 1 nodes that fit are full"))
        var restarted = heartbeat("a", slots: 4)
        restarted.incarnation = "new"
        cluster.record(restarted, from: "a", at: now)
        #expect(cluster.nodes["a"]?.reserved == 0)
        #expect(cluster.place(runtime: "process", labels: [:], at: now) == .node("a"))
    }

    @Test("exit codes of hangar run follow the documented mapping")
    func exitCodes() {
        var result = Hangar_V1_Result()
        result.status = .succeeded
        #expect(result.cliExitCode == 0)
        result.status = .failed
        result.exitCode = 3
        #expect(result.cliExitCode == 3)
        result.signal = 9
        #expect(result.cliExitCode == 137)
        result.status = .timedOut
        #expect(result.cliExitCode == 124)
        result.status = .rejected
        result.rejected.reason = .noCapacity
        #expect(result.cliExitCode == 2)
        result.rejected.reason = .invalidRequest
        #expect(result.cliExitCode == 1)
    }
}
