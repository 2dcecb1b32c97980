import Foundation
import HangarShared

/// A job the OCI runtimes cannot run as asked; `message` says why.
struct OCIInvalidJob: Error, Sendable {
    var message: String
}

/// What differs between the OCI runtimes when building a job's bundle.
struct OCIConfigOptions: Sendable {
    /// A user namespace for the container (runc), or none (gVisor runs its own).
    var userNamespace: OCIUserNamespace?
    /// Join this user namespace (``OwnedUserNamespace``) instead of having the runtime create one;
    /// the rlimits then go to ``OCIJobConfig/inheritedRlimits`` instead of the config.
    var userNamespacePath: String? = nil
    /// Whether the runtime copies `rootfs/tmp` into the `/tmp` tmpfs (runc's `tmpcopyup`); without
    /// it, job files and a working directory below `/tmp` cannot be prepared.
    var copiesScratchUp: Bool
    /// `linux.cgroupsPath` for the container.
    var cgroupsPath: String
    /// Host tasks the runtime itself needs in the job's cgroup, on top of the job's `pids`.
    var pidsOverhead: Int64 = 0
    /// Let `clone3` through the seccomp profile (gVisor: see ``OCISeccompProfile/seccomp(allowingClone3:)``).
    var allowsClone3 = false
    /// A directory template's root filesystem instead of the host's directories; nil for `host`.
    var root: TemplateRootfs? = nil
}

/// One thing to create in the bundle's `rootfs` before the runtime starts.
enum OCIRootfsEntry: Sendable, Equatable {
    case directory(String, mode: UInt16)
    /// An empty file, the mount point of a bound host file.
    case file(String)
    case symlink(String, target: String)
    /// A read-only file (0644) with this content.
    case content(String, Data)
}

/// A file for the job's scratch, placed under `rootfs/tmp` and copied into the tmpfs by the runtime.
struct OCIScratchFile: Sendable {
    /// Relative to `rootfs`, e.g. `tmp/work/hello.txt`.
    var path: String
    var content: Data
    var mode: UInt16
}

/// Everything a bundle holds for one job: the `config.json` and what to lay out in `rootfs`.
///
/// The defaults mirror a hardened `docker run`: uid/gid 65534, a read-only root made of the host's
/// `/usr`, system directories and a few `/etc` files bound read-only, a size-bounded private
/// tmpfs `/tmp`, fresh pid/ipc/uts/mount/network namespaces (the network one holds only `lo`), no
/// capabilities, `no_new_privs`, Docker's masked and read-only `/proc` paths, cgroup limits,
/// rlimits, and a Docker-like seccomp allowlist for x86_64 only.
struct OCIJobConfig: Sendable {
    static let uid: UInt32 = 65534
    static let gid: UInt32 = 65534
    static let defaultPath = "/usr/local/bin:/usr/bin:/bin"
    static let defaultMemoryBytes: UInt64 = 256 << 20
    static let defaultPids: UInt32 = 128
    static let defaultOpenFiles: UInt32 = 256
    static let defaultCPUMillis: UInt32 = 1000
    static let defaultScratchBytes: UInt64 = 64 << 20
    static let sharedMemoryBytes: UInt64 = 64 << 20
    static let cpuPeriodMicroseconds: UInt64 = 100_000
    static let maxFiles = 256

    /// Host directories that are symlinks into `/usr` on merged-/usr systems.
    static let systemDirectories = ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"]
    /// What programs need from the host's `/etc`, bound read-only when present. Accounts, host
    /// names and resolvers are not the host's: see ``SandboxEtc``.
    static let etcFiles = [
        "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl",
        "/etc/ca-certificates", "/etc/localtime",
    ]
    /// The OCI runtime spec's default masked paths, plus `/proc/cmdline` and `/sys/block`.
    static let maskedPaths = SandboxEtc.maskedPaths
    /// The OCI runtime spec's default read-only paths.
    static let readonlyPaths = SandboxEtc.readonlyPaths

    let spec: OCISpec
    /// In creation order: parents before children.
    let rootfs: [OCIRootfsEntry]
    /// Rlimits the runtime must be started with (the container inherits them) rather than set from
    /// the config; empty unless the container joins an ``OwnedUserNamespace``.
    let inheritedRlimits: [OCIRlimit]
    let scratchFiles: [OCIScratchFile]
    /// Host uid and gid owning what the job may write in its scratch (the job's uid as the host sees it).
    let scratchOwner: (uid: UInt32, gid: UInt32)
    /// A host directory bound as `/tmp` instead of a tmpfs of the runtime's (see ``JobScratch``);
    /// the `tmp/…` entries of ``rootfs`` and ``scratchFiles`` are then written there.
    let hostScratch: String?

    /// `hostScratch`: bind this host directory as `/tmp` (for `files_out`) instead of a tmpfs.
    /// `network`: the path of the network namespace to join (a ``JobNetwork``), required for and only
    /// used with `NETWORK_ALLOWLIST`.
    init(
        job: Hangar_V1_JobSpec,
        options: OCIConfigOptions,
        hostScratch: String? = nil,
        network: String? = nil
    ) throws(OCIInvalidJob) {
        self.hostScratch = hostScratch
        guard let program = job.argv.first, !program.isEmpty else { throw OCIInvalidJob(message: "argv is empty") }
        if (job.argv + [job.cwd]).contains(where: { $0.utf8.contains(0) }) {
            throw OCIInvalidJob(message: "argv and cwd must not contain NUL bytes")
        }
        switch job.network.mode {
        case .networkNone, .networkLoopback: break
        case .networkAllowlist where network != nil: break
        default: throw OCIInvalidJob(message: "network mode \(job.network.mode) is not supported by this runtime")
        }
        let workdir = job.cwd.isEmpty ? "/tmp" : job.cwd
        guard workdir.hasPrefix("/"), !workdir.pathComponents().contains("..") else {
            throw OCIInvalidJob(message: "cwd must be an absolute path without \"..\", got \"\(job.cwd)\"")
        }
        let limits = job.limits
        let scratchBytes = limits.fileSizeBytes > 0 ? limits.fileSizeBytes : Self.defaultScratchBytes
        let offset = options.userNamespace?.hostID ?? 0
        scratchOwner = (offset + Self.uid, offset + Self.gid)

        let scratchPath = workdir.pathComponents()
        let inScratch = scratchPath.first == "tmp"
        let needsCopyUp = inScratch && (scratchPath.count > 1 || !job.files.isEmpty)
        if needsCopyUp && !options.copiesScratchUp && hostScratch == nil {
            throw OCIInvalidJob(
                message: "this runtime cannot prepare job files or a working directory below /tmp "
                    + "(runsc lacks tmpcopyup); use cwd /tmp and no files"
            )
        }
        if !job.files.isEmpty && !inScratch {
            throw OCIInvalidJob(message: "files need a working directory under /tmp, got \"\(workdir)\"")
        }
        if !inScratch && !(options.root.map { $0.isDirectory(workdir) } ?? Self.isVisibleDirectory(workdir)) {
            throw OCIInvalidJob(message: "cwd \"\(workdir)\" is not a directory in the sandbox (use /tmp or below)")
        }

        var tmpOptions = ["nosuid", "nodev", "mode=1777", "size=\(scratchBytes)"]
        // Mount points first, so that rootfs/tmp exists before the scratch staged below it.
        var rootfs: [OCIRootfsEntry] = [
            .directory("proc", mode: 0o555), .directory("dev", mode: 0o755), .directory("sys", mode: 0o555),
            .directory("tmp", mode: 0o1777),
        ]
        if options.root == nil { rootfs += [.directory("usr", mode: 0o755), .directory("etc", mode: 0o755)] }
        if needsCopyUp {
            if hostScratch == nil { tmpOptions.append("tmpcopyup") }
            var directory = "tmp"
            for component in scratchPath.dropFirst() {
                directory += "/" + component
                rootfs.append(.directory(directory, mode: 0o755))
            }
            let staged = try Self.stage(job.files, in: scratchPath.joined(separator: "/"), scratchBytes: scratchBytes)
            rootfs += staged.directories
            scratchFiles = staged.files
        } else {
            scratchFiles = []
        }

        var mounts = [
            OCIMount(destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"]),
            OCIMount(
                destination: "/dev",
                type: "tmpfs",
                source: "tmpfs",
                options: ["nosuid", "strictatime", "mode=755", "size=65536k"]
            ),
            OCIMount(
                destination: "/dev/shm",
                type: "tmpfs",
                source: "shm",
                options: ["nosuid", "noexec", "nodev", "mode=1777", "size=\(Self.sharedMemoryBytes)"]
            ),
            // sysfs can only be mounted by the owner of the network namespace; a job that joins the
            // node's namespace for it (NETWORK_ALLOWLIST) gets an empty read-only /sys instead.
            network == nil
                ? OCIMount(
                    destination: "/sys",
                    type: "sysfs",
                    source: "sysfs",
                    options: ["nosuid", "noexec", "nodev", "ro"]
                )
                : OCIMount(
                    destination: "/sys",
                    type: "tmpfs",
                    source: "tmpfs",
                    options: ["nosuid", "noexec", "nodev", "ro", "size=4k"]
                ),
            hostScratch.map {
                OCIMount(destination: "/tmp", type: "bind", source: $0, options: ["rbind", "nosuid", "nodev", "rw"])
            } ?? OCIMount(destination: "/tmp", type: "tmpfs", source: "tmpfs", options: tmpOptions),
        ]
        if let root = options.root {
            (rootfs, mounts) = Self.templateLayout(root, rootfs: rootfs, mounts: mounts)
        } else {
            mounts.append(Self.readOnlyBind("/usr"))
        }
        let files = FileManager.default
        for directory in Self.systemDirectories where options.root == nil {
            let name = String(directory.dropFirst())
            if let target = try? files.destinationOfSymbolicLink(atPath: directory) {
                rootfs.append(.symlink(name, target: target))
            } else if Self.isDirectory(directory) {
                rootfs.append(.directory(name, mode: 0o755))
                mounts.append(Self.readOnlyBind(directory))
            }
        }
        for path in Self.etcFiles where options.root == nil && files.fileExists(atPath: path) {
            rootfs.append(
                Self.isDirectory(path)
                    ? .directory(String(path.dropFirst()), mode: 0o755) : .file(String(path.dropFirst()))
            )
            mounts.append(Self.readOnlyBind(path))
        }
        // Granted host paths, at the same paths, read-only or read-write; denied ones inside hidden.
        do {
            let grants = try GrantMounts(job.grants)
            if let root = options.root { try grants.check(inside: root.directoryMounts) }
            (rootfs, mounts) = Self.grantLayout(grants, rootfs: rootfs, mounts: mounts)
        } catch {
            throw OCIInvalidJob(message: error.message)
        }
        if options.root == nil {
            // Plain files of the bundle's root (its own tmpfs, see ``OCIBundle``): no mount shows them.
            let resolver = SandboxEtc.hasResolver(job.network, job.grants)
            for file in SandboxEtc.files(uid: Self.uid, gid: Self.gid, resolver: resolver) {
                rootfs.append(.content(String(file.path.dropFirst()), file.content))
            }
        }

        var namespaces = ["pid", "ipc", "uts", "mount", "network", "cgroup"].map { OCINamespace(type: $0) }
        if job.network.mode == .networkAllowlist, let network {
            namespaces[4].path = network
        }
        var uidMappings: [OCIIDMapping]?
        var gidMappings: [OCIIDMapping]?
        if let userNamespace = options.userNamespace {
            guard userNamespace.size > Self.uid else {
                throw OCIInvalidJob(message: "the user namespace maps \(userNamespace.size) ids; uid 65534 needs 65535")
            }
            var user = OCINamespace(type: "user")
            user.path = options.userNamespacePath
            namespaces.append(user)
            uidMappings = [OCIIDMapping(containerID: 0, hostID: userNamespace.hostID, size: userNamespace.size)]
            gidMappings = uidMappings
        }

        let memory = Int64(clamping: limits.memoryBytes > 0 ? limits.memoryBytes : Self.defaultMemoryBytes)
        let pids = Int64(limits.pids > 0 ? limits.pids : Self.defaultPids) + options.pidsOverhead
        let cpuMillis = UInt64(limits.cpuMillis > 0 ? limits.cpuMillis : Self.defaultCPUMillis)
        let openFiles = UInt64(limits.openFiles > 0 ? limits.openFiles : Self.defaultOpenFiles)
        var rlimits = [
            OCIRlimit(type: "RLIMIT_NOFILE", hard: openFiles, soft: openFiles),
            OCIRlimit(type: "RLIMIT_FSIZE", hard: scratchBytes, soft: scratchBytes),
            OCIRlimit(type: "RLIMIT_CORE", hard: 0, soft: 0),
        ]
        if limits.cpuTimeMs > 0 {
            // Soft and hard alike: the kernel then sends SIGKILL at the limit. A SIGXCPU at a lower soft
            // limit would be lost on the program that is pid 1 of its namespace (it has no handler).
            let seconds = (UInt64(limits.cpuTimeMs) + 999) / 1000
            rlimits.append(OCIRlimit(type: "RLIMIT_CPU", hard: seconds, soft: seconds))
        }
        self.rootfs = rootfs
        // runc sets a config's rlimits with prlimit from outside, which a joined namespace owned by
        // another user refuses unless root has CAP_SYS_RESOURCE; the launcher sets them instead.
        inheritedRlimits = options.userNamespacePath == nil ? [] : rlimits
        if options.userNamespacePath != nil { rlimits = [] }

        spec = OCISpec(
            process: OCIProcess(
                user: OCIUser(uid: Self.uid, gid: Self.gid, additionalGids: [Self.gid]),
                args: job.argv,
                env: try Self.environment(job.env),
                cwd: workdir,
                capabilities: OCICapabilities(),
                rlimits: rlimits
            ),
            root: OCIRoot(path: "rootfs", readonly: true),
            hostname: "sandbox",
            mounts: mounts,
            linux: OCILinux(
                namespaces: namespaces,
                uidMappings: uidMappings,
                gidMappings: gidMappings,
                cgroupsPath: options.cgroupsPath,
                resources: OCIResources(
                    devices: [OCIDeviceRule(allow: false, access: "rwm")],
                    memory: OCIMemory(limit: memory, swap: memory),
                    cpu: OCICPU(
                        quota: Int64(cpuMillis * Self.cpuPeriodMicroseconds / 1000),
                        period: Self.cpuPeriodMicroseconds
                    ),
                    pids: OCIPids(limit: pids)
                ),
                seccomp: OCISeccompProfile.seccomp(allowingClone3: options.allowsClone3),
                maskedPaths: Self.maskedPaths,
                readonlyPaths: Self.readonlyPaths
            )
        )
    }
}
