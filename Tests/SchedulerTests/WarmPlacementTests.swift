import HangarScheduler
import HangarShared
import Testing

@Suite("Warm pools and templates in cluster state")
struct WarmPlacementTests {
    func heartbeat(
        warm: [(runtime: String, template: String, ready: UInt32)],
        templates: [String] = ["host"]
    )
        -> Hangar_V1_NodeHeartbeat
    {
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.incarnation = "i"
        heartbeat.capacity.slotsTotal = 8
        heartbeat.capacity.cpuMillis = 4000
        heartbeat.capacity.memoryBytes = 8 << 30
        var runtime = Hangar_V1_RuntimeAvailability()
        runtime.name = "process"
        runtime.available = true
        heartbeat.runtimes = [runtime]
        heartbeat.templates = templates
        heartbeat.pools = warm.map {
            var pool = Hangar_V1_WarmPool()
            (pool.runtime, pool.template, pool.ready) = ($0.runtime, $0.template, $0.ready)
            return pool
        }
        return heartbeat
    }

    @Test("ready warm sandboxes come from heartbeats by runtime and template, and a placement takes one")
    func warmFromHeartbeats() {
        var cluster = ClusterState()
        let now = ContinuousClock.now
        cluster.record(heartbeat(warm: [("process", "host", 1), ("container", "host", 3)]), from: "warm", at: now)
        cluster.record(heartbeat(warm: []), from: "cold", at: now)
        #expect(cluster.view("warm")?.warm == ["process:host": 1, "container:host": 3])
        let job = PlacementRequest(runtime: "process", template: "host", cpuMillis: 100, memoryBytes: 1 << 20)
        for seed in UInt64(0)..<16 {
            var request = job
            request.tieBreak = seed
            #expect(cluster.place(request) == .ranked(["warm", "cold"]))
        }
        cluster.reserve("warm", job)
        #expect(cluster.view("warm")?.warm["process:host"] == 0)
        // Now neither node has a ready sandbox: load decides, and "warm" carries the reservation.
        #expect(cluster.place(job) == .ranked(["cold", "warm"]))
        // The next heartbeat is the truth again.
        cluster.record(heartbeat(warm: [("process", "host", 2)]), from: "warm", at: now)
        #expect(cluster.view("warm")?.warm["process:host"] == 2)
    }

    @Test("a template no node holds makes placement impossible, naming the template")
    func unheldTemplate() {
        var cluster = ClusterState()
        cluster.record(heartbeat(warm: [], templates: ["host", "py"]), from: "a", at: .now)
        guard case .impossible(let why) = cluster.place(PlacementRequest(runtime: "process", template: "ruby")) else {
            Issue.record("expected impossible")
            return
        }
        #expect(why.contains("without template 'ruby'"))
        #expect(cluster.place(PlacementRequest(runtime: "process", template: "py")) == .ranked(["a"]))
    }
}
