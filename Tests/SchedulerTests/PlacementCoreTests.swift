import HangarScheduler
import HangarShared
import Testing

func node(
    _ id: String,
    slots: Int = 4,
    cpu: UInt64 = 4000,
    memory: UInt64 = 8 << 30,
    runtimes: Set<String> = ["process", "null"],
    labels: [String: String] = [:]
) -> NodeView {
    var view = NodeView(id: id)
    view.slots = slots
    view.cpuMillis = cpu
    view.memoryBytes = memory
    view.runtimes = runtimes
    view.templates = ["host"]
    view.labels = labels
    return view
}

@Suite("Placement core: feasibility, ranking, explanations")
struct PlacementCoreTests {
    let request = PlacementRequest(runtime: "process", cpuMillis: 1000, memoryBytes: 1 << 30)

    @Test("every constraint filters, and the explanation counts each")
    func feasibility() {
        var down = node("down")
        down.up = false
        var draining = node("draining")
        draining.draining = true
        var ineligible = node("ineligible")
        ineligible.eligible = false
        var full = node("full")
        full.slotsReserved = 4
        var noCPU = node("no-cpu")
        noCPU.cpuReserved = 3500
        var noMemory = node("no-memory")
        noMemory.memoryReserved = 8 << 30
        var refusing = node("refusing")
        refusing.refusing = true
        let nodes = [
            down, draining, ineligible, full, noCPU, noMemory, refusing,
            node("no-runtime", runtimes: ["null"]), node("zone-b", labels: ["zone": "b"]),
        ]
        var wanted = request
        wanted.labels = ["zone": "a"]
        // No up node has the label: that cannot change by waiting.
        guard case .impossible(let why) = PlacementCore.place(wanted, nodes: nodes) else {
            Issue.record("expected impossible")
            return
        }
        #expect(why.contains("of 9 nodes"))
        #expect(why.contains("1 down"))
        #expect(why.contains("1 without runtime 'process'"))
        #expect(why.contains("without labels zone=a"))
        // Label filtering comes before busy-ness, so the busy nodes count as wrong labels here.
        let unlabeled = nodes.filter { $0.id != "zone-b" }
        guard case .wait(let busy) = PlacementCore.place(request, nodes: unlabeled) else {
            Issue.record("expected wait")
            return
        }
        for text in [
            "1 ineligible", "1 draining", "1 refusing", "1 with no free slot", "1 short of 1000 millicores",
            "1 short of 1073741824 bytes",
        ] {
            #expect(busy.contains(text), "missing '\(text)' in: \(busy)")
        }
    }

    @Test("a node whose maximum for the runtime is below a job's limit is never a candidate, and says which")
    func maximumLimits() {
        var strict = node("strict")
        var ceiling = Hangar_V1_Limits()
        ceiling.memoryBytes = 512 << 20
        strict.maxLimits["process"] = ceiling
        var limits = Hangar_V1_Limits()
        limits.memoryBytes = 1 << 30
        let asking = PlacementRequest(runtime: "process", memoryBytes: 1 << 30, limits: limits)
        guard case .impossible(let why) = PlacementCore.place(asking, nodes: [strict]) else {
            Issue.record("expected impossible")
            return
        }
        #expect(why.contains("limits.memory_bytes"), "\(why)")
        // A generous node beside it takes the job; the ceiling of another runtime does not apply.
        #expect(PlacementCore.place(asking, nodes: [strict, node("roomy")]) == .ranked(["roomy"]))
        let other = PlacementRequest(runtime: "null", limits: limits)
        #expect(PlacementCore.place(other, nodes: [strict]) == .ranked(["strict"]))
    }

    @Test("impossible when no up node could ever run it; wait when nodes are only busy or none is up")
    func impossibleVersusWait() {
        #expect(PlacementCore.place(request, nodes: []) == .wait("no node has joined the cluster"))
        let nullOnly = [node("a", runtimes: ["null"]), node("b", runtimes: ["null"])]
        guard case .impossible(let why) = PlacementCore.place(request, nodes: nullOnly) else {
            Issue.record("expected impossible")
            return
        }
        #expect(why.contains("2 without runtime 'process'"))
        var huge = request
        huge.memoryBytes = 1 << 40
        guard case .impossible = PlacementCore.place(huge, nodes: [node("a")]) else {
            Issue.record("a request larger than every node is impossible")
            return
        }
        var downNode = node("a")
        downNode.up = false
        guard case .wait = PlacementCore.place(request, nodes: [downNode]) else {
            Issue.record("a down node may come back: wait")
            return
        }
    }

    @Test("spread prefers the emptiest node, binpack the fullest; a warm sandbox beats both")
    func ranking() {
        var busy = node("busy")
        busy.slotsReserved = 3
        busy.cpuReserved = 2000
        let idle = node("idle")
        #expect(PlacementCore.place(request, nodes: [busy, idle], policy: .spread) == .ranked(["idle", "busy"]))
        #expect(PlacementCore.place(request, nodes: [busy, idle], policy: .binpack) == .ranked(["busy", "idle"]))
        var warm = node("warm")
        warm.slotsReserved = 3
        warm.warm = ["host": 1]
        guard case .ranked(let order) = PlacementCore.place(request, nodes: [idle, warm], policy: .spread) else {
            Issue.record("expected a ranking")
            return
        }
        #expect(order.first == "warm")
    }

    @Test("equal nodes share the load through the tie-break")
    func tieBreakSpreads() {
        let nodes = (0..<8).map { node("n\($0)") }
        var firsts: [String: Int] = [:]
        for seed in 0..<800 {
            var job = request
            job.tieBreak = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15
            if case .ranked(let order) = PlacementCore.place(job, nodes: nodes) { firsts[order[0], default: 0] += 1 }
        }
        #expect(firsts.count == 8)
        #expect(firsts.values.allSatisfy { $0 > 40 }, "uneven: \(firsts)")
    }

    @Test("only a few feasible candidates are ranked, so cost does not grow with the cluster")
    func candidateLimit() {
        let nodes = (0..<1000).map { node("n\($0)") }
        guard case .ranked(let order) = PlacementCore.place(request, nodes: nodes, candidateLimit: 4) else {
            Issue.record("expected a ranking")
            return
        }
        #expect(order.count == 4)
    }

    @Test("reservations never over-commit a node (random workload)")
    func neverOvercommits() {
        var cluster = ClusterState()
        let now = ContinuousClock.now
        for index in 0..<5 {
            var heartbeat = Hangar_V1_NodeHeartbeat()
            heartbeat.incarnation = "i"
            heartbeat.capacity.slotsTotal = UInt32(2 + index)
            heartbeat.capacity.cpuMillis = 1000
            heartbeat.capacity.memoryBytes = 4 << 30
            var runtime = Hangar_V1_RuntimeAvailability()
            runtime.name = "process"
            runtime.available = true
            heartbeat.runtimes = [runtime]
            heartbeat.templates = ["host"]
            cluster.record(heartbeat, from: "n\(index)", at: now)
        }
        var generator = SystemRandomNumberGenerator()
        var placed: [(String, PlacementRequest)] = []
        for step in 0..<2000 {
            if !placed.isEmpty && Bool.random(using: &generator) {
                let (id, job) = placed.remove(at: Int.random(in: 0..<placed.count, using: &generator))
                cluster.release(id, job)
            } else {
                let job = PlacementRequest(
                    runtime: "process",
                    cpuMillis: UInt64.random(in: 0...1500, using: &generator),
                    memoryBytes: UInt64.random(in: 0...(2 << 30), using: &generator),
                    tieBreak: UInt64(step)
                )
                if case .ranked(let order) = cluster.place(job) {
                    cluster.reserve(order[0], job)
                    placed.append((order[0], job))
                }
            }
            for view in cluster.views {
                #expect(view.slotsReserved <= view.slots)
                #expect(view.cpuReserved <= view.cpuMillis)
                #expect(view.memoryReserved <= view.memoryBytes)
            }
        }
    }
}

@Suite("Cluster state from heartbeats")
struct ClusterStateTests {
    func heartbeat(_ incarnation: String = "i1", slots: UInt32 = 4) -> Hangar_V1_NodeHeartbeat {
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.incarnation = incarnation
        heartbeat.capacity.slotsTotal = slots
        heartbeat.capacity.cpuMillis = 2000
        heartbeat.capacity.memoryBytes = 8 << 30
        var runtime = Hangar_V1_RuntimeAvailability()
        runtime.name = "null"
        runtime.available = true
        heartbeat.runtimes = [runtime]
        heartbeat.templates = ["host"]
        return heartbeat
    }

    @Test("a node silent for TTL + grace is down; its next heartbeat brings it back")
    func downAfterTTLAndGrace() {
        var cluster = ClusterState(ttl: .seconds(3), grace: .seconds(2))
        let start = ContinuousClock.now
        #expect(cluster.record(heartbeat(), from: "a", at: start) == .joined)
        #expect(cluster.detectDown(at: start + .milliseconds(4900)).isEmpty)
        #expect(cluster.detectDown(at: start + .milliseconds(5100)) == ["a"])
        #expect(!cluster.isUp("a"))
        #expect(cluster.detectDown(at: start + .seconds(10)).isEmpty)  // reported once
        #expect(cluster.record(heartbeat(), from: "a", at: start + .seconds(11)) == .returned)
        #expect(cluster.isUp("a"))
    }

    @Test("a new incarnation drops the node's reservations; CPU is scaled by the overcommit")
    func restart() {
        var cluster = ClusterState(cpuOvercommit: 2)
        let now = ContinuousClock.now
        cluster.record(heartbeat(), from: "a", at: now)
        #expect(cluster.view("a")?.cpuMillis == 4000)
        cluster.reserve("a", PlacementRequest(runtime: "null", cpuMillis: 100))
        #expect(cluster.view("a")?.slotsReserved == 1)
        #expect(cluster.record(heartbeat("i2"), from: "a", at: now) == .restarted)
        #expect(cluster.view("a")?.slotsReserved == 0)
        #expect(cluster.view("a")?.cpuReserved == 0)
    }

    @Test("drain and eligibility keep a node out of placement; a refusing node until its next heartbeat")
    func controls() {
        var cluster = ClusterState()
        let now = ContinuousClock.now
        cluster.record(heartbeat(), from: "a", at: now)
        let job = PlacementRequest(runtime: "null")
        #expect(cluster.place(job) == .ranked(["a"]))
        cluster.setDraining("a", true, deadline: 0)
        guard case .wait = cluster.place(job) else {
            Issue.record("draining node placed")
            return
        }
        cluster.setDraining("a", false, deadline: 0)
        cluster.setEligible("a", false)
        guard case .wait = cluster.place(job) else {
            Issue.record("ineligible node placed")
            return
        }
        cluster.setEligible("a", true)
        cluster.markRefusing("a")
        guard case .wait = cluster.place(job) else {
            Issue.record("refusing node placed")
            return
        }
        cluster.record(heartbeat(), from: "a", at: now)
        #expect(cluster.place(job) == .ranked(["a"]))
        cluster.setDraining("a", true, deadline: 1000)
        #expect(cluster.drainsExpired(nowMs: 999).isEmpty)
        #expect(cluster.drainsExpired(nowMs: 1000) == ["a"])
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
