/// The limits the node writes into a job's cgroup, whichever runtime runs the job.
struct CgroupLimits: Sendable, Equatable {
    /// Memory, and memory plus swap where the kernel accounts it; nil for no limit.
    var memoryBytes: UInt64?
    /// Processes and threads; nil for no limit.
    var pids: UInt64?
    /// CPU bandwidth per period; nil for no limit.
    var cpuQuotaMicroseconds: UInt64?
    /// The CFS period the quota is measured over.
    var cpuPeriodMicroseconds: UInt64

    /// The CFS period the runtimes use.
    static let defaultCPUPeriodMicroseconds: UInt64 = 100_000

    /// Limits as given.
    init(memoryBytes: UInt64?, pids: UInt64?, cpuQuotaMicroseconds: UInt64?, cpuPeriodMicroseconds: UInt64) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpuQuotaMicroseconds = cpuQuotaMicroseconds
        self.cpuPeriodMicroseconds = cpuPeriodMicroseconds
    }

    /// The process runtime's limits: a quota of at least 1 ms per period (the kernel's minimum).
    init(_ limits: JobLimits) {
        let period = Self.defaultCPUPeriodMicroseconds
        self.init(
            memoryBytes: limits.memoryBytes,
            pids: UInt64(limits.pids),
            cpuQuotaMicroseconds: max(1000, UInt64(limits.cpuMillis) * period / 1000),
            cpuPeriodMicroseconds: period
        )
    }

    /// The limits of an OCI spec's `linux.resources`; negative or missing values mean none.
    init(_ resources: OCIResources) {
        func limit(_ value: Int64?) -> UInt64? { value.flatMap { $0 < 0 ? nil : UInt64($0) } }
        self.init(
            memoryBytes: limit(resources.memory?.limit),
            pids: limit(resources.pids?.limit),
            cpuQuotaMicroseconds: limit(resources.cpu?.quota),
            cpuPeriodMicroseconds: resources.cpu?.period ?? Self.defaultCPUPeriodMicroseconds
        )
    }
}
