import Foundation
import Glibc

/// What the container's cgroup counted while the job ran.
struct OCICgroupUsage: Sendable, Equatable {
    var cpuTimeMicroseconds: UInt64 = 0
    var peakMemoryBytes: UInt64 = 0
    /// Processes the kernel's OOM killer killed in the cgroup.
    var oomKills: UInt64 = 0
    /// Forks and clones refused because the pids limit was reached (`pids.events` max). Under gVisor
    /// these are the sandbox's own host threads (the sentry's, and a stub per guest thread on ptrace).
    var pidsLimitHits: UInt64 = 0
}

/// The limits the node writes into a job's cgroup.
struct OCICgroupLimits: Sendable, Equatable {
    var memoryBytes: Int64
    var pids: Int64
    var cpuQuotaMicroseconds: Int64
    var cpuPeriodMicroseconds: UInt64

    init(_ resources: OCIResources) {
        memoryBytes = resources.memory?.limit ?? -1
        pids = resources.pids?.limit ?? -1
        cpuQuotaMicroseconds = resources.cpu?.quota ?? -1
        cpuPeriodMicroseconds = resources.cpu?.period ?? 100_000
    }
}

/// A job's cgroup, owned by the node: created with the job's limits before the OCI runtime starts
/// (the runtime then joins it; runsc leaves a cgroup it did not create in place, and does not write
/// limits into it), read after the container exited, and swept at the end: whatever process is
/// still inside is killed and every directory of the path, in every hierarchy, is removed.
///
/// On cgroup v1 the memory, cpu, cpuacct and pids hierarchies are used; on v2 the unified one.
struct OCICgroup: Sendable {
    enum Layout: Sendable, Equatable {
        /// Separate hierarchies under `/sys/fs/cgroup/<controller>`.
        case v1
        /// One hierarchy at `/sys/fs/cgroup`.
        case v2
    }

    static let mountPoint = "/sys/fs/cgroup"
    let layout: Layout
    /// Below the hierarchy root, without a leading slash: `hangar/<container id>`.
    let relativePath: String

    /// The layout of this machine's cgroups, or nil when neither v2 nor a v1 memory hierarchy is mounted.
    static func detectLayout() -> Layout? {
        if access(mountPoint + "/cgroup.controllers", F_OK) == 0 { return .v2 }
        if access(mountPoint + "/memory/memory.limit_in_bytes", F_OK) == 0 { return .v1 }
        return nil
    }

    /// `linux.cgroupsPath` for the spec.
    var cgroupsPath: String { "/" + relativePath }

    private func directory(_ controller: String) -> String {
        switch layout {
        case .v1: return "\(Self.mountPoint)/\(controller)/\(relativePath)"
        case .v2: return "\(Self.mountPoint)/\(relativePath)"
        }
    }

    /// Creates the cgroup and writes `limits` into it.
    func create(_ limits: OCICgroupLimits) throws(OCIRuntimeError) {
        switch layout {
        case .v1:
            for controller in ["memory", "cpu", "cpuacct", "pids"] {
                let made = access(directory(controller), F_OK) != 0
                try Self.makeDirectories(directory(controller))
                if made { SandboxLedger.current.made(.cgroup(directory: directory(controller))) }
            }
            let memory = directory("memory")
            try Self.write(String(limits.memoryBytes), to: memory + "/memory.limit_in_bytes")
            if access(memory + "/memory.memsw.limit_in_bytes", F_OK) == 0 {
                try Self.write(String(limits.memoryBytes), to: memory + "/memory.memsw.limit_in_bytes")
            }
            try Self.write(limits.pids < 0 ? "max" : String(limits.pids), to: directory("pids") + "/pids.max")
            try Self.write(String(limits.cpuPeriodMicroseconds), to: directory("cpu") + "/cpu.cfs_period_us")
            try Self.write(String(limits.cpuQuotaMicroseconds), to: directory("cpu") + "/cpu.cfs_quota_us")
        case .v2:
            // Each ancestor must hand the controllers down to its children.
            var path = Self.mountPoint
            for component in relativePath.split(separator: "/") {
                try Self.write("+memory +pids +cpu", to: path + "/cgroup.subtree_control")
                path += "/" + component
                let made = access(path, F_OK) != 0
                try Self.makeDirectories(path)
                if made && path == Self.mountPoint + "/" + relativePath {
                    SandboxLedger.current.made(.cgroup(directory: path))
                }
            }
            try Self.write(String(limits.memoryBytes), to: path + "/memory.max")
            if access(path + "/memory.swap.max", F_OK) == 0 { try Self.write("0", to: path + "/memory.swap.max") }
            try Self.write(limits.pids < 0 ? "max" : String(limits.pids), to: path + "/pids.max")
            let quota = limits.cpuQuotaMicroseconds < 0 ? "max" : String(limits.cpuQuotaMicroseconds)
            try Self.write("\(quota) \(limits.cpuPeriodMicroseconds)", to: path + "/cpu.max")
        }
    }

    /// CPU time, peak memory, OOM kills and refused forks; fields that cannot be read stay 0.
    func usage() -> OCICgroupUsage {
        var usage = OCICgroupUsage()
        switch layout {
        case .v1:
            usage.cpuTimeMicroseconds = (Self.number(directory("cpuacct") + "/cpuacct.usage") ?? 0) / 1000
            usage.peakMemoryBytes = Self.number(directory("memory") + "/memory.max_usage_in_bytes") ?? 0
            usage.oomKills = Self.field("oom_kill", in: directory("memory") + "/memory.oom_control") ?? 0
            usage.pidsLimitHits = Self.field("max", in: directory("pids") + "/pids.events") ?? 0
        case .v2:
            let path = directory("")
            usage.cpuTimeMicroseconds = Self.field("usage_usec", in: path + "/cpu.stat") ?? 0
            usage.peakMemoryBytes = Self.number(path + "/memory.peak") ?? 0
            usage.oomKills = Self.field("oom_kill", in: path + "/memory.events") ?? 0
            usage.pidsLimitHits = Self.field("max", in: path + "/pids.events") ?? 0
        }
        return usage
    }

    /// CPU time used so far by every process in the cgroup, or nil when it cannot be read.
    func cpuTimeMicroseconds() -> UInt64? {
        switch layout {
        case .v1: return Self.number(directory("cpuacct") + "/cpuacct.usage").map { $0 / 1000 }
        case .v2: return Self.field("usage_usec", in: directory("") + "/cpu.stat")
        }
    }

    /// SIGKILLs every process in the cgroup, in every hierarchy.
    func killAll() {
        for path in existingDirectories() {
            for pid in Self.processes(in: path) { kill(pid, SIGKILL) }
        }
    }

    /// Kills whatever is left in the cgroup and removes its directory from every hierarchy (the
    /// runtimes also create it in hierarchies the node does not limit). Returns what could not be
    /// removed; empty when the cgroup is gone.
    func destroy() -> [String] {
        var leftovers: [String] = []
        let existing = existingDirectories()
        // What the runtime removed itself (runc deletes a container's cgroup with it) is gone too:
        // without this, a ledger kept listing the cgroups of every killed-and-deleted container.
        for path in candidateDirectories() where !existing.contains(path) && access(path, F_OK) != 0 {
            SandboxLedger.current.gone(.cgroup(directory: path))
        }
        for path in existing {
            var failure: Int32 = 0
            var pause: UInt32 = 200
            let end = ContinuousClock.now + .seconds(2)
            while true {
                for pid in Self.processes(in: path) { kill(pid, SIGKILL) }
                failure = rmdir(path) == 0 ? 0 : errno
                if failure != EBUSY || ContinuousClock.now >= end { break }
                usleep(pause)  // the killed processes are still exiting: retry soon, then less often
                pause = min(pause * 2, 20_000)
            }
            if failure != 0 && failure != ENOENT {
                leftovers.append("cannot remove cgroup \(path): \(String(cString: strerror(failure)))")
            } else {
                SandboxLedger.current.gone(.cgroup(directory: path))
            }
        }
        return leftovers
    }

    /// Where this cgroup's directory is in every hierarchy, whether it exists or not (on v1 one
    /// hierarchy may be reached through two names, such as `cpu` and `cpuacct`).
    func candidateDirectories() -> [String] {
        switch layout {
        case .v2:
            return [Self.mountPoint + "/" + relativePath]
        case .v1:
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: Self.mountPoint)) ?? []
            return entries.sorted().map { Self.mountPoint + "/" + $0 + "/" + relativePath }
        }
    }

    /// Directories of this cgroup that exist, in any hierarchy.
    func existingDirectories() -> [String] {
        let roots: [String]
        switch layout {
        case .v2:
            roots = [Self.mountPoint]
        case .v1:
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: Self.mountPoint)) ?? []
            roots = entries.sorted().map { Self.mountPoint + "/" + $0 }
        }
        var seen = Set<String>()
        var found: [String] = []
        for root in roots {
            let path = root + "/" + relativePath
            // cpu and cpuacct are often one hierarchy reached through two names.
            let resolved = (try? FileManager.default.destinationOfSymbolicLink(atPath: root)) ?? root
            guard access(path, F_OK) == 0, seen.insert(resolved).inserted else { continue }
            found.append(path)
        }
        return found
    }

    private static func processes(in path: String) -> [pid_t] {
        guard let text = read(path + "/cgroup.procs") else { return [] }
        return text.split(separator: "\n").compactMap { pid_t($0) }.filter { $0 > 1 }
    }

    private static func makeDirectories(_ path: String) throws(OCIRuntimeError) {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw .system("create cgroup directory", current)
            }
        }
    }

    private static func write(_ value: String, to path: String) throws(OCIRuntimeError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system("open", path) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        var written: Int
        repeat { written = Glibc.write(fd, bytes, bytes.count) } while written < 0 && errno == EINTR
        guard written == bytes.count else { throw .system("write \"\(value)\" to", path) }
    }

    static func read(_ path: String) -> String? {
        CgroupFile.read(path)
    }

    private static func number(_ path: String) -> UInt64? {
        read(path).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// The value of a `key value` line in a flat-keyed file such as `memory.events`.
    private static func field(_ key: String, in path: String) -> UInt64? {
        guard let text = read(path) else { return nil }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2 && parts[0] == key { return UInt64(parts[1]) }
        }
        return nil
    }
}

/// The job's CPU-time limit, over the whole container: the monitor polls the cgroup's CPU time and
/// kills everything in it at the limit. RLIMIT_CPU alone counts one process at a time (a job that
/// spreads its work over short-lived processes never reaches it), and runsc does not enforce it.
/// Under gVisor the sandbox's own CPU time (the sentry's and gofer's) counts too.
struct OCICPUTimeContainment: SandboxContainment {
    static let interval = Duration.milliseconds(20)

    let cgroup: OCICgroup
    let limitMicroseconds: UInt64

    var checkInterval: Duration? { Self.interval }

    func check() -> SandboxLimit? {
        guard let used = cgroup.cpuTimeMicroseconds() else { return nil }
        return used >= limitMicroseconds ? .cpuTime : nil
    }

    func killAll() {
        cgroup.killAll()
    }
}
