import HangarShared

/// Runs each job as an OCI container under `runc`, configured like a hardened `docker run`: uid/gid
/// 65534 inside a user namespace (container ids 0…65535 on host ids from
/// ``OCIUserNamespace/hostID``), read-only root of the host's `/usr` and `/etc` essentials, private
/// tmpfs `/tmp` bounded by `fileSizeBytes`, fresh pid/ipc/uts/mount/network/cgroup namespaces with
/// only `lo`, no capabilities, `no_new_privs`, Docker's masked paths, a Docker-like seccomp
/// allowlist (x86_64 only), and cgroup limits for memory (no swap), pids and CPU.
///
/// Nothing survives a job: the container is killed on timeout, output overflow or cancellation,
/// then always deleted, its cgroup swept and its bundle removed.
public struct ContainerRuntime: Runtime {
    /// Always "container".
    public let name = "container"
    /// Where the `runc` binary is.
    public let runcPath: String
    /// Where state, bundles and cgroups go.
    public let directories: OCIDirectories
    /// The user namespace jobs run in, or nil for none (uid 65534 is then the host's 65534).
    public let userNamespace: OCIUserNamespace?
    /// Directory templates jobs may ask for; nil for `host` only.
    public let templates: TemplateStore?
    /// The node's uids, subnets and ready-made user namespaces.
    public let resources: NodeResources

    /// `runc` state under `/run/hangar/runc`, bundles under `/var/lib/hangar/oci/runc`.
    public static let defaultDirectories = OCIDirectories(
        state: "/run/hangar/runc",
        bundles: "/var/lib/hangar/oci/runc"
    )

    /// A runtime that runs jobs with the `runc` at `runcPath`, as uids of `resources`.
    public init(
        runcPath: String = "/usr/sbin/runc",
        directories: OCIDirectories = ContainerRuntime.defaultDirectories,
        userNamespace: OCIUserNamespace? = .standard,
        templates: TemplateStore? = nil,
        resources: NodeResources = .standard
    ) {
        self.runcPath = runcPath
        self.directories = directories
        self.userNamespace = userNamespace
        self.templates = templates
        self.resources = resources
    }

    var engine: OCIEngine {
        OCIEngine(
            flavor: .runc(userNamespace: userNamespace),
            executable: runcPath,
            directories: directories,
            templates: templates,
            resources: resources
        )
    }

    /// Available iff `runc --version` answers and a container running `/bin/true` succeeds; the
    /// detail is "runc <version>" or the reason it does not work.
    public func probe() async -> RuntimeProbe {
        await engine.probe()
    }

    /// Runs the job in a fresh container and reports how it ended. Never throws.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        await engine.run(spec, jobID: jobID)
    }
}

/// Runs each job in a gVisor sandbox (`runsc`): the same bundle as ``ContainerRuntime`` but the
/// program talks to gVisor's user-space kernel instead of the host's. No user namespace in the spec
/// (runsc runs its sandbox in one of its own), `--network=none` (gVisor's netstack with only
/// loopback), `--oci-seccomp` so the seccomp profile is enforced inside the sandbox too.
///
/// Differences from ``ContainerRuntime``: the memory and CPU-time limits and the CPU and
/// peak-memory figures cover the whole sandbox (sentry and gofer included, about 20 MiB and 150 ms
/// for a small job), and on OOM the kernel kills the sandbox itself, which is still reported as
/// OOM_KILLED; the host pids limit is the job's plus an allowance for gVisor's own threads.
/// Limitations of the runsc in Debian 12 (release 20221219): no `tmpcopyup`, so jobs with files or
/// a working directory below `/tmp` are refused; RLIMIT_CPU is not enforced (the node's polling of
/// the cgroup's CPU time is what stops a busy job); `statx` with `AT_NO_AUTOMOUNT`, which
/// coreutils 9 `ls` and `stat` use, fails with EINVAL inside the sandbox.
public struct GVisorRuntime: Runtime {
    /// Always "gvisor".
    public let name = "gvisor"
    /// Where the `runsc` binary is.
    public let runscPath: String
    /// runsc's `--platform`: `ptrace` (works everywhere) or `kvm`/`systrap` where available.
    public let platform: String
    /// Where state, bundles and cgroups go.
    public let directories: OCIDirectories
    /// Directory templates jobs may ask for; nil for `host` only.
    public let templates: TemplateStore?
    /// The node's uids, subnets and ready-made user namespaces.
    public let resources: NodeResources

    /// `runsc` state under `/run/hangar/runsc`, bundles under `/var/lib/hangar/oci/runsc`.
    public static let defaultDirectories = OCIDirectories(
        state: "/run/hangar/runsc",
        bundles: "/var/lib/hangar/oci/runsc"
    )

    /// A runtime that runs jobs with the `runsc` at `runscPath` on `platform`, in cgroups and networks
    /// of `resources`.
    public init(
        runscPath: String = "/usr/bin/runsc",
        platform: String = "ptrace",
        directories: OCIDirectories = GVisorRuntime.defaultDirectories,
        templates: TemplateStore? = nil,
        resources: NodeResources = .standard
    ) {
        self.runscPath = runscPath
        self.platform = platform
        self.directories = directories
        self.templates = templates
        self.resources = resources
    }

    var engine: OCIEngine {
        OCIEngine(
            flavor: .runsc(platform: platform),
            executable: runscPath,
            directories: directories,
            templates: templates,
            resources: resources
        )
    }

    /// Available iff `runsc --version` answers and a sandbox running `/bin/true` succeeds; the
    /// detail is "runsc <version>, platform <platform>" or the reason it does not work.
    public func probe() async -> RuntimeProbe {
        await engine.probe()
    }

    /// Runs the job in a fresh gVisor sandbox and reports how it ended. Never throws.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        await engine.run(spec, jobID: jobID)
    }
}

extension ContainerRuntime {
    /// The OCI bundle this runtime would run `spec` in (config, rootfs mount points, user namespace
    /// mapping, cgroup `/<parent>/<id>`); for benchmarks, which run the tool on it by hand. Remove the
    /// directory when done.
    public func writeBundle(for spec: Hangar_V1_JobSpec, id: String) throws -> String {
        try engine.writeBundle(for: spec, id: id)
    }
}

extension GVisorRuntime {
    /// The OCI bundle this runtime would run `spec` in; see ``ContainerRuntime/writeBundle(for:id:)``.
    public func writeBundle(for spec: Hangar_V1_JobSpec, id: String) throws -> String {
        try engine.writeBundle(for: spec, id: id)
    }
}
