import CoreMetrics
import HangarShared
import Synchronization

/// Running totals of the scheduler since it started, for `hangar.admin.stats` (`hangar top`), and
/// the same events as swift-metrics counters and timers (`/metrics` when a metrics backend is
/// bootstrapped; no-ops otherwise). Thread-safe: intake replies count rejections outside the
/// scheduler actor.
public final class SchedulerCounters: Sendable {
    /// One tenant's totals.
    public struct Tenant: Sendable, Equatable {
        public var accepted: UInt64 = 0
        public var rejected: UInt64 = 0
        public var finished: UInt64 = 0

        public init(accepted: UInt64 = 0, rejected: UInt64 = 0, finished: UInt64 = 0) {
            self.accepted = accepted
            self.rejected = rejected
            self.finished = finished
        }
    }

    /// A snapshot of every total.
    public struct Snapshot: Sendable {
        public var tenants: [String: Tenant] = [:]
        public var accepted: UInt64 = 0
        public var finished: UInt64 = 0
        public var rejected: UInt64 = 0
        public var placementFailures: UInt64 = 0
        public var finishedByStatus: [String: UInt64] = [:]
        /// Finished per tenant and status, for the jobs counter of `/metrics`.
        public var finishedByTenantStatus: [TenantStatus: UInt64] = [:]
        public var jobsPerSecond: Double = 0
        public var latencyP50Ms: Double = 0
        public var latencyP99Ms: Double = 0
    }

    /// A (tenant, status) pair.
    public struct TenantStatus: Sendable, Hashable {
        public var tenant: String
        public var status: String

        public init(tenant: String, status: String) {
            self.tenant = tenant
            self.status = status
        }
    }

    private struct State {
        var snapshot = Snapshot()
        /// The accepted → finished times of the last `latencyWindow` jobs (a ring).
        var latencies: [Double] = []
        var nextLatency = 0
        /// Finished jobs per whole second of the monotonic clock, the last `rateWindow` seconds.
        var perSecond: [(second: Int64, count: Int)] = []
    }

    private static let latencyWindow = 1024
    private static let rateWindow: Int64 = 10
    /// Past this many distinct tenants, new ones are counted under "(other)" so that a flood of
    /// tenant names cannot grow memory without bound.
    static let maxTenants = 10_000
    private let state = Mutex(State())
    private let start = ContinuousClock.now

    public init() {}

    public func accepted(tenant: String) {
        let key = state.withLock { state in
            state.snapshot.accepted += 1
            return Self.update(&state.snapshot, tenant) { $0.accepted += 1 }
        }
        Counter(label: "hangar_jobs_accepted_total", dimensions: [("tenant", key)]).increment()
    }

    /// A submission refused at intake (the job never existed).
    public func rejected(tenant: String, reason: Hangar_V1_RejectReason) {
        let key = state.withLock { state in
            state.snapshot.rejected += 1
            if reason == .noCapacity { state.snapshot.placementFailures += 1 }
            return Self.update(&state.snapshot, tenant) { $0.rejected += 1 }
        }
        Counter(label: "hangar_jobs_rejected_total", dimensions: [("tenant", key), ("reason", reason.code)]).increment()
        if reason == .noCapacity { Counter(label: "hangar_placement_failures_total").increment() }
    }

    /// A node refused an assignment or did not answer it.
    public func assignmentFailed() {
        state.withLock { $0.snapshot.placementFailures += 1 }
        Counter(label: "hangar_placement_failures_total").increment()
    }

    /// A job got a node `waited` after it was accepted (queue wait plus the placement decision).
    public func placed(after waited: Duration) {
        CoreMetrics.Timer(label: "hangar_placement_latency_seconds").recordNanoseconds(waited.nanoseconds)
    }

    /// A node acknowledged an assignment `milliseconds` after the scheduler decided on it.
    public func dispatched(milliseconds: UInt64) {
        CoreMetrics.Timer(label: "hangar_dispatch_latency_seconds").recordMilliseconds(milliseconds)
    }

    /// A job ended (any status); `totalMs` is accepted → finished.
    public func finished(tenant: String, status: Hangar_V1_JobStatus, reason: Hangar_V1_RejectReason, totalMs: UInt64) {
        let second = secondsSinceStart()
        let key = state.withLock { state in
            state.snapshot.finished += 1
            let name = status.displayName
            state.snapshot.finishedByStatus[name, default: 0] += 1
            let key = TenantStatus(
                tenant: state.snapshot.tenants[tenant] != nil || state.snapshot.tenants.count < Self.maxTenants
                    ? tenant : "(other)",
                status: name
            )
            state.snapshot.finishedByTenantStatus[key, default: 0] += 1
            Self.update(&state.snapshot, tenant) { totals in
                totals.finished += 1
                if status == .rejected { totals.rejected += 1 }
            }
            if status == .rejected {
                state.snapshot.rejected += 1
                if reason == .noCapacity { state.snapshot.placementFailures += 1 }
            }
            if status == .expired { state.snapshot.placementFailures += 1 }
            if state.latencies.count < Self.latencyWindow {
                state.latencies.append(Double(totalMs))
            } else {
                state.latencies[state.nextLatency] = Double(totalMs)
                state.nextLatency = (state.nextLatency + 1) % Self.latencyWindow
            }
            if let last = state.perSecond.last, last.second == second {
                state.perSecond[state.perSecond.count - 1].count += 1
            } else {
                state.perSecond.append((second, 1))
                state.perSecond.removeAll { $0.second <= second - Self.rateWindow }
            }
            return key
        }
        Counter(label: "hangar_jobs_finished_total", dimensions: [("tenant", key.tenant), ("status", key.status)])
            .increment()
        CoreMetrics.Timer(label: "hangar_job_duration_seconds").recordMilliseconds(totalMs)
        if status == .rejected {
            Counter(label: "hangar_jobs_rejected_total", dimensions: [("tenant", key.tenant), ("reason", reason.code)])
                .increment()
            if reason == .noCapacity { Counter(label: "hangar_placement_failures_total").increment() }
        }
        if status == .expired { Counter(label: "hangar_placement_failures_total").increment() }
    }

    /// Every total now, with the rate over the last 10 s and latency percentiles.
    public func snapshot() -> Snapshot {
        let second = secondsSinceStart()
        return state.withLock { state in
            var snapshot = state.snapshot
            let recent = state.perSecond.filter { $0.second > second - Self.rateWindow }.reduce(0) { $0 + $1.count }
            let window = Double(min(Self.rateWindow, second + 1))
            snapshot.jobsPerSecond = Double(recent) / max(window, 1)
            let sorted = state.latencies.sorted()
            snapshot.latencyP50Ms = Self.percentile(sorted, 0.50)
            snapshot.latencyP99Ms = Self.percentile(sorted, 0.99)
            return snapshot
        }
    }

    /// Milliseconds since this scheduler started.
    public var uptimeMilliseconds: Int64 {
        let (seconds, attoseconds) = (ContinuousClock.now - start).components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// The nearest-rank percentile of sorted values; 0 when there are none.
    public static func percentile(_ sorted: [Double], _ fraction: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((fraction * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }

    private func secondsSinceStart() -> Int64 { (ContinuousClock.now - start).components.seconds }

    /// Applies `change` to the tenant's totals; returns the key it is counted under.
    @discardableResult
    private static func update(
        _ snapshot: inout Snapshot,
        _ tenant: String,
        _ change: (inout Tenant) -> Void
    ) -> String {
        let key = snapshot.tenants[tenant] != nil || snapshot.tenants.count < maxTenants ? tenant : "(other)"
        change(&snapshot.tenants[key, default: Tenant()])
        return key
    }
}

extension Duration {
    /// Whole nanoseconds, saturating.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }
}
