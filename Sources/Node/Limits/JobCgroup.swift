import Foundation
import Glibc
import Synchronization

/// The cgroup of one job, for every runtime: created with its limits before the sandbox starts,
/// polled and killed while it runs, read after it ended, then killed and removed. On v1 it is one
/// directory per hierarchy (memory, pids, cpu, cpuacct, freezer; co-mounted controllers share
/// one), on v2 a single directory.
///
/// The process runtime creates it under ``CgroupHost``'s parents (``create(on:name:limits:)``); an
/// OCI runtime is handed its path and joins it (``placed(at:version:)``, then ``make(_:)``), and may
/// create it in the hierarchies the node does not limit as well: removal sweeps those too.
struct JobCgroup: Sendable {
    /// v1: one directory per hierarchy; v2: one directory.
    let version: CgroupVersion
    /// The job's directory, by controller.
    let directories: ControllerDirectories
    /// For a cgroup an OCI runtime joins: its path below each hierarchy's root (`hangar/<id>`), which
    /// removal sweeps from every hierarchy; nil when only ``directories`` exist.
    let relativePath: String?
    /// Where the directories are noted while they exist (the node's ``NodeResources/ledger``).
    let ledger: SandboxLedger?

    /// Where the cgroup file systems are mounted, for OCI runtimes.
    static let mountPoint = "/sys/fs/cgroup"
    /// CFS period for the CPU quota.
    static let cpuPeriodMicroseconds = CgroupLimits.defaultCPUPeriodMicroseconds
    /// Makes names unique within this node process.
    private static let sequence = Atomic<UInt64>(0)

    /// A cgroup at these directories (made or not), whose making and removal are noted in `ledger`.
    init(
        version: CgroupVersion,
        directories: ControllerDirectories,
        relativePath: String? = nil,
        ledger: SandboxLedger? = nil
    ) {
        self.version = version
        self.directories = directories
        self.relativePath = relativePath
        self.ledger = ledger
    }

    /// The distinct directories, sorted.
    var allDirectories: [String] { directories.distinct }

    /// The files a process writes its pid into to join the job's cgroup (one per v1 hierarchy).
    var procsFiles: [String] { allDirectories.map { $0 + "/cgroup.procs" } }

    /// `linux.cgroupsPath` for an OCI spec; nil for a cgroup not placed by path.
    var cgroupsPath: String? { relativePath.map { "/" + $0 } }

    /// Creates the job's cgroup under `host`'s parents and sets memory (plus memory+swap), pids and
    /// CPU bandwidth limits, and notes it in `ledger`. On failure nothing is left behind.
    /// - Parameter name: the job id; it is sanitized and made unique as `<name>.<node pid>.<n>`.
    static func create(
        on host: CgroupHost,
        name: String,
        limits: JobLimits,
        ledger: SandboxLedger?
    ) throws(CgroupError) -> JobCgroup {
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
            for directory in created { ledger?.made(.cgroup(directory: directory)) }
            let cgroup = JobCgroup(version: host.version, directories: directories, ledger: ledger)
            try cgroup.applyLimits(CgroupLimits(limits))
            return cgroup
        } catch {
            for directory in created where rmdir(directory) == 0 {
                ledger?.gone(.cgroup(directory: directory))
            }
            throw error
        }
    }

    /// The version of the hierarchies mounted at ``mountPoint``, or nil when neither v2 nor a v1
    /// memory hierarchy is there.
    static func mountedVersion() -> CgroupVersion? {
        if CgroupFile.exists(mountPoint + "/cgroup.controllers") { return .v2 }
        if CgroupFile.exists(mountPoint + "/memory/memory.limit_in_bytes") { return .v1 }
        return nil
    }

    /// The cgroup at `relativePath` below the root of each hierarchy at ``mountPoint``, not yet made;
    /// its making and removal are noted in `ledger`.
    static func placed(at relativePath: String, version: CgroupVersion, ledger: SandboxLedger?) -> JobCgroup {
        let directories = ControllerDirectories { controller in
            switch version {
            case .v1: "\(mountPoint)/\(controller.rawValue)/\(relativePath)"
            case .v2: "\(mountPoint)/\(relativePath)"
            }
        }
        return JobCgroup(version: version, directories: directories, relativePath: relativePath, ledger: ledger)
    }

    /// Makes the directories of a ``placed(at:version:)`` cgroup with their parents (on v2 every
    /// ancestor hands the controllers down to its children) and writes `limits` into them.
    func make(_ limits: CgroupLimits) throws(CgroupError) {
        switch version {
        case .v1:
            for directory in allDirectories {
                let made = !CgroupFile.exists(directory)
                try Self.makeDirectories(directory, enablingControllersFrom: nil)
                if made { ledger?.made(.cgroup(directory: directory)) }
            }
        case .v2:
            let directory = directories.memory
            let made = !CgroupFile.exists(directory)
            try Self.makeDirectories(directory, enablingControllersFrom: Self.mountPoint)
            if made { ledger?.made(.cgroup(directory: directory)) }
        }
        try applyLimits(limits)
    }

    /// `mkdir -p`; with `root`, each directory from `root` down first enables the v2 controllers
    /// for its children.
    private static func makeDirectories(_ path: String, enablingControllersFrom root: String?) throws(CgroupError) {
        var current = ""
        for component in path.split(separator: "/") {
            if let root, current.hasPrefix(root) {
                let enable = CgroupController.unified.map { "+" + $0.rawValue }.joined(separator: " ")
                try CgroupFile.write(enable, to: current + "/cgroup.subtree_control")
            }
            current += "/" + component
            guard mkdir(current, 0o755) == 0 || errno == EEXIST else { throw .system("create", current) }
        }
    }

    /// Writes memory (plus memory+swap), pids and CPU bandwidth limits; nil values as "no limit".
    func applyLimits(_ limits: CgroupLimits) throws(CgroupError) {
        let memory = directories.memory
        let pids = limits.pids.map { String($0) } ?? "max"
        switch version {
        case .v1:
            let bytes = limits.memoryBytes.map { String($0) } ?? "-1"
            try CgroupFile.write(bytes, to: memory + "/memory.limit_in_bytes")
            // Only there with swap accounting; may not be below memory.limit_in_bytes, so it goes second.
            let swap = memory + "/memory.memsw.limit_in_bytes"
            if CgroupFile.exists(swap) { try CgroupFile.write(bytes, to: swap) }
            try CgroupFile.write(pids, to: directories.pids + "/pids.max")
            try CgroupFile.write(String(limits.cpuPeriodMicroseconds), to: directories.cpu + "/cpu.cfs_period_us")
            let quota = limits.cpuQuotaMicroseconds.map { String($0) } ?? "-1"
            try CgroupFile.write(quota, to: directories.cpu + "/cpu.cfs_quota_us")
        case .v2:
            try CgroupFile.write(limits.memoryBytes.map { String($0) } ?? "max", to: memory + "/memory.max")
            // v2 counts swap separately: allowing none keeps memory.max the whole budget.
            let swap = memory + "/memory.swap.max"
            if CgroupFile.exists(swap) { try CgroupFile.write("0", to: swap) }
            try CgroupFile.write(pids, to: directories.pids + "/pids.max")
            let quota = limits.cpuQuotaMicroseconds.map { String($0) } ?? "max"
            try CgroupFile.write("\(quota) \(limits.cpuPeriodMicroseconds)", to: directories.cpu + "/cpu.max")
        }
    }

    /// CPU time used so far by all processes in the cgroup, or nil when it cannot be read.
    func cpuTimeMicroseconds() -> UInt64? {
        switch version {
        case .v1: CgroupFile.number(directories.cpuacct + "/cpuacct.usage").map { $0 / 1000 }
        case .v2: CgroupFile.keyed(directories.cpu + "/cpu.stat", "usage_usec")
        }
    }

    /// The memory the cgroup uses now (page cache and tmpfs included); nil if it cannot be read.
    func currentMemoryBytes() -> UInt64? {
        switch version {
        case .v1: CgroupFile.number(directories.memory + "/memory.usage_in_bytes")
        case .v2: CgroupFile.number(directories.memory + "/memory.current")
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
}
