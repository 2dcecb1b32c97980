import HangarNode
import Testing

@Suite("Warm pool settings and sizing (pure)")
struct WarmPolicyTests {
    @Test("--pool RUNTIME:TEMPLATE=MIN:MAX parses, and bad forms say what is wrong")
    func parse() throws {
        #expect(
            try WarmPoolSpec.parse("process:host=2:8")
                == WarmPoolSpec(runtime: "process", template: "host", min: 2, max: 8)
        )
        #expect(try WarmPoolSpec.parse("container:py=0:1").template == "py")
        for bad in [
            "process:host=2", "process=1:2", "process:host=3:2", "process:host=0:0", "process:../x=1:2", "p:h=a:b",
            "process:host=1:300",
        ] {
            #expect(throws: WarmError.self, "\(bad)") { try WarmPoolSpec.parse(bad) }
        }
    }

    @Test("a warm sandbox fits a job only with the pool's creation-time limits")
    func profile() {
        let profile = WarmProfile.defaults
        var limits = JobLimits(.init())
        #expect(profile.matches(limits))
        limits.memoryBytes = 1 << 30  // set at assignment
        limits.timeout = .seconds(1)
        #expect(profile.matches(limits))
        limits.outputBytes = 10
        #expect(!profile.matches(limits))
    }
}

@Suite("Warm pool demand (pure)")
struct WarmDemandTests {
    @Test("the target follows the busiest 10 s of the last 2 minutes, within min and max")
    func target() {
        var demand = WarmDemand()
        let start = ContinuousClock.now
        #expect(demand.target(min: 1, max: 4, now: start) == 1)
        for second in 0..<3 { demand.record(start + .seconds(second)) }
        #expect(demand.target(min: 1, max: 4, now: start + .seconds(3)) == 3)
        // Spread out, the same count is less demand at once.
        demand.record(start + .seconds(30))
        #expect(demand.target(min: 1, max: 4, now: start + .seconds(31)) == 3)
        for _ in 0..<10 { demand.record(start + .seconds(40)) }
        #expect(demand.target(min: 1, max: 4, now: start + .seconds(41)) == 4)
        // Idle past the window: back to min.
        #expect(demand.target(min: 1, max: 4, now: start + .seconds(200)) == 1)
        #expect(demand.arrivals.isEmpty)
    }
}
