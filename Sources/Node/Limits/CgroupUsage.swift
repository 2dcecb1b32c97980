/// Resource figures of a job's cgroup, read after the sandbox ended.
struct CgroupUsage: Sendable, Equatable {
    /// CPU time of every process that ran in the cgroup.
    var cpuTimeMicroseconds: UInt64?
    /// The cgroup's peak memory (page cache and tmpfs included); nil where the kernel lacks it.
    var peakMemoryBytes: UInt64?
    /// Processes the kernel's OOM killer killed in the cgroup; nil where the kernel does not count
    /// them (v1 before Linux 4.13).
    var oomKills: UInt64?
    /// How often memory use hit the limit (v1 `memory.failcnt`, v2 `memory.events` max).
    var memoryLimitHits: UInt64
    /// Forks and clones refused because the pids limit was reached (`pids.events` max). Under gVisor
    /// these include the sandbox's own host threads (the sentry's, and a stub per guest thread on ptrace).
    var pidsLimitHits: UInt64
}
