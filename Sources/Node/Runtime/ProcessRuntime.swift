import Foundation
import Glibc
import HangarShared

/// Runs a job's argv inside bubblewrap: every namespace unshared (no network but loopback), all
/// capabilities dropped, uid/gid 65534 (on the host a uid of the job's own from ``SandboxUsers``,
/// never root), a read-only
/// view of the host's `/usr` and a few `/etc` files, and a size-bounded private tmpfs at `/tmp`.
/// Killing the outer `bwrap` tears down the job's pid namespace, so nothing the job started
/// (daemons included) survives it.
///
/// Every limit is enforced by the kernel: memory (without swap), pids and CPU bandwidth by a
/// per-job cgroup (v1 or v2, see ``CgroupHost``) that the sandbox joins before bubblewrap starts;
/// open files, file size and core dumps by rlimits set in the same shim (``LimitShim``); the CPU
/// time by polling the cgroup; syscalls by a seccomp filter (``SeccompFilter``). Without usable
/// cgroups the runtime refuses to run jobs rather than run them unlimited.
public struct ProcessRuntime: Runtime {
    /// Always "process".
    public let name = "process"
    /// Where the `bwrap` binary is.
    public let bubblewrapPath: String
    /// The node's uids, subnets and cgroups.
    public let resources: NodeResources
    /// Where job cgroups go, or why there are none (then every job is refused).
    var cgroups: Result<CgroupHost, CgroupError> { resources.cgroups }
    /// Directory templates jobs may ask for; nil for `host` only.
    public let templates: TemplateStore?
    /// Host files bound read-only into every sandbox, over everything else: the wasm runtime's
    /// worker binary (``WasmRuntime``). None for process jobs.
    var programBinds: [SandboxBind] = []

    /// Wall-clock limit when the spec's `timeoutMs` is 0.
    public static let defaultTimeout = JobLimits.defaultTimeout
    /// Per-stream output cap when the spec's `outputBytes` is 0.
    public static let defaultOutputBytes = JobLimits.defaultOutputBytes
    /// Size of the `/tmp` tmpfs and largest file when the spec's `fileSizeBytes` is 0.
    public static let defaultScratchBytes = JobLimits.defaultFileSizeBytes
    /// `PATH` inside the sandbox unless the job sets its own.
    public static let defaultPath = "/usr/local/bin:/usr/bin:/bin"
    // A root node runs bubblewrap, and so the job, as an unprivileged host uid and gid of the
    // job's own (``SandboxUsers``). Run as root, bubblewrap would map the job's uid onto host root,
    // whose uid alone opens the host's sysctls (`core_pattern`), root-only `/proc` files and
    // bound-in root-only files, capabilities or not; run as one shared uid, every job would draw on
    // the same per-user kernel budgets. A node that is not root runs bubblewrap as itself.

    /// util-linux `nsenter`, which puts an allowlist job's sandbox into its network namespace.
    static let nsenterPath = "/usr/bin/nsenter"

    /// Built once: the filter only depends on the CPU architecture.
    static let seccomp = Result { () throws(SeccompError) in try SeccompFilter.standard() }

    /// A runtime that runs jobs with the `bwrap` at `bubblewrapPath`, as uids and in cgroups of
    /// `resources`.
    public init(
        bubblewrapPath: String = "/usr/bin/bwrap",
        templates: TemplateStore? = nil,
        resources: NodeResources = .standard
    ) {
        self.bubblewrapPath = bubblewrapPath
        self.templates = templates
        self.resources = resources
    }

    /// Available iff `bwrap` runs, cgroups can be created, the shim's `sh` and `prlimit` exist, and
    /// a trivial sandbox under all limits runs with the seccomp filter in force, within 5 s. The
    /// detail reads like "bubblewrap 0.8.0, cgroup v1, seccomp".
    public func probe() async -> RuntimeProbe {
        guard access(bubblewrapPath, X_OK) == 0 else {
            return RuntimeProbe(available: false, detail: "bubblewrap not found at \(bubblewrapPath)")
        }
        let versionCommand = SandboxCommand(
            executable: bubblewrapPath,
            arguments: ["bwrap", "--version"],
            timeout: .seconds(5),
            outputLimit: 4096,
            ledger: resources.ledger
        )
        let version: String
        do {
            let result = try await SandboxProcess.run(versionCommand)
            let output = String(decoding: result.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard result.termination == .exited(0), result.killReason == nil, !output.isEmpty else {
                return RuntimeProbe(
                    available: false,
                    detail: "\(bubblewrapPath) --version failed: \(result.termination)"
                )
            }
            version = output
        } catch {
            return RuntimeProbe(available: false, detail: error.description)
        }
        if let missing = missingPrerequisite() {
            return RuntimeProbe(available: false, detail: "\(version) but \(missing)")
        }
        var trial = Hangar_V1_JobSpec()
        // grep exits 1 unless this process runs in seccomp filter mode (2).
        trial.argv = ["/bin/sh", "-c", "grep -q '^Seccomp:[[:space:]]*2$' /proc/self/status"]
        trial.limits.timeoutMs = 5000
        let outcome = await run(trial, jobID: "probe")
        guard outcome.status == .succeeded else {
            let reason =
                outcome.status == .failed && outcome.exitCode == 1
                ? "the seccomp filter is not in force inside the sandbox"
                : outcome.message.isEmpty ? "status \(outcome.status)" : outcome.message
            return RuntimeProbe(available: false, detail: "\(version) cannot create a sandbox here: \(reason)")
        }
        let host = (try? cgroups.get()).map { "cgroup \($0.version.rawValue)" } ?? "no cgroups"
        return RuntimeProbe(available: true, detail: "\(version), \(host), seccomp")
    }

    /// Why jobs cannot run with all their limits here, or nil when they can.
    private func missingPrerequisite() -> String? {
        if case .failure(let error) = cgroups {
            return "cgroups cannot be used, so no memory, pids or CPU limits: \(error.description)"
        }
        if case .failure(let error) = Self.seccomp { return error.description }
        for tool in [LimitShim.shellPath, LimitShim.prlimitPath, LimitShim.setprivPath] where access(tool, X_OK) != 0 {
            return "\(tool) is missing (needed to apply rlimits, join the cgroup and drop root)"
        }
        return nil
    }

    /// The bubblewrap arguments this runtime gives `spec` (template root, binds, namespaces, seccomp,
    /// `/tmp` tmpfs, uid) and the descriptors they refer to, which go to 3, 4, … in order; the caller
    /// closes them. For benchmarks: the sandbox alone, without the node's cgroup, rlimit shim, user
    /// switch, monitoring and clean-up around it.
    public func bubblewrapInvocation(for requested: Hangar_V1_JobSpec) throws -> (arguments: [String], files: [Int32]) {
        guard case .success(let filter) = Self.seccomp else { throw InvalidJob(message: "no seccomp filter") }
        let resolved = try Template.resolve(requested, in: templates)
        let invocation = try BubblewrapInvocation(
            spec: resolved.spec,
            limits: JobLimits(requested.limits),
            seccomp: filter,
            root: try resolved.template.layout()
        )
        return (invocation.arguments, invocation.files)
    }

    /// Runs the job in a fresh sandbox under its limits, and kills the whole sandbox on timeout,
    /// CPU-time limit, output overflow or task cancellation.
    public func run(_ requested: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        guard requested.network.mode == .networkAllowlist else {
            return await run(requested, jobID: jobID, network: nil)
        }
        let network: JobNetwork
        do {
            network = try await JobNetwork.create(
                egress: try Egress(network: requested.network, grants: requested.grants),
                upstream: resources.dnsUpstream,
                subnets: resources.subnets,
                ledger: resources.ledger
            )
        } catch {
            return .error("cannot set up the job's network: \(error.description)")
        }
        let outcome = await run(requested, jobID: jobID, network: network)
        await network.remove()
        return outcome
    }

    /// Runs the job as a host user of its own (see ``SandboxUsers``) when the node is root.
    private func run(_ requested: Hangar_V1_JobSpec, jobID: String, network: JobNetwork?) async -> RunOutcome {
        guard geteuid() == 0 else {
            return await run(requested, jobID: jobID, network: network, user: nil).outcome
        }
        guard let user = resources.users.acquire() else {
            return .error("refusing to run the job: all \(resources.users.count) sandbox users are in use")
        }
        let (outcome, processesGone) = await run(requested, jobID: jobID, network: network, user: user)
        // A uid whose processes may still live is never handed to another job.
        if processesGone { resources.users.release(user) }
        return outcome
    }

    /// `processesGone`: no process of the job can be left (none started, or its cgroup is removed).
    private func run(
        _ requested: Hangar_V1_JobSpec,
        jobID: String,
        network: JobNetwork?,
        user: UInt32?
    ) async -> (outcome: RunOutcome, processesGone: Bool) {
        let clock = ContinuousClock()
        let began = clock.now
        if Task.isCancelled {
            var outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled before the sandbox started"
            return (outcome, true)
        }
        if let missing = missingPrerequisite() { return (.error("refusing to run the job: \(missing)"), true) }
        guard case .success(let host) = cgroups, case .success(let filter) = Self.seccomp else {
            return (.error("refusing to run the job: cgroups or seccomp are unavailable"), true)
        }
        let limits = JobLimits(requested.limits)
        let spec: Hangar_V1_JobSpec
        let root: TemplateRootfs?
        do throws(TemplateError) {
            let resolved = try Template.resolve(requested, in: templates)
            (root, spec) = (try resolved.template.layout(), resolved.spec)
        } catch {
            return (.error(error.description), true)
        }
        let scratch: JobScratch?
        do {
            scratch = try Self.scratch(
                for: spec,
                jobID: jobID,
                limits: limits,
                owner: user ?? geteuid(),
                ledger: resources.ledger
            )
        } catch {
            return (.error(error.description), true)
        }
        // The grants as one prepared view where they can be (``GrantViews``), given back at the end.
        // Planned once (a plan checks every path on the host); one that fails is planned again by
        // the invocation, which names the fault.
        let grants = try? GrantMounts(spec.grants)
        let view = grants.flatMap { mounts in
            GrantViews.eligible(mounts, template: root) ? resources.grantViews.acquire(mounts) : nil
        }
        defer { if let view { resources.grantViews.release(view) } }
        let invocation: BubblewrapInvocation
        do {
            invocation = try BubblewrapInvocation(
                spec: spec,
                limits: limits,
                seccomp: filter,
                root: root,
                scratch: scratch?.path,
                binds: programBinds,
                grants: grants,
                grantView: view
            )
        } catch {
            _ = scratch?.remove()
            return (.error(error.message), true)
        }
        let cgroup: JobCgroup
        do {
            cgroup = try JobCgroup.create(on: host, name: jobID, limits: limits, ledger: resources.ledger)
        } catch {
            for fd in invocation.files { close(fd) }
            _ = scratch?.remove()
            return (.error("cannot create the job's cgroup: \(error.description)"), true)
        }
        let shim = LimitShim(
            procsFiles: cgroup.procsFiles,
            limits: limits,
            program: bubblewrapPath,
            arguments: ["bwrap"] + invocation.arguments,
            user: user
        )
        // nsenter execs the shim in the job's network namespace: same pid, so wait and kill hold.
        let entered =
            network.map {
                (
                    executable: Self.nsenterPath,
                    arguments: ["nsenter", "--net=\($0.path)", "--", shim.executable] + shim.arguments.dropFirst()
                )
            } ?? (executable: shim.executable, arguments: shim.arguments)
        var command = SandboxCommand(
            executable: entered.executable,
            arguments: entered.arguments,
            stdin: spec.stdin,
            timeout: limits.timeout,
            outputLimit: limits.outputBytes,
            inheritedFiles: invocation.files,
            containment: CgroupContainment(cgroup, cpuTime: limits.cpuTime)
        )
        command.tap = OutputTap.current
        command.ledger = resources.ledger
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        for fd in invocation.files { close(fd) }  // the process holds its own copies
        let prepared = clock.now - began
        var outcome: RunOutcome
        do throws(SandboxSpawnError) {
            let result = try await spawned.get().waitKillingOnCancellation()
            // Nothing of the job may outlive it; then the counters are final.
            if !cgroup.processes().isEmpty { await cgroup.killAll() }
            outcome = Self.outcome(of: result, usage: cgroup.usage(), limits: limits, program: spec.argv[0])
            outcome.startMilliseconds = JobLimits.milliseconds(prepared + result.spawnTime)
        } catch {
            outcome = .error("cannot start bubblewrap: \(error.description)")
        }
        var processesGone = true
        do {
            try await cgroup.remove()
        } catch {
            processesGone = false
            outcome.message += (outcome.message.isEmpty ? "" : "; ") + "the job's cgroup was not removed: \(error)"
        }
        if let scratch {
            outcome.collectFiles(from: scratch, spec: spec, capBytes: limits.outputBytes)
            if let problem = scratch.remove() { outcome.appendMessage(problem) }
        }
        return (outcome, processesGone)
    }

    /// A host tmpfs for the job's `/tmp` when it asks for files back, else nil (bubblewrap's own
    /// tmpfs is cheaper).
    private static func scratch(
        for spec: Hangar_V1_JobSpec,
        jobID: String,
        limits: JobLimits,
        owner: UInt32,
        ledger: SandboxLedger
    ) throws(ScratchError)
        -> JobScratch?
    {
        guard !spec.filesOut.isEmpty else { return nil }
        try JobScratch.checkFilesOut(spec)
        return try JobScratch.create(
            name: jobID,
            sizeBytes: limits.fileSizeBytes,
            owner: (owner, owner),
            ledger: ledger
        )
    }
}

/// A host file bound read-only into a sandbox at `destination`.
struct SandboxBind: Sendable, Equatable {
    var source: String
    var destination: String
}

/// A spec that cannot run in the process runtime; `message` says why.
struct InvalidJob: Error {
    var message: String
}

/// The `bwrap` arguments for one job, and the descriptors `--file` reads from (passed as 3, 4, …).
struct BubblewrapInvocation {
    private(set) var arguments: [String] = []
    private(set) var files: [Int32] = []
    /// The number the first of ``files`` has in bubblewrap.
    let firstDescriptor: Int32

    /// Host directories that are symlinks into `/usr` on merged-/usr systems.
    static let systemDirectories = ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"]
    /// What programs need from the host's `/etc`, bound read-only when present. Accounts, host
    /// names and resolvers are not the host's: see ``SandboxEtc``.
    static let etcFiles = [
        "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl",
        "/etc/ca-certificates", "/etc/localtime", "/etc/fonts",
    ]
    static let maxFiles = 256
    /// The uid and gid the job runs as inside the sandbox.
    static let sandboxID: UInt32 = 65534

    /// Masks what the OCI runtime spec masks (see ``SandboxEtc/maskedPaths``) in the sandbox's own
    /// `/proc`: a file gets the host's `/dev/null` bound over it (on a `nodev` mount, so it cannot
    /// even be opened), a directory an empty read-only tmpfs. The sandbox has no `/sys`. bubblewrap
    /// itself makes `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq` and `/proc/bus` read-only;
    /// `/proc/fs` is added here. Paths this kernel lacks are skipped.
    static let procMasks: [String] = {
        var arguments: [String] = []
        for path in SandboxEtc.maskedPaths where path.hasPrefix("/proc/") {
            var status = stat()
            guard lstat(path, &status) == 0 else { continue }
            if (status.st_mode & S_IFMT) == S_IFDIR {
                arguments += ["--tmpfs", path, "--remount-ro", path]
            } else {
                arguments += ["--ro-bind", "/dev/null", path]
            }
        }
        if access("/proc/fs", F_OK) == 0 { arguments += ["--ro-bind", "/proc/fs", "/proc/fs"] }
        return arguments
    }()

    /// `root`: a directory template instead of the host's directories; `scratch`: a host directory
    /// to bind as `/tmp` instead of a private tmpfs; `binds`: host files bound read-only on top of
    /// everything (after the grants); `grants`: the spec's grants already planned (nil: planned
    /// here). The descriptors in ``files`` are numbered from `firstDescriptor` on (a warm sandbox
    /// puts its own pipes before them).
    init(
        spec: Hangar_V1_JobSpec,
        limits: JobLimits,
        seccomp: SeccompFilter,
        root: TemplateRootfs? = nil,
        scratch: String? = nil,
        binds: [SandboxBind] = [],
        grants planned: GrantMounts? = nil,
        grantView: GrantViews.Lease? = nil,
        firstDescriptor: Int32 = 3
    ) throws(InvalidJob) {
        self.firstDescriptor = firstDescriptor
        guard let program = spec.argv.first, !program.isEmpty else { throw InvalidJob(message: "argv is empty") }
        if (spec.argv + [spec.cwd]).contains(where: { $0.utf8.contains(0) }) {
            throw InvalidJob(message: "argv and cwd must not contain NUL bytes")
        }
        let joinsNetwork: Bool
        switch spec.network.mode {
        case .networkNone, .networkLoopback: joinsNetwork = false
        case .networkAllowlist: joinsNetwork = true
        default:
            throw InvalidJob(message: "network mode \(spec.network.mode) is not supported by the process runtime")
        }
        let workdir = spec.cwd.isEmpty ? "/tmp" : spec.cwd
        guard workdir.hasPrefix("/"), !workdir.pathComponents().contains("..") else {
            throw InvalidJob(message: "cwd must be an absolute path without \"..\", got \"\(spec.cwd)\"")
        }
        let scratchBytes = limits.fileSizeBytes

        // An allowlist job runs in the network namespace the node prepared (``JobNetwork``) and
        // entered before bubblewrap starts; every other namespace is new.
        let namespaces =
            joinsNetwork
            ? ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
            : ["--unshare-all", "--unshare-user"]
        arguments =
            namespaces + [
                "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--hostname", "sandbox", "--uid", String(Self.sandboxID), "--gid", String(Self.sandboxID), "--clearenv",
            ]
        for (key, value) in try Self.environment(spec.env) { arguments += ["--setenv", key, value] }
        // A directory template instead of the host's dirs.
        arguments += root?.bubblewrapArguments ?? Self.hostSystemArguments()
        arguments += ["--proc", "/proc", "--dev", "/dev"] + Self.procMasks
        if let scratch {
            arguments += ["--bind", scratch, "/tmp"]
        } else {
            arguments += ["--size", String(scratchBytes), "--tmpfs", "/tmp"]
        }
        let inScratch = workdir == "/tmp" || workdir.hasPrefix("/tmp/")
        if inScratch && workdir != "/tmp" { arguments += ["--dir", workdir] }
        // Granted host paths, at the same paths, read-only or read-write; denied ones inside hidden.
        do {
            let grants: GrantMounts
            if let planned { grants = planned } else { grants = try GrantMounts(spec.grants) }
            if let root { try grants.check(inside: root.directoryMounts) }
            if let grantView, grantView.mounts == grants {
                arguments += grantView.bubblewrapArguments
            } else {
                arguments += grants.bubblewrapArguments
            }
        } catch {
            throw InvalidJob(message: error.message)
        }
        for bind in binds { arguments += ["--ro-bind", bind.source, bind.destination] }
        if !spec.files.isEmpty {
            guard inScratch else { throw InvalidJob(message: "files need a working directory under /tmp") }
            try stage(spec.files, in: workdir, scratchBytes: scratchBytes)
        }
        do {
            files.append(try Self.memoryFile(holding: Data(seccomp.bytes)))
            arguments += ["--seccomp", String(lastDescriptor)]
            // Files of bubblewrap's root tmpfs: no mount shows them, and the root is frozen below.
            let resolver = SandboxEtc.hasResolver(spec.network, spec.grants)
            for file in root == nil
                ? SandboxEtc.files(uid: Self.sandboxID, gid: Self.sandboxID, resolver: resolver) : []
            {
                files.append(try Self.memoryFile(holding: file.content))
                arguments += ["--perms", "0644", "--file", String(lastDescriptor), file.path]
            }
        } catch {
            for fd in files { close(fd) }
            files = []
            throw error
        }
        // The root is bwrap's own tmpfs; freeze it so only /tmp (a separate mount) is writable.
        arguments += ["--remount-ro", "/", "--chdir", workdir, "--"] + spec.argv
    }

    /// The host's `/usr` and system directories (or symlinks to them on merged-/usr systems) and the
    /// ``etcFiles``, read-only: the root of a sandbox on the `host` template.
    static func hostSystemArguments() -> [String] {
        var arguments = ["--ro-bind", "/usr", "/usr"]
        for directory in systemDirectories {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: directory) {
                arguments += ["--symlink", target, directory]
            } else {
                arguments += ["--ro-bind-try", directory, directory]
            }
        }
        for path in etcFiles { arguments += ["--ro-bind-try", path, path] }
        return arguments
    }

    /// The number bubblewrap knows the last of ``files`` by.
    private var lastDescriptor: Int32 { firstDescriptor + Int32(files.count) - 1 }

    /// The job's environment plus the default `PATH` and `HOME`, sorted by name.
    private static func environment(_ env: [String: String]) throws(InvalidJob) -> [(String, String)] {
        for (key, value) in env where key.isEmpty || key.contains("=") || (key + value).utf8.contains(0) {
            throw InvalidJob(message: "invalid environment variable name \"\(key)\"")
        }
        var all = env
        if all["PATH"] == nil { all["PATH"] = ProcessRuntime.defaultPath }
        if all["HOME"] == nil { all["HOME"] = "/tmp" }
        return all.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Copies each file into an anonymous memory file that `bwrap --file` writes into the scratch
    /// tmpfs, so the files count against its size bound and never touch the host's disk.
    private mutating func stage(
        _ inputs: [Hangar_V1_FileIn],
        in workdir: String,
        scratchBytes: UInt64
    ) throws(InvalidJob) {
        guard inputs.count <= Self.maxFiles else {
            throw InvalidJob(message: "at most \(Self.maxFiles) files, got \(inputs.count)")
        }
        let total = inputs.reduce(UInt64(0)) { $0 + UInt64($1.content.count) }
        guard total <= scratchBytes else {
            throw InvalidJob(message: "files total \(total) bytes, more than the \(scratchBytes)-byte /tmp")
        }
        let paths = try Self.checkedPaths(inputs.map(\.path))
        do {
            for (index, input) in inputs.enumerated() {
                let fd = try Self.memoryFile(holding: input.content)
                files.append(fd)
                let mode = input.mode == 0 ? 0o644 : input.mode & 0o777
                arguments += [
                    "--perms", "0" + String(mode, radix: 8), "--file", String(lastDescriptor),
                    workdir + "/" + paths[index],
                ]
            }
        } catch {
            for fd in files { close(fd) }
            files = []
            throw error
        }
    }

    /// Relative paths of plain components only (no "", ".", ".."), no duplicates, and no file that
    /// is also another file's directory.
    private static func checkedPaths(_ paths: [String]) throws(InvalidJob) -> [String] {
        var seen = Set<String>()
        var directories = Set<String>()
        for path in paths {
            let components = path.pathComponents(omittingEmpty: false)
            guard !path.isEmpty, path.utf8.count <= 4096, !path.utf8.contains(0),
                components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
            else {
                throw InvalidJob(
                    message: "file path \"\(path)\" must be relative, without \".\", \"..\" or empty parts"
                )
            }
            guard seen.insert(path).inserted else { throw InvalidJob(message: "file path \"\(path)\" appears twice") }
            for end in 1..<components.count { directories.insert(components[0..<end].joined(separator: "/")) }
        }
        if let clash = paths.first(where: directories.contains) {
            throw InvalidJob(message: "file path \"\(clash)\" is also used as a directory")
        }
        return paths
    }

    /// An anonymous close-on-exec memory file holding `content`, positioned at its start.
    static func memoryFile(holding content: Data) throws(InvalidJob) -> Int32 {
        let fd = GlibcExtensions.anonymousFile(named: "hangar-file")
        guard fd >= 0 else {
            throw InvalidJob(message: "cannot create a memory file: \(String(cString: strerror(errno)))")
        }
        let written = Descriptor.writeAll(fd, content)
        guard written, lseek(fd, 0, SEEK_SET) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw InvalidJob(message: "cannot write a memory file: \(reason)")
        }
        return fd
    }
}
