import HangarScheduler
import HangarShared
import Testing

@Suite("SchedulerCounters: totals for hangar top and /metrics")
struct SchedulerCountersTests {
    @Test("accepted, finished and rejected count per tenant; no_capacity counts as a placement failure")
    func totals() {
        let counters = SchedulerCounters()
        counters.accepted(tenant: "acme")
        counters.accepted(tenant: "acme")
        counters.accepted(tenant: "beta")
        counters.finished(tenant: "acme", status: .succeeded, reason: .unspecified, totalMs: 10)
        counters.finished(tenant: "acme", status: .failed, reason: .unspecified, totalMs: 20)
        counters.finished(tenant: "beta", status: .rejected, reason: .noCapacity, totalMs: 30)
        counters.rejected(tenant: "beta", reason: .rateLimited)
        counters.rejected(tenant: "gamma", reason: .noCapacity)
        counters.assignmentFailed()

        let snapshot = counters.snapshot()
        #expect(snapshot.accepted == 3)
        #expect(snapshot.finished == 3)
        #expect(snapshot.rejected == 3)
        #expect(snapshot.placementFailures == 3)
        #expect(snapshot.tenants["acme"] == SchedulerCounters.Tenant(accepted: 2, rejected: 0, finished: 2))
        #expect(snapshot.tenants["beta"] == SchedulerCounters.Tenant(accepted: 1, rejected: 2, finished: 1))
        #expect(snapshot.tenants["gamma"]?.rejected == 1)
        #expect(snapshot.finishedByStatus == ["SUCCEEDED": 1, "FAILED": 1, "REJECTED": 1])
        #expect(
            snapshot.finishedByTenantStatus[SchedulerCounters.TenantStatus(tenant: "acme", status: "FAILED")] == 1
        )
        #expect(snapshot.jobsPerSecond > 0)
    }

    @Test("latency percentiles are nearest-rank over the finished jobs")
    func percentiles() {
        let counters = SchedulerCounters()
        for milliseconds in 1...100 {
            counters.finished(tenant: "t", status: .succeeded, reason: .unspecified, totalMs: UInt64(milliseconds))
        }
        let snapshot = counters.snapshot()
        #expect(snapshot.latencyP50Ms == 50)
        #expect(snapshot.latencyP99Ms == 99)
        #expect(SchedulerCounters.percentile([], 0.5) == 0)
    }

    @Test("only the last 1024 jobs count for latency")
    func latencyWindow() {
        let counters = SchedulerCounters()
        for _ in 0..<2000 {
            counters.finished(tenant: "t", status: .succeeded, reason: .unspecified, totalMs: 1000)
        }
        for _ in 0..<1024 {
            counters.finished(tenant: "t", status: .succeeded, reason: .unspecified, totalMs: 5)
        }
        #expect(counters.snapshot().latencyP99Ms == 5)
    }
}
