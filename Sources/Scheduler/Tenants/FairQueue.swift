import HeapModule

/// Per-tenant queues with weighted dominant-resource fairness between tenants and priorities within
/// a tenant. Pure: it decides order; the scheduler decides placement.
///
/// A tenant's dominant share is the largest of its fractions of the cluster's CPU, memory and slots
/// in use, divided by its weight. The next job comes from the tenant with the smallest share, so
/// under contention a tenant with weight 2 holds twice the bottleneck resource of a tenant with
/// weight 1, and an idle tenant's share goes to the others.
public struct FairQueue: Sendable {
    /// One queued job: higher priority first, then first come first served.
    public struct Item: Sendable, Comparable {
        public var priority: Int32
        public var sequence: UInt64
        public var jobID: String

        public static func < (lhs: Item, rhs: Item) -> Bool {
            // Heap.max() is taken first: the greatest item is the highest priority, lowest sequence.
            (lhs.priority, rhs.sequence) < (rhs.priority, lhs.sequence)
        }

        public static func == (lhs: Item, rhs: Item) -> Bool { lhs.jobID == rhs.jobID }
    }

    /// What a tenant holds and waits for.
    public struct Usage: Sendable, Equatable {
        public var queued = 0
        public var running = 0
        public var cpuMillis: UInt64 = 0
        public var memoryBytes: UInt64 = 0
    }

    private var heaps: [String: Heap<Item>] = [:]
    private var removed: Set<String> = []
    public private(set) var usage: [String: Usage] = [:]
    private var nextSequence: UInt64 = 0
    /// Jobs queued across all tenants.
    public private(set) var totalQueued = 0

    public init() {}

    /// Queues a job; give back its old `sequence` when it returns to the queue so it keeps its place.
    @discardableResult
    public mutating func enqueue(tenant: String, jobID: String, priority: Int32, sequence: UInt64? = nil) -> UInt64 {
        let sequence =
            sequence
            ?? {
                nextSequence += 1
                return nextSequence
            }()
        removed.remove(jobID)
        heaps[tenant, default: Heap()].insert(Item(priority: priority, sequence: sequence, jobID: jobID))
        usage[tenant, default: Usage()].queued += 1
        totalQueued += 1
        return sequence
    }

    /// The job the tenant would run next.
    public mutating func peek(tenant: String) -> Item? {
        while let top = heaps[tenant]?.max {
            if removed.contains(top.jobID) {
                _ = heaps[tenant]?.popMax()
                removed.remove(top.jobID)
                continue
            }
            return top
        }
        return nil
    }

    /// Takes the tenant's next job out of the queue.
    public mutating func pop(tenant: String) -> Item? {
        guard let top = peek(tenant: tenant) else { return nil }
        _ = heaps[tenant]?.popMax()
        usage[tenant]?.queued -= 1
        totalQueued -= 1
        return top
    }

    /// Takes a queued job out (cancelled or expired) wherever it is in the queue.
    public mutating func remove(tenant: String, jobID: String) {
        removed.insert(jobID)
        usage[tenant]?.queued -= 1
        totalQueued -= 1
    }

    public mutating func started(tenant: String, cpuMillis: UInt64, memoryBytes: UInt64) {
        usage[tenant, default: Usage()].running += 1
        usage[tenant]?.cpuMillis += cpuMillis
        usage[tenant]?.memoryBytes += memoryBytes
    }

    public mutating func finished(tenant: String, cpuMillis: UInt64, memoryBytes: UInt64) {
        guard var current = usage[tenant] else { return }
        current.running = max(0, current.running - 1)
        current.cpuMillis -= min(current.cpuMillis, cpuMillis)
        current.memoryBytes -= min(current.memoryBytes, memoryBytes)
        usage[tenant] = current
    }

    public func queued(tenant: String) -> Int { usage[tenant]?.queued ?? 0 }

    /// The tenant's dominant share of `totals`, divided by its weight.
    public func share(
        of tenant: String,
        weight: Double,
        totals: (cpuMillis: UInt64, memoryBytes: UInt64, slots: Int)
    ) -> Double {
        guard let usage = usage[tenant] else { return 0 }
        let cpu = totals.cpuMillis == 0 ? 0 : Double(usage.cpuMillis) / Double(totals.cpuMillis)
        let memory = totals.memoryBytes == 0 ? 0 : Double(usage.memoryBytes) / Double(totals.memoryBytes)
        let slots = totals.slots == 0 ? 0 : Double(usage.running) / Double(totals.slots)
        return max(cpu, memory, slots) / max(weight, 1e-9)
    }

    /// Among tenants with queued jobs that `allowed` admits, the one with the smallest weighted share.
    public func nextTenant(
        weight: (String) -> Double,
        totals: (cpuMillis: UInt64, memoryBytes: UInt64, slots: Int),
        allowed: (String, Usage) -> Bool
    ) -> String? {
        var best: (tenant: String, share: Double)?
        for (tenant, current) in usage where current.queued > 0 && allowed(tenant, current) {
            let value = share(of: tenant, weight: weight(tenant), totals: totals)
            if let chosen = best, (chosen.share, chosen.tenant) <= (value, tenant) { continue }
            best = (tenant, value)
        }
        return best?.tenant
    }
}
