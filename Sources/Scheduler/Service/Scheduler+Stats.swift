import Foundation
import HangarShared

extension Scheduler {
    /// Nodes, tenants and cluster totals now (what `hangar.admin.stats` answers).
    public func stats() -> Hangar_V1_ClusterStats { clusterStats() }

    /// `hangar.admin.stats`: nodes, tenants and cluster totals for `hangar top` and `hangar tenant`.
    func clusterStats() -> Hangar_V1_ClusterStats {
        let counted = counters.snapshot()
        var stats = Hangar_V1_ClusterStats()
        stats.nodes = nodesReply().nodes
        stats.jobsAccepted = counted.accepted
        stats.jobsFinished = counted.finished
        stats.jobsPerSecond = counted.jobsPerSecond
        stats.latencyP50Ms = counted.latencyP50Ms
        stats.latencyP99Ms = counted.latencyP99Ms
        stats.queueDepth = UInt32(clamping: core.queue.totalQueued)
        stats.running = UInt32(
            clamping: core.jobs.values.lazy.filter {
                switch $0.phase {
                case .running, .restored: true
                default: false
                }
            }.count
        )
        stats.placementFailures = counted.placementFailures
        stats.uptimeMs = counters.uptimeMilliseconds
        stats.finishedByStatus = counted.finishedByStatus
        stats.rejected = counted.rejected
        stats.tenants = tenantStats(counted)
        return stats
    }

    /// Every tenant that is configured, has jobs now, or was counted since start; sorted by name.
    private func tenantStats(_ counted: SchedulerCounters.Snapshot) -> [Hangar_V1_TenantStats] {
        let queue = core.queue
        let totals = core.cluster.totals
        let names = Set(tenants.tenants.keys).union(queue.usage.keys).union(counted.tenants.keys)
        let activeWeight = queue.usage.filter { $0.value.running + $0.value.queued > 0 }
            .reduce(0.0) { $0 + tenants.policy(for: $1.key).weight }
        return names.sorted().map { name in
            let policy = tenants.policy(for: name)
            let usage = queue.usage[name] ?? FairQueue.Usage()
            let totalsOfTenant = counted.tenants[name] ?? SchedulerCounters.Tenant()
            var tenant = Hangar_V1_TenantStats()
            tenant.name = name
            tenant.weight = policy.weight
            tenant.running = UInt32(clamping: usage.running)
            tenant.queued = UInt32(clamping: usage.queued)
            tenant.dominantShare = queue.share(of: name, weight: 1, totals: totals)
            let active = usage.running + usage.queued > 0
            tenant.fairShare = active && activeWeight > 0 ? policy.weight / activeWeight : 0
            tenant.rejected = totalsOfTenant.rejected
            tenant.accepted = totalsOfTenant.accepted
            tenant.finished = totalsOfTenant.finished
            tenant.configured = tenants.tenants[name] != nil
            tenant.maxConcurrent = UInt32(clamping: policy.maxConcurrent)
            tenant.maxQueued = UInt32(clamping: policy.maxQueued)
            tenant.rate = policy.rate
            tenant.burst = policy.burst
            tenant.runtimes = policy.runtimes.map { $0.sorted() } ?? []
            tenant.templates = policy.templates.map { $0.sorted() } ?? []
            tenant.maxCpuMillis = policy.maxCPUMillis
            tenant.maxMemoryBytes = policy.maxMemoryBytes
            tenant.cpuMillisUsed = UInt32(clamping: usage.cpuMillis)
            tenant.memoryBytesUsed = usage.memoryBytes
            return tenant
        }
    }
}

extension Scheduler {
    /// `hangar.admin.jobs`: the newest jobs from the store, with the live state of those in progress.
    nonisolated func jobsReply(_ payload: Data) async -> Hangar_V1_JobsReply {
        var reply = Hangar_V1_JobsReply()
        guard let request = try? Hangar_V1_JobsRequest(serializedBytes: payload) else {
            reply.error = "the payload is not a hangar.v1.JobsRequest"
            return reply
        }
        do {
            let limit = request.limit == 0 ? 50 : Int(min(request.limit, 1000))
            reply.jobs = try await store.recentJobs(tenant: request.tenant.isEmpty ? nil : request.tenant, limit: limit)
        } catch {
            reply.error = "the store could not be read: \(error)"
        }
        return reply
    }
}
