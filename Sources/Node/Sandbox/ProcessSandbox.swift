import Foundation
import Glibc
import HangarShared
import Logging
import Synchronization

/// What a stateful sandbox of the process runtime may use, for the whole sandbox.
public struct SandboxLimits: Sendable, Equatable {
    /// Memory (and memory plus swap where the kernel accounts it) of all its processes together.
    public var memoryBytes: UInt64 = 256 << 20
    /// Processes and threads, bubblewrap and the agent included.
    public var pids: UInt32 = 256
    /// CPU bandwidth: 1000 is one core.
    public var cpuMillis: UInt32 = 1000
    /// Size of the writable layer (`/home/user`, `/tmp` and `/root` together), and the largest file.
    public var diskBytes: UInt64 = 256 << 20
    /// Open descriptors per process.
    public var openFiles: UInt32 = 1024

    /// The defaults above.
    public init() {}

    /// These limits as the process runtime's helpers (cgroup, rlimit shim) take them.
    var jobLimits: JobLimits {
        var limits = JobLimits(Hangar_V1_Limits())
        limits.memoryBytes = memoryBytes
        limits.pids = pids
        limits.cpuMillis = cpuMillis
        limits.fileSizeBytes = diskBytes
        limits.openFiles = openFiles
        return limits
    }
}

/// Why a ``ProcessSandbox`` could not start.
public struct SandboxStartError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a sentence for operators.
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }
}

/// A long-lived bubblewrap sandbox of the process runtime with ``hangar-sandbox-agent`` as its first
/// process: a stateful sandbox, which runs many commands and file operations over its ``agent``
/// channel until ``kill()``.
///
/// Layout. The root is bubblewrap's own tmpfs, frozen read-only once set up, holding the host's
/// `/usr` and system directories read-only (``BubblewrapInvocation/hostSystemArguments()``, the
/// same view as a one-shot job on the `host` template), the sandbox's own `/etc/passwd` and friends
/// (``SandboxEtc``: `root` and `user`, uid 1000, home `/home/user`), its own `/proc` and `/dev`,
/// and the agent at `/.hangar/agent`, bound read-only. What is writable is one host tmpfs per
/// sandbox (``JobScratch``, under ``workRoot``), mounted by the node with the size of
/// ``SandboxLimits/diskBytes``: its `home`, `tmp` and `root` directories are bound as `/home/user`,
/// `/tmp` and `/root`. A tmpfs rather than a directory on the node's disk because its size is a
/// hard limit (a full sandbox gets ENOSPC, the node's disk never fills) and unmounting it drops
/// everything at once; it counts against the host's memory, which is why the disk limit is part of
/// the sandbox's reservation.
///
/// On a directory template, the root holds the template's top-level entries instead of the host's
/// system directories, bound read-write from the sandbox's own writable layer over it
/// (``TemplateOverlay``, its upper layer on the same tmpfs): the sandbox's root owns the template's
/// files there and may change any of them, and its `/etc/passwd` and `/etc/group` are the
/// template's with `user` added.
///
/// Isolation. Every namespace is new; the network one has only loopback, unless the start asks for
/// `NETWORK_ALLOWLIST`: then the sandbox runs in a ``JobNetwork`` of its own (a network namespace
/// with a veth pair and nftables rules letting out only the allowed CIDRs), entered with `nsenter`
/// before bubblewrap starts, exactly as an allowlist job of the process runtime does. Host paths the
/// start grants (`allow_read`, `allow_write`, the denies inside them) are bound at the same paths,
/// read-only or read-write (``GrantMounts``, as for jobs); nothing else of the host's is there
/// beyond its system directories. On a root node bubblewrap runs as a host uid of the
/// sandbox's own (``SandboxUsers``), and the sandbox's user namespace maps that uid, and only it, as
/// uid 0: the agent runs as that uid 0, with only CAP_SETFCAP and CAP_SETPCAP in the sandbox's
/// namespace (see `Sources/SandboxAgent/main.c`), and each command as uid 1000 in a nested namespace
/// (or as uid 0 without any capability), under the node's standard seccomp filter, which the agent
/// installs in every command. All of it runs in one cgroup with the sandbox's memory, pids and CPU
/// limits, joined before bubblewrap starts (``LimitShim``, which also sets the open-files and
/// file-size rlimits).
///
/// The channel. The agent listens on a unix socket the node made (root-only, under
/// `<workRoot>/agents`, never inside the sandbox) and passed to it, and the node connects. The
/// sandbox outlives its node: when the node goes (a crash, an upgrade) the agent keeps the sandbox
/// and its commands and waits for the next node, which finds the sandbox in its
/// ``SandboxRegistry`` (``saved``) and re-adopts it (``adopt(_:resources:logger:)``). An allowlist
/// sandbox's network stays (namespace, veth pair, rules); its DNS resolver lived in the node
/// process, and the next node starts one again (``JobNetwork/adopt(_:upstream:subnets:ledger:)``).
/// One that no node re-adopts within ``orphanTimeout`` ends itself, and the next node's sweep takes
/// down what it leaves.
///
/// Killing: ``kill()`` hangs up on the agent, kills the agent (the sandbox's pid 1, so the kernel
/// ends every process of the sandbox), bubblewrap and every process of the cgroup, removes the
/// cgroup and the sandbox's network (if it has one), unmounts and removes the writable tmpfs and
/// the agent's socket, and gives the uid back.
public final class ProcessSandbox: Sendable {
    /// The sandbox's name (its cgroup and scratch directory carry it).
    public let id: String
    /// The channel to the sandbox's agent.
    public let agent: SandboxAgentChannel
    /// The host directory of the sandbox's writable tmpfs (its `home`, `tmp` and `root`).
    public let scratchPath: String
    /// The host uid the sandbox runs as; nil when the node is not root.
    public let hostUser: UInt32?
    /// The sandbox's cgroup directories.
    public var cgroupDirectories: [String] { cgroup.allDirectories }
    /// The name of its network namespace (under `/run/netns`) when it has an allowlist network.
    public var networkNamespace: String? { network?.name }
    /// The host end of its veth pair when it has an allowlist network.
    public var networkInterface: String? { network?.hostInterface }

    /// What a node needs to re-adopt this sandbox after its own restart; nil when bubblewrap is not
    /// running.
    public var saved: Saved? {
        guard let pid = leader.pid, let start = SandboxLedger.startTime(of: pid) else { return nil }
        if network != nil && savedNetwork == nil { return nil }
        return Saved(
            name: id,
            socket: socketPath,
            leaderPID: pid,
            leaderStart: start,
            cgroupVersion: cgroup.version,
            cgroup: cgroup.directories,
            scratch: scratch.path,
            overlay: overlay,
            hostUser: hostUser,
            network: savedNetwork
        )
    }

    private let leader: Leader
    private let network: JobNetwork?
    /// Its network as the registry keeps it (with the policy and grants it was made from).
    private let savedNetwork: JobNetwork.Saved?
    private let cgroup: JobCgroup
    private let scratch: JobScratch
    private let overlay: TemplateOverlay.Mounts?
    private let users: SandboxUsers
    private let socketPath: String
    private let ledger: SandboxLedger
    private let killed = Mutex<Task<String?, Never>?>(nil)

    /// A sandbox as the registry keeps it: enough to reconnect to its agent and to take it down.
    public struct Saved: Codable, Sendable, Equatable {
        /// ``ProcessSandbox/id``.
        var name: String
        /// The agent's listening socket.
        var socket: String
        /// Bubblewrap's host pid and start time (it is the sandbox's first host process).
        var leaderPID: Int32
        var leaderStart: UInt64
        var cgroupVersion: CgroupVersion
        var cgroup: ControllerDirectories
        var scratch: String
        var overlay: TemplateOverlay.Mounts?
        var hostUser: UInt32?
        /// Its allowlist network (namespace, veth pair, rules, resolver), if it has one.
        var network: JobNetwork.Saved?

        /// What the node's ledger lists for the sandbox: kept (not swept) when it is re-adopted.
        var resources: [SandboxLedger.Resource] {
            [.process(pid: leaderPID, start: leaderStart), .scratch(path: scratch), .socket(path: socket)]
                + cgroup.distinct.map { .cgroup(directory: $0) }
                + (network.map { [.network(namespace: $0.name, hostInterface: $0.hostInterface)] } ?? [])
        }
    }

    /// The sandbox's first host process: the limit shim, which became bubblewrap (a microVM
    /// sandbox's qemu, ``MicroVMSandbox``).
    enum Leader: Sendable {
        /// Started by this node process.
        case child(SandboxProcess)
        /// Started by a node process before this one, which re-adopted the sandbox.
        case adopted(pid: Int32, start: UInt64)

        var pid: Int32? {
            switch self {
            case .child(let process): process.pid
            case .adopted(let pid, _): pid
            }
        }

        var hasEnded: Bool {
            switch self {
            case .child(let process): process.hasEnded
            case .adopted(let pid, let start): SandboxLedger.startTime(of: pid) != start
            }
        }

        func kill() {
            switch self {
            case .child(let process): process.kill()
            case .adopted(let pid, _): if !hasEnded { Glibc.kill(pid, SIGKILL) }
            }
        }

        /// Until it has ended (and, for an adopted one, whoever adopted it reaped it, or 5 s).
        func wait() async {
            switch self {
            case .child(let process): _ = try? await process.wait()
            case .adopted:
                let end = ContinuousClock.now + .seconds(5)
                while !hasEnded && ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(5)) }
            }
        }
    }

    /// Where sandboxes' writable tmpfs go unless the caller says otherwise.
    public static let defaultWorkRoot = "/run/hangar-sandboxes"
    /// Where the agent is inside the sandbox.
    static let agentPathInside = "/.hangar/agent"
    /// How long the agent may take to answer its first ping.
    static let readyTimeout = Duration.seconds(10)
    /// A sandbox lives until it is killed; this bounds it should its owner forget it.
    static let lifetime = Duration.seconds(7 * 24 * 3600)
    /// The agent's own diagnostics (stderr) kept; it writes little.
    static let agentStderrBytes = 64 << 10
    /// How long ``kill()`` gives the sandbox to end once its agent is killed, before killing
    /// everything.
    static let hangUpGrace = Duration.seconds(2)
    /// How long an agent whose node went away waits for the next one before it ends the sandbox.
    public static let orphanTimeout = Duration.seconds(600)
    /// How long a re-adopting node waits for an agent's answer.
    static let adoptTimeout = Duration.seconds(3)
    /// The uid of `user` inside the sandbox (the agent's USER_ID).
    static let userID: UInt32 = 1000

    private init(
        id: String,
        agent: SandboxAgentChannel,
        leader: Leader,
        cgroup: JobCgroup,
        scratch: JobScratch,
        overlay: TemplateOverlay.Mounts?,
        user: UInt32?,
        users: SandboxUsers,
        network: JobNetwork?,
        savedNetwork: JobNetwork.Saved?,
        socketPath: String,
        ledger: SandboxLedger
    ) {
        self.network = network
        self.savedNetwork = savedNetwork
        self.overlay = overlay
        self.id = id
        self.agent = agent
        self.leader = leader
        self.socketPath = socketPath
        self.ledger = ledger
        self.cgroup = cgroup
        self.scratch = scratch
        self.scratchPath = scratch.path
        self.hostUser = user
        self.users = users
    }

    /// The `hangar-sandbox-agent` binary: `$HANGAR_SANDBOX_AGENT`, else the one next to this
    /// program (`swift build` puts both in the same directory).
    public static func locateAgent() -> String? {
        if let path = ProcessInfo.processInfo.environment["HANGAR_SANDBOX_AGENT"], !path.isEmpty { return path }
        guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            return nil
        }
        let sibling = (executable as NSString).deletingLastPathComponent + "/hangar-sandbox-agent"
        return access(sibling, X_OK) == 0 ? sibling : nil
    }

    /// Starts a sandbox and waits until its agent answers.
    /// - Parameters:
    ///   - id: a name for the sandbox (letters, digits, `-` and `_` are kept).
    ///   - grants: host paths bound into it (as the scheduler normalized them); its network grants
    ///     arrive as `network`.
    ///   - network: `NETWORK_NONE` or `NETWORK_LOOPBACK` (loopback only, the default), or
    ///     `NETWORK_ALLOWLIST` (egress to `network.allow` only, in a ``JobNetwork``).
    ///   - agentPath: the static agent binary (``locateAgent()``).
    ///   - workRoot: where the writable tmpfs is mounted (a directory per sandbox below it).
    ///   - template: the root filesystem: the host's (``Template/host``), or a directory template
    ///     with a writable layer of the sandbox's own over it.
    ///   - orphanTimeout: how long its agent waits for a node once its node went away.
    public static func start(
        id: String,
        limits: SandboxLimits = SandboxLimits(),
        template: Template = .host,
        grants: Hangar_V1_Grants = Hangar_V1_Grants(),
        network networkPolicy: Hangar_V1_NetworkPolicy = Hangar_V1_NetworkPolicy(),
        agentPath: String,
        bubblewrapPath: String = "/usr/bin/bwrap",
        resources: NodeResources = .standard,
        workRoot: String = defaultWorkRoot,
        orphanTimeout: Duration = orphanTimeout,
        logger: Logger = Logger(label: "hangar.sandbox")
    ) async throws(SandboxStartError) -> ProcessSandbox {
        guard geteuid() == 0 else {
            throw SandboxStartError(
                "a stateful process sandbox needs a node running as root (its disk is a host tmpfs)"
            )
        }
        guard access(agentPath, X_OK) == 0 else { throw SandboxStartError("no sandbox agent at \(agentPath)") }
        guard access(bubblewrapPath, X_OK) == 0 else {
            throw SandboxStartError("bubblewrap not found at \(bubblewrapPath)")
        }
        guard case .success(let host) = resources.cgroups else {
            throw SandboxStartError("cgroups cannot be used, so the sandbox would have no limits")
        }
        guard case .success(let filter) = ProcessRuntime.seccomp else {
            throw SandboxStartError("the seccomp filter cannot be built")
        }
        let joinsNetwork = try checkNetwork(networkPolicy)
        if joinsNetwork && access(ProcessRuntime.nsenterPath, X_OK) != 0 {
            throw SandboxStartError("NETWORK_ALLOWLIST needs nsenter at \(ProcessRuntime.nsenterPath) on the node")
        }
        let grantMounts: GrantMounts
        do {
            grantMounts = try GrantMounts(grants)
        } catch {
            throw SandboxStartError("cannot grant the sandbox its host paths: \(error.message)")
        }
        guard let user = resources.users.acquire() else {
            throw SandboxStartError("all \(resources.users.count) sandbox users are in use")
        }
        let limits = limits.jobLimits
        let scratch: JobScratch
        do throws(ScratchError) {
            scratch = try JobScratch.create(
                root: workRoot,
                name: "sandbox-" + id,
                sizeBytes: limits.fileSizeBytes,
                owner: (user, user),
                ledger: resources.ledger
            )
            for directory in ["home", "tmp", "root"] {
                let path = scratch.path + "/" + directory
                guard mkdir(path, directory == "tmp" ? 0o1777 : 0o755) == 0, chown(path, user, user) == 0,
                    chmod(path, directory == "tmp" ? 0o1777 : 0o755) == 0
                else {
                    let error = ScratchError.system("create", path)
                    _ = scratch.remove()
                    throw error
                }
            }
        } catch {
            resources.users.release(user)
            throw SandboxStartError("cannot create the sandbox's writable layer: \(error.description)")
        }
        let cgroup: JobCgroup
        do {
            cgroup = try JobCgroup.create(on: host, name: "sandbox-" + id, limits: limits, ledger: resources.ledger)
        } catch {
            _ = scratch.remove()
            resources.users.release(user)
            throw SandboxStartError("cannot create the sandbox's cgroup: \(error.description)")
        }
        var network: JobNetwork?
        if joinsNetwork {
            do {
                network = try await JobNetwork.create(
                    egress: try Egress(network: networkPolicy, grants: grants),
                    upstream: resources.dnsUpstream,
                    subnets: resources.subnets,
                    ledger: resources.ledger
                )
            } catch {
                try? await cgroup.remove()
                _ = scratch.remove()
                resources.users.release(user)
                throw SandboxStartError("cannot set up the sandbox's network: \(error.description)")
            }
        }
        var overlay: TemplateOverlay?
        if let rootfs = template.rootfs {
            do {
                overlay = try await mountLayer(
                    template: rootfs,
                    scratch: scratch.path,
                    user: user,
                    resolver: network?.resolver != nil,
                    ledger: resources.ledger
                )
            } catch {
                try? await cgroup.remove()
                await network?.remove()
                _ = scratch.remove()
                resources.users.release(user)
                throw error
            }
        }
        let started: (SandboxProcess, SandboxAgentChannel, String)
        do {
            started = try spawn(
                workRoot: workRoot,
                orphanTimeout: orphanTimeout,
                agentPath: agentPath,
                bubblewrapPath: bubblewrapPath,
                scratch: scratch.path,
                root: overlay?.layout,
                grants: grantMounts,
                network: network,
                cgroup: cgroup,
                limits: limits,
                seccomp: filter,
                user: user,
                ledger: resources.ledger,
                logger: logger
            )
        } catch {
            try? await cgroup.remove()
            await network?.remove()
            _ = overlay?.unmount()
            _ = scratch.remove()
            resources.users.release(user)
            throw error
        }
        let sandbox = ProcessSandbox(
            id: id,
            agent: started.1,
            leader: .child(started.0),
            cgroup: cgroup,
            scratch: scratch,
            overlay: overlay?.mounts,
            user: user,
            users: resources.users,
            network: network,
            savedNetwork: network?.saved(policy: networkPolicy, grants: grants),
            socketPath: started.2,
            ledger: resources.ledger
        )
        do {
            try await sandbox.waitUntilReady()
        } catch {
            let stderr = await sandbox.agentDiagnostics()
            _ = await sandbox.kill()
            throw SandboxStartError(error.description + (stderr.isEmpty ? "" : "; the agent said: \(stderr)"))
        }
        _ = await started.0.spawned()  // so that `saved` knows bubblewrap's pid
        return sandbox
    }

    /// Mounts the sandbox's writable layer over the template at `rootfs` in its scratch, with the
    /// template's ids shown as the sandbox's (root's files as its root, host uid `user`), and writes
    /// its accounts there.
    private static func mountLayer(
        template rootfs: String,
        scratch: String,
        user: UInt32,
        resolver: Bool,
        ledger: SandboxLedger
    ) async throws(SandboxStartError) -> TemplateOverlay {
        // A namespace with the sandbox's own mapping (host `user` as 0), only for the idmap: the
        // mount keeps what it needs of it.
        let idmap: OwnedUserNamespace
        do {
            idmap = try await OwnedUserNamespace.create(
                owner: user,
                mapping: OCIUserNamespace(hostID: user, size: 1),
                ledger: ledger
            )
        } catch {
            throw SandboxStartError("cannot map the template's ids for the sandbox: \(error.description)")
        }
        let mounted = Result { () throws(TemplateError) -> TemplateOverlay in
            try TemplateOverlay.mount(
                template: rootfs,
                in: scratch + "/layer",
                owner: user,
                idmap: idmap.path,
                userID: userID,
                resolver: resolver
            )
        }
        await idmap.remove()
        do {
            return try mounted.get()
        } catch {
            throw SandboxStartError("cannot make the sandbox's writable layer over its template: \(error.description)")
        }
    }

    /// Whether the sandbox joins a ``JobNetwork`` (`NETWORK_ALLOWLIST`); loopback only otherwise.
    /// An unknown mode is refused, never taken for one of these.
    static func checkNetwork(_ network: Hangar_V1_NetworkPolicy) throws(SandboxStartError) -> Bool {
        switch network.mode {
        case .networkNone, .networkLoopback:
            guard network.allow.isEmpty else {
                throw SandboxStartError("network.allow is only meaningful with NETWORK_ALLOWLIST")
            }
            return false
        case .networkAllowlist:
            return true
        case .UNRECOGNIZED(let value):
            throw SandboxStartError("network mode \(value) is not supported by stateful sandboxes")
        }
    }

    /// Spawns the limit shim, which joins the cgroup, sets rlimits and execs bubblewrap as `user`,
    /// which runs the agent as pid 1 of the sandbox. Fds: 3 the agent's socket, 4 the seccomp
    /// filter it installs in commands, 5… the `/etc` files bubblewrap writes. With `network`, the
    /// shim is started through `nsenter` in its namespace and bubblewrap makes no network namespace.
    private static func spawn(
        workRoot: String,
        orphanTimeout: Duration,
        agentPath: String,
        bubblewrapPath: String,
        scratch: String,
        root: TemplateRootfs?,
        grants: GrantMounts,
        network: JobNetwork?,
        cgroup: JobCgroup,
        limits: JobLimits,
        seccomp: SeccompFilter,
        user: UInt32,
        ledger: SandboxLedger,
        logger: Logger
    ) throws(SandboxStartError) -> (SandboxProcess, SandboxAgentChannel, String) {
        let (listening, socketPath) = try makeAgentSocket(workRoot: workRoot, ledger: ledger)
        func removeSocket() { removeAgentSocket(socketPath, ledger: ledger) }
        var files: [Int32] = [listening]
        defer { for fd in files { close(fd) } }
        // An allowlist sandbox runs in the network namespace the node prepared (entered before
        // bubblewrap starts); every other namespace is new.
        let namespaces =
            network == nil
            ? ["--unshare-all", "--unshare-user"]
            : ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        // Not `--die-with-parent`: the sandbox outlives its node, for the next to re-adopt.
        var arguments =
            ["bwrap"] + namespaces + [
                "--new-session", "--as-pid-1",
                "--cap-drop", "ALL", "--cap-add", "CAP_SETFCAP", "--cap-add", "CAP_SETPCAP",
                "--hostname", "sandbox", "--uid", "0", "--gid", "0", "--clearenv",
                "--setenv", "PATH", ProcessRuntime.defaultPath,
            ]
        // The host's system directories, or the template's entries from the sandbox's own layer.
        arguments += root?.bubblewrapArguments ?? BubblewrapInvocation.hostSystemArguments()
        arguments += ["--proc", "/proc", "--dev", "/dev"] + BubblewrapInvocation.procMasks
        arguments += [
            "--bind", scratch + "/home", SandboxEtc.home, "--bind", scratch + "/tmp", "/tmp",
            "--bind", scratch + "/root", "/root", "--ro-bind", agentPath, agentPathInside,
        ]
        // Granted host paths, at the same paths, read-only or read-write; denied ones inside hidden.
        arguments += grants.bubblewrapArguments
        do throws(InvalidJob) {
            files.append(try BubblewrapInvocation.memoryFile(holding: Data(seccomp.bytes)))
            // A template's are in its writable layer already (``TemplateOverlay/writeAccounts``).
            for file in SandboxEtc.files(uid: userID, gid: userID, resolver: network?.resolver != nil) where root == nil
            {
                files.append(try BubblewrapInvocation.memoryFile(holding: file.content))
                arguments += ["--perms", "0644", "--file", String(2 + files.count), file.path]
            }
        } catch {
            removeSocket()
            throw SandboxStartError(error.message)
        }
        arguments += [
            "--remount-ro", "/", "--chdir", "/", "--", agentPathInside, "--listen", "3", "--seccomp", "4",
        ]
        arguments += ["--orphan-ms", String(max(1, JobLimits.milliseconds(orphanTimeout)))]
        let shim = LimitShim(
            procsFiles: cgroup.procsFiles,
            limits: limits,
            program: bubblewrapPath,
            arguments: arguments,
            user: user
        )
        // nsenter execs the shim in the sandbox's network namespace: same pid, so wait and kill hold.
        let entered =
            network.map {
                (
                    executable: ProcessRuntime.nsenterPath,
                    arguments: ["nsenter", "--net=\($0.path)", "--", shim.executable] + shim.arguments.dropFirst()
                )
            } ?? (executable: shim.executable, arguments: shim.arguments)
        let command = SandboxCommand(
            executable: entered.executable,
            arguments: entered.arguments,
            timeout: lifetime,
            outputLimit: agentStderrBytes,
            inheritedFiles: files,
            containment: CgroupContainment(cgroup, cpuTime: nil),
            ledger: ledger
        )
        let process: SandboxProcess
        do {
            process = try SandboxProcess(command)
        } catch {
            removeSocket()
            throw SandboxStartError("cannot start bubblewrap: \(error.description)")
        }
        // The socket listens already: the connection waits in its backlog until the agent accepts.
        switch UnixSocket.connect(to: socketPath) {
        case .success(let fd):
            return (process, SandboxAgentChannel(socket: fd, logger: logger), socketPath)
        case .failure(let error):
            process.kill()
            removeSocket()
            throw SandboxStartError("cannot reach the agent: \(error)")
        }
    }

    /// A listening socket for one agent (`--listen`), `agent.sock` in a new root-only directory
    /// under `<workRoot>/agents`, noted in `ledger`: its fd (the caller closes it once the agent
    /// has it) and its path (to connect to, now and after a restart of the node).
    static func makeAgentSocket(
        workRoot: String,
        ledger: SandboxLedger
    ) throws(SandboxStartError) -> (listening: Int32, path: String) {
        let path = try makeSocketDirectory(workRoot: workRoot) + "/agent.sock"
        switch UnixSocket.listen(at: path) {
        case .success(let fd):
            ledger.made(.socket(path: path))
            return (fd, path)
        case .failure(let error):
            rmdir((path as NSString).deletingLastPathComponent)
            throw SandboxStartError("cannot make the agent's socket: \(error)")
        }
    }

    /// Removes an agent's socket and its directory (``makeAgentSocket(workRoot:ledger:)``).
    static func removeAgentSocket(_ path: String, ledger: SandboxLedger) {
        unlink(path)
        let directory = (path as NSString).deletingLastPathComponent
        // A gVisor agent's directory was bound into its sandbox: whatever else is there goes too.
        if rmdir(directory) != 0 && errno == ENOTEMPTY { try? FileManager.default.removeItem(atPath: directory) }
        ledger.gone(.socket(path: path))
    }

    /// A new root-only directory for one agent's socket under `<workRoot>/agents`.
    static func makeSocketDirectory(workRoot: String) throws(SandboxStartError) -> String {
        let root = workRoot + "/agents"
        for path in [workRoot, root] where mkdir(path, 0o711) != 0 && errno != EEXIST {
            throw SandboxStartError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        let path = root + "/" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        guard mkdir(path, 0o700) == 0 else {
            throw SandboxStartError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        return path
    }

    /// Re-adopts a sandbox that a node process before this one started (its registry entry):
    /// connects to its agent and waits for an answer. Nil, with the reason, when the sandbox is
    /// gone or its agent does not answer; then nothing of it is claimed, and the node's sweep takes
    /// it down. The caller notes ``Saved/resources`` in the node's ledger once it is open.
    static func adopt(
        _ saved: Saved,
        resources: NodeResources,
        logger: Logger
    ) async -> Result<ProcessSandbox, SandboxStartError> {
        guard SandboxLedger.startTime(of: saved.leaderPID) == saved.leaderStart else {
            return .failure(SandboxStartError("its bubblewrap (pid \(saved.leaderPID)) is gone"))
        }
        let (fd, network): (Int32, JobNetwork?)
        switch await reconnect(socket: saved.socket, hostUser: saved.hostUser, network: saved.network, resources) {
        case .success(let reclaimed): (fd, network) = reclaimed
        case .failure(let error): return .failure(error)
        }
        let sandbox = ProcessSandbox(
            id: saved.name,
            agent: SandboxAgentChannel(socket: fd, logger: logger),
            leader: .adopted(pid: saved.leaderPID, start: saved.leaderStart),
            cgroup: JobCgroup(version: saved.cgroupVersion, directories: saved.cgroup, ledger: resources.ledger),
            scratch: JobScratch(path: saved.scratch, ledger: resources.ledger),
            overlay: saved.overlay,
            user: saved.hostUser,
            users: resources.users,
            network: network,
            savedNetwork: saved.network,
            socketPath: saved.socket,
            ledger: resources.ledger
        )
        do {
            try await sandbox.waitUntilReady(within: adoptTimeout)
        } catch {
            sandbox.detach()
            if let network { resources.subnets.give(network.subnet) }
            if let user = saved.hostUser { resources.users.release(user) }
            return .failure(error)
        }
        return .success(sandbox)
    }

    /// Lets go of the sandbox without ending it (its node goes away, for the next to re-adopt
    /// it): hangs up on its agent, which keeps it, and stops its DNS resolver, which lives in the
    /// node process (the next node starts its own).
    func detach() {
        agent.close()
        network?.leave()
    }

    /// Connects to the agent of a sandbox being re-adopted, listening at `socket`, claims its host
    /// uid and takes its `network` over (``JobNetwork/adopt(_:upstream:subnets:ledger:)``), from
    /// `resources`: the connected fd and the network, or why not (then nothing is claimed).
    static func reconnect(
        socket: String,
        hostUser: UInt32?,
        network saved: JobNetwork.Saved?,
        _ resources: NodeResources
    ) async -> Result<(Int32, JobNetwork?), SandboxStartError> {
        let fd: Int32
        switch UnixSocket.connect(to: socket) {
        case .success(let connected): fd = connected
        case .failure(let error): return .failure(SandboxStartError("its agent cannot be reached: \(error)"))
        }
        if let hostUser, !resources.users.claim(hostUser) {
            close(fd)
            return .failure(SandboxStartError("its host uid \(hostUser) is not free on this node"))
        }
        guard let saved else { return .success((fd, nil)) }
        do {
            let network = try await JobNetwork.adopt(
                saved,
                upstream: resources.dnsUpstream,
                subnets: resources.subnets,
                ledger: resources.ledger
            )
            return .success((fd, network))
        } catch {
            close(fd)
            if let hostUser { resources.users.release(hostUser) }
            return .failure(SandboxStartError("its network cannot be taken over: \(error.description)"))
        }
    }

    /// Pings the agent until it answers, the sandbox dies or ``readyTimeout`` passes.
    private func waitUntilReady(within timeout: Duration = readyTimeout) async throws(SandboxStartError) {
        // The channel fails the ping when it is closed: the deadline closes it.
        let deadline = Task { [agent] in
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { agent.close() }
        }
        defer { deadline.cancel() }
        do {
            try await agent.ping()
        } catch {
            throw SandboxStartError(
                "the sandbox's agent did not answer within \(JobLimits.milliseconds(timeout)) ms: \(error)"
            )
        }
    }

    /// The agent's stderr once the sandbox has ended, for error messages.
    private func agentDiagnostics() async -> String {
        guard case .child(let process) = leader, process.hasEnded, let result = try? await process.wait() else {
            return ""
        }
        return String(decoding: result.stderr.prefix(500), as: UTF8.self).trimmingCharacters(
            in: .whitespacesAndNewlines
        )
    }

    /// Ends the sandbox and leaves nothing of it: hangs up on the agent, kills bubblewrap and every
    /// process of the sandbox's cgroup, waits for them, removes the cgroup, unmounts and removes the
    /// writable tmpfs, and gives the host uid back (only once the cgroup is gone, so no process of it
    /// can live on). Returns what could not be cleaned up, or nil. Calling it again waits for the
    /// first call and returns its answer.
    @discardableResult
    public func kill() async -> String? {
        let task = killed.withLock { task in
            if let task { return task }
            let started = Task { await self.tearDown() }
            task = started
            return started
        }
        return await task.value
    }

    private func tearDown() async -> String? {
        // Killed, the agent, the pid namespace's init, takes the rest of the sandbox with it (the
        // kernel kills every process of the namespace), and bubblewrap, its parent, reaps it and
        // exits. Killing bubblewrap first would leave the agent to whichever process adopts
        // orphans here, a zombie until that process reaps it. (Hung up on, the agent would wait
        // for the next node.)
        agent.close()
        if let agentPID = agentPID() { Glibc.kill(agentPID, SIGKILL) }
        let end = ContinuousClock.now + Self.hangUpGrace
        while !leader.hasEnded && ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(2)) }
        leader.kill()
        await cgroup.killAll()
        await leader.wait()
        if case .adopted(let pid, let start) = leader { ledger.gone(.process(pid: pid, start: start)) }
        Self.removeAgentSocket(socketPath, ledger: ledger)
        var problems: [String] = []
        do {
            try await cgroup.remove()
            if let hostUser { users.release(hostUser) }
        } catch {
            problems.append("the sandbox's cgroup was not removed: \(error)")
        }
        // Its processes are gone: nothing holds the namespace any more.
        if let network {
            await network.remove()
            if FileManager.default.fileExists(atPath: network.path) {
                problems.append("the sandbox's network namespace \(network.name) was not removed")
            }
        }
        if let problem = overlay?.unmount() { problems.append(problem) }
        if let problem = scratch.remove() { problems.append(problem) }
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }

    /// The agent's host pid: bubblewrap's only child (with `--as-pid-1` it forks once, and the
    /// child execs the agent as pid 1 of the sandbox); nil when bubblewrap has none (any more).
    private func agentPID() -> pid_t? {
        guard let pid = leader.pid, !leader.hasEnded,
            let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
        else { return nil }
        let children = text.split(separator: " ").compactMap {
            pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return children.count == 1 ? children[0] : nil
    }
}
