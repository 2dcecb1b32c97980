import HangarScheduler
import Testing

@Suite("Per-tenant queues and weighted dominant-resource fairness")
struct FairQueueTests {
    @Test("within a tenant: higher priority first, then first come first served; removal is honoured")
    func priorities() {
        var queue = FairQueue()
        queue.enqueue(tenant: "t", jobID: "low-1", priority: 0)
        queue.enqueue(tenant: "t", jobID: "high", priority: 5)
        queue.enqueue(tenant: "t", jobID: "low-2", priority: 0)
        queue.enqueue(tenant: "t", jobID: "gone", priority: 9)
        queue.remove(tenant: "t", jobID: "gone")
        #expect(queue.queued(tenant: "t") == 3)
        var order: [String] = []
        while let item = queue.pop(tenant: "t") { order.append(item.jobID) }
        #expect(order == ["high", "low-1", "low-2"])
        #expect(queue.queued(tenant: "t") == 0)
    }

    @Test("a job put back keeps its place")
    func requeueKeepsPlace() {
        var queue = FairQueue()
        let first = queue.enqueue(tenant: "t", jobID: "a", priority: 0)
        queue.enqueue(tenant: "t", jobID: "b", priority: 0)
        #expect(queue.pop(tenant: "t")?.jobID == "a")
        queue.enqueue(tenant: "t", jobID: "a", priority: 0, sequence: first)
        #expect(queue.pop(tenant: "t")?.jobID == "a")
    }

    /// Simulates a saturated cluster: `slots` slots, every tenant always has work queued, jobs
    /// finish at random; returns jobs completed per tenant.
    func simulate(weights: [String: Double], slots: Int, steps: Int) -> [String: Int] {
        var queue = FairQueue()
        var running: [String] = []
        var completed: [String: Int] = [:]
        var counter = 0
        for tenant in weights.keys {
            for _ in 0..<(slots * 2) {
                counter += 1
                queue.enqueue(tenant: tenant, jobID: "\(tenant)-\(counter)", priority: 0)
            }
        }
        let totals = (cpuMillis: UInt64(0), memoryBytes: UInt64(0), slots: slots)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<steps {
            while running.count < slots,
                let tenant = queue.nextTenant(weight: { weights[$0]! }, totals: totals, allowed: { _, _ in true })
            {
                _ = queue.pop(tenant: tenant)
                queue.started(tenant: tenant, cpuMillis: 0, memoryBytes: 0)
                running.append(tenant)
                counter += 1
                queue.enqueue(tenant: tenant, jobID: "\(tenant)-\(counter)", priority: 0)
            }
            let done = running.remove(at: Int.random(in: 0..<running.count, using: &generator))
            queue.finished(tenant: done, cpuMillis: 0, memoryBytes: 0)
            completed[done, default: 0] += 1
        }
        return completed
    }

    @Test("under contention, work completes in proportion to the weights (1:3)")
    func weightsConverge() {
        let completed = simulate(weights: ["light": 1, "heavy": 3], slots: 16, steps: 8000)
        let ratio = Double(completed["heavy"]!) / Double(completed["light"]!)
        #expect(ratio > 2.6 && ratio < 3.4, "ratio \(ratio)")
    }

    @Test("no tenant starves, even at weight 0.1 among heavy ones")
    func noStarvation() {
        let completed = simulate(weights: ["tiny": 0.1, "a": 5, "b": 5], slots: 8, steps: 5000)
        #expect((completed["tiny"] ?? 0) > 0)
    }

    @Test("an idle tenant's share goes to the others")
    func idleShareRedistributed() {
        var queue = FairQueue()
        for index in 0..<10 { queue.enqueue(tenant: "busy", jobID: "b\(index)", priority: 0) }
        let totals = (cpuMillis: UInt64(0), memoryBytes: UInt64(0), slots: 10)
        var placed = 0
        while let tenant = queue.nextTenant(weight: { $0 == "idle" ? 9 : 1 }, totals: totals, allowed: { _, _ in true })
        {
            _ = queue.pop(tenant: tenant)
            queue.started(tenant: tenant, cpuMillis: 0, memoryBytes: 0)
            placed += 1
        }
        #expect(placed == 10)
    }

    @Test("the dominant resource decides: a CPU-heavy tenant yields to a slot-light one")
    func dominantResource() {
        var queue = FairQueue()
        queue.enqueue(tenant: "cpu", jobID: "c", priority: 0)
        queue.enqueue(tenant: "small", jobID: "s", priority: 0)
        let totals = (cpuMillis: UInt64(10_000), memoryBytes: UInt64(1 << 30), slots: 100)
        queue.started(tenant: "cpu", cpuMillis: 5000, memoryBytes: 0)  // 50% of CPU, 1% of slots
        queue.started(tenant: "small", cpuMillis: 0, memoryBytes: 0)
        queue.started(tenant: "small", cpuMillis: 0, memoryBytes: 0)  // 2% of slots
        #expect(queue.nextTenant(weight: { _ in 1 }, totals: totals, allowed: { _, _ in true }) == "small")
    }
}
