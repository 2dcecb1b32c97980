import Foundation
import Glibc
import Synchronization

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
    /// Forks and clones refused because the pids limit was reached.
    var pidsLimitHits: UInt64
}

/// The cgroup of one job: created with its limits before the sandbox starts, killed and removed
/// after it ended. On v1 it is one directory per hierarchy (memory, pids, cpu, cpuacct,
/// freezer; co-mounted controllers share one), on v2 a single directory.
struct JobCgroup: Sendable {
    /// v1: one directory per hierarchy; v2: one directory.
    let version: CgroupVersion
    /// The job's directory, by controller.
    let directories: ControllerDirectories
    let limits: JobLimits

    /// CFS period for the CPU quota.
    static let cpuPeriodMicroseconds: UInt64 = 100_000
    /// Makes names unique within this node process.
    private static let sequence = Atomic<UInt64>(0)

    /// The distinct directories, sorted.
    var allDirectories: [String] { directories.distinct }

    /// The files a process writes its pid into to join the job's cgroup (one per v1 hierarchy).
    var procsFiles: [String] { allDirectories.map { $0 + "/cgroup.procs" } }

    /// Creates the job's cgroup under `host`'s parents and sets memory (plus memory+swap), pids and
    /// CPU bandwidth limits. On failure nothing is left behind.
    /// - Parameter name: the job id; it is sanitized and made unique as `<name>.<node pid>.<n>`.
    static func create(on host: CgroupHost, name: String, limits: JobLimits) throws(CgroupError) -> JobCgroup {
        let safe = String(
            name.map { $0.isASCII && ($0.isLetter || $0.isNumber || "-_".contains($0)) ? $0 : "_" }.prefix(64)
        )
        let unique = "\(safe.isEmpty ? "job" : safe).\(getpid()).\(sequence.add(1, ordering: .relaxed).newValue)"
        var created: [String] = []
        do {
            let directories = try ControllerDirectories { controller throws(CgroupError) in
                let directory = host.parents[controller] + "/" + unique
                if !created.contains(directory) {
                    guard mkdir(directory, 0o755) == 0 else { throw CgroupError.system("create", directory) }
                    created.append(directory)
                }
                return directory
            }
            for directory in created { SandboxLedger.current.made(.cgroup(directory: directory)) }
            let cgroup = JobCgroup(version: host.version, directories: directories, limits: limits)
            try cgroup.applyLimits()
            return cgroup
        } catch {
            for directory in created where rmdir(directory) == 0 {
                SandboxLedger.current.gone(.cgroup(directory: directory))
            }
            throw error
        }
    }

    func applyLimits() throws(CgroupError) {
        let memory = directories.memory
        let quota = max(1000, UInt64(limits.cpuMillis) * Self.cpuPeriodMicroseconds / 1000)
        switch version {
        case .v1:
            try CgroupFile.write(String(limits.memoryBytes), to: memory + "/memory.limit_in_bytes")
            // Only there with swap accounting; may not be below memory.limit_in_bytes, so it goes second.
            let swap = memory + "/memory.memsw.limit_in_bytes"
            if CgroupFile.exists(swap) { try CgroupFile.write(String(limits.memoryBytes), to: swap) }
            try CgroupFile.write(String(limits.pids), to: directories.pids + "/pids.max")
            try CgroupFile.write(String(Self.cpuPeriodMicroseconds), to: directories.cpu + "/cpu.cfs_period_us")
            try CgroupFile.write(String(quota), to: directories.cpu + "/cpu.cfs_quota_us")
        case .v2:
            try CgroupFile.write(String(limits.memoryBytes), to: memory + "/memory.max")
            // v2 counts swap separately: allowing none keeps memory.max the whole budget.
            let swap = memory + "/memory.swap.max"
            if CgroupFile.exists(swap) { try CgroupFile.write("0", to: swap) }
            try CgroupFile.write(String(limits.pids), to: directories.pids + "/pids.max")
            try CgroupFile.write("\(quota) \(Self.cpuPeriodMicroseconds)", to: directories.cpu + "/cpu.max")
        }
    }

    /// CPU time used so far by all processes in the cgroup, or nil when it cannot be read.
    func cpuTimeMicroseconds() -> UInt64? {
        switch version {
        case .v1: CgroupFile.number(directories.cpuacct + "/cpuacct.usage").map { $0 / 1000 }
        case .v2: CgroupFile.keyed(directories.cpu + "/cpu.stat", "usage_usec")
        }
    }

    /// CPU time, peak memory, OOM kills and refused forks, as the kernel counted them.
    func usage() -> CgroupUsage {
        let memory = directories.memory
        let pidsLimitHits = CgroupFile.keyed(directories.pids + "/pids.events", "max") ?? 0
        switch version {
        case .v1:
            return CgroupUsage(
                cpuTimeMicroseconds: cpuTimeMicroseconds(),
                peakMemoryBytes: CgroupFile.number(memory + "/memory.max_usage_in_bytes"),
                oomKills: CgroupFile.keyed(memory + "/memory.oom_control", "oom_kill"),
                memoryLimitHits: CgroupFile.number(memory + "/memory.failcnt") ?? 0,
                pidsLimitHits: pidsLimitHits
            )
        case .v2:
            return CgroupUsage(
                cpuTimeMicroseconds: cpuTimeMicroseconds(),
                peakMemoryBytes: CgroupFile.number(memory + "/memory.peak"),
                oomKills: CgroupFile.keyed(memory + "/memory.events", "oom_kill"),
                memoryLimitHits: CgroupFile.keyed(memory + "/memory.events", "max") ?? 0,
                pidsLimitHits: pidsLimitHits
            )
        }
    }

    /// The pids in the job's cgroup (on v1, from the freezer hierarchy, which every process joins).
    func processes() -> [pid_t] {
        CgroupFile.pids(directories.freezer + "/cgroup.procs")
    }

    /// SIGKILLs every process in the cgroup without letting any of them fork meanwhile: v2 writes
    /// `cgroup.kill` where the kernel has it (5.14+); otherwise the cgroup is frozen, every process
    /// in it killed, and thawed so the kills land. Safe to call any number of times, from any thread.
    func killAll() {
        let directory = directories.freezer
        if version == .v2, (try? CgroupFile.write("1", to: directory + "/cgroup.kill")) != nil { return }
        let control = directory + (version == .v1 ? "/freezer.state" : "/cgroup.freeze")
        let froze = (try? CgroupFile.write(version == .v1 ? "FROZEN" : "1", to: control)) != nil
        if froze {
            // Freezing is asynchronous; wait briefly for it, then kill regardless.
            let state = directory + (version == .v1 ? "/freezer.state" : "/cgroup.events")
            let frozen = version == .v1 ? "FROZEN" : "frozen 1"
            let end = ContinuousClock.now + .milliseconds(100)
            while !(CgroupFile.read(state) ?? "").contains(frozen) && ContinuousClock.now < end { usleep(1000) }
        }
        for pid in processes() { Glibc.kill(pid, SIGKILL) }
        if froze { try? CgroupFile.write(version == .v1 ? "THAWED" : "0", to: control) }
    }

    /// Kills what is left, waits for the cgroup to empty and removes its directories, retrying
    /// `rmdir` while the kernel still counts exiting processes (EBUSY), for at most `timeout`.
    func remove(within timeout: Duration = .seconds(3)) throws(CgroupError) {
        let end = ContinuousClock.now + timeout
        var remaining = allDirectories
        var lastError: CgroupError?
        // The job's last processes are usually still exiting when it ends: retry soon, then less
        // often (a fixed 5 ms wait was a fifth of a short job's whole time through the node).
        var pause: UInt32 = 200
        while true {
            if !processes().isEmpty { killAll() }
            remaining = remaining.filter { directory in
                if rmdir(directory) == 0 || errno == ENOENT {
                    SandboxLedger.current.gone(.cgroup(directory: directory))
                    return false
                }
                lastError = .system("remove", directory)
                return true
            }
            if remaining.isEmpty { return }
            guard ContinuousClock.now < end else {
                throw lastError ?? CgroupError("cannot remove \(remaining.joined(separator: ", "))")
            }
            usleep(pause)
            pause = min(pause * 2, 5000)
        }
    }
}
