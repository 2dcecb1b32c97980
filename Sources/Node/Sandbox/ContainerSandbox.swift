import Foundation
import Glibc
import HangarShared
import Logging
import Synchronization

/// What a node's stateful sandboxes of either kind have in common for their host: the agent's
/// channel, and a kill that leaves nothing behind.
protocol StatefulSandbox: Sendable {
    /// The channel to the sandbox's agent.
    var agent: SandboxAgentChannel { get }
    /// Ends the sandbox and cleans up; what could not be cleaned up, or nil.
    func kill() async -> String?
    /// Lets go of the sandbox without ending it, as its node goes away (see
    /// ``ProcessSandbox/detach()``).
    func detach()
}

extension StatefulSandbox {
    /// Hangs up on the agent: what the node holds of the sandbox is the channel.
    func detach() { agent.close() }
}

extension ProcessSandbox: StatefulSandbox {}

/// A long-lived runc container with ``hangar-sandbox-agent`` as its process: a stateful sandbox of
/// the `container` runtime, which runs many commands and file operations over its ``agent`` channel
/// until ``kill()``. Its agent speaks the same protocol as a ``ProcessSandbox``'s.
///
/// The container is built like a one-shot job of ``ContainerRuntime`` on the `host` template
/// (``OCIJobConfig``, ``OCIBundle``): the host's `/usr` and system directories read-only, the
/// sandbox's own `/etc` files (``SandboxEtc``, `user` is uid 1000), a root of its own that is
/// read-only, fresh pid/ipc/uts/mount/network/cgroup namespaces (the network has only loopback;
/// with `NETWORK_ALLOWLIST` it is a ``JobNetwork`` made in the namespace its user namespace owns,
/// as for an allowlist job of the container runtime; host path grants are bind mounts as for jobs),
/// Docker's masked paths, the container runtime's seccomp profile, a user namespace owned by a uid
/// of the sandbox's own (``OwnedUserNamespace``) and one cgroup with the sandbox's memory, pids and
/// CPU limits. What differs from a job: the process is the agent, bound read-only at
/// `/.hangar/agent`, as the container's uid 0 with only CAP_SETFCAP and CAP_SETPCAP (what the
/// agent needs to run commands as uid 1000 in a nested user namespace, or as uid 0 without any
/// capability); the seccomp profile also lets `unshare(CLONE_NEWUSER)` through for that, and the
/// agent installs the node's standard filter (the one of process sandboxes) in every command.
/// `/home/user`, `/root` and `/tmp` are tmpfs mounts of the container's own mount namespace, each
/// the size of ``SandboxLimits/diskBytes`` (their pages count against the memory limit too): the
/// host sees none of what is written there. `/etc/fonts` is bound read-only as in process
/// sandboxes (for matplotlib). The agent's socket and the filter reach it as fds 3
/// and 4 through runc's `--preserve-fds`.
///
/// Restarts: the agent of a runc container listens on a socket the node made
/// (``ProcessSandbox/makeAgentSocket(workRoot:ledger:)``, never inside the container) and keeps
/// the container when its node goes away, as a ``ProcessSandbox``'s does: the node's next process
/// re-adopts it from its ``Saved`` state (``adopt(_:engine:logger:)``), an allowlist network and
/// its resolver included. A gVisor sandbox is kept the same way: runsc passes a container no
/// descriptor beyond its stdio, so its agent makes its socket itself (`--listen-path`) in a
/// root-only host directory of the node's bound at ``channelInside``. runsc runs it with
/// `--host-uds=create`: the sandbox may create host sockets but connect to none, so only the host
/// reaches the agent; once it listens, the node makes the directory read-only to everyone in the
/// sandbox, so no command can put a socket of its own in its place.
///
/// Killing: ``kill()`` hangs up on the agent and kills it (the container's init; gVisor's sandbox
/// process), then kills and deletes the container with runc (runsc), removes its cgroup,
/// bundle, socket and network and gives the user namespace and its uid back.
public final class ContainerSandbox: Sendable {
    /// The sandbox's name.
    public let id: String
    /// The runc container's id.
    public let containerID: String
    /// The channel to the sandbox's agent.
    public let agent: SandboxAgentChannel
    /// The bundle directory on the host (config.json and the mount points of the root).
    public let bundlePath: String
    /// The sandbox's cgroup directories.
    public var cgroupDirectories: [String] { cgroup.allDirectories }
    /// The name of its network namespace (under `/run/netns`) when it has an allowlist network.
    public var networkNamespace: String? { network?.name }
    /// The host end of its veth pair when it has an allowlist network.
    public var networkInterface: String? { network?.hostInterface }

    private let engine: OCIEngine
    private let network: JobNetwork?
    /// Its network as the registry keeps it (with the policy and grants it was made from).
    private let savedNetwork: JobNetwork.Saved?
    /// `runc run` (runsc's), started by this node process; nil in a sandbox re-adopted from the
    /// node process before.
    private let process: SandboxProcess?
    /// The `runc run` that started a re-adopted sandbox (it outlived its node; its pid and start
    /// time).
    private let adoptedRun: (pid: Int32, start: UInt64)?
    private let cgroup: JobCgroup
    private let bundle: OCIBundle
    private let layer: WritableLayer?
    /// The user namespace the container joined, while this node holds it (nil when re-adopted:
    /// the namespace lives on in the container's processes), and the sandbox's host uid.
    private let namespace: OwnedUserNamespace?
    private let hostUser: UInt32?
    /// The agent's listening socket (runc: `--listen`, the node's; gVisor: `--listen-path`, the
    /// agent's, in a directory of the node's).
    private let socketPath: String?
    /// The agent's host pid and start time (the container's init), once known.
    private let agentInit: (pid: Int32, start: UInt64)?
    private let killed = Mutex<Task<String?, Never>?>(nil)

    /// What the node's registry keeps of a container sandbox that outlives its node (see
    /// ``ProcessSandbox/Saved``): enough to reconnect to its agent and, later, to kill it and
    /// remove everything of it.
    public struct Saved: Codable, Sendable, Equatable {
        /// ``ContainerSandbox/id``.
        var name: String
        var containerID: String
        /// The agent's listening socket.
        var socket: String
        /// Whether runsc runs it (runtime `gvisor`); nil for runc (and in entries from before gVisor
        /// sandboxes were kept).
        var gVisor: Bool?
        /// The agent's host pid and start time: the container's init (gVisor: its sandbox process,
        /// the sentry).
        var agentPID: Int32
        var agentStart: UInt64
        /// `runc run`'s pid and start time.
        var runPID: Int32
        var runStart: UInt64
        /// The runtime's executable and global arguments, as in the node's ledger.
        var tool: String
        var globalArguments: [String]
        var bundle: String
        var cgroupVersion: CgroupVersion
        var cgroup: ControllerDirectories
        /// The writable layer over a directory template: its tmpfs and the overlay's mounts.
        var layerScratch: String?
        var overlay: TemplateOverlay.Mounts?
        var hostUser: UInt32?
        /// Its allowlist network, if it has one.
        var network: JobNetwork.Saved?

        /// What the node's ledger lists for the sandbox: kept (not swept) when it is re-adopted.
        var resources: [SandboxLedger.Resource] {
            var resources: [SandboxLedger.Resource] = [
                .container(tool: tool, globalArguments: globalArguments, id: containerID, bundle: bundle),
                .scratch(path: bundle + "/rootfs"), .process(pid: runPID, start: runStart), .socket(path: socket),
            ]
            resources += cgroup.distinct.map { .cgroup(directory: $0) }
            if let layerScratch { resources.append(.scratch(path: layerScratch)) }
            if let network { resources.append(.network(namespace: network.name, hostInterface: network.hostInterface)) }
            return resources
        }
    }

    /// What the node's registry keeps of it, to outlive its node; nil while its agent's host pid
    /// is not known.
    public var saved: Saved? {
        if network != nil && savedNetwork == nil { return nil }
        guard let socketPath, let agentInit,
            let run = adoptedRun
                ?? process?.pid.flatMap({ pid in
                    SandboxLedger.startTime(of: pid).map { (pid: pid, start: $0) }
                })
        else { return nil }
        return Saved(
            name: id,
            containerID: containerID,
            socket: socketPath,
            gVisor: engine.isGVisor ? true : nil,
            agentPID: agentInit.pid,
            agentStart: agentInit.start,
            runPID: run.pid,
            runStart: run.start,
            tool: engine.executable,
            globalArguments: engine.globalArguments,
            bundle: bundle.path,
            cgroupVersion: cgroup.version,
            cgroup: cgroup.directories,
            layerScratch: layer?.scratch.path,
            overlay: layer?.mounts,
            hostUser: hostUser,
            network: savedNetwork
        )
    }

    /// How long runc and the agent may take until the agent answers its first ping.
    static let readyTimeout = Duration.seconds(20)
    /// `CLONE_NEWUSER`, the only `unshare` the container's seccomp profile lets through.
    static let cloneNewUser: UInt64 = 0x1000_0000

    private init(
        id: String,
        containerID: String,
        agent: SandboxAgentChannel,
        engine: OCIEngine,
        process: SandboxProcess?,
        adoptedRun: (pid: Int32, start: UInt64)? = nil,
        cgroup: JobCgroup,
        bundle: OCIBundle,
        layer: WritableLayer?,
        namespace: OwnedUserNamespace?,
        hostUser: UInt32?,
        network: JobNetwork?,
        savedNetwork: JobNetwork.Saved?,
        socketPath: String?,
        agentInit: (pid: Int32, start: UInt64)?
    ) {
        self.network = network
        self.savedNetwork = savedNetwork
        self.layer = layer
        self.id = id
        self.containerID = containerID
        self.agent = agent
        self.bundlePath = bundle.path
        self.engine = engine
        self.process = process
        self.adoptedRun = adoptedRun
        self.cgroup = cgroup
        self.bundle = bundle
        self.namespace = namespace
        self.hostUser = hostUser
        self.socketPath = socketPath
        self.agentInit = agentInit
    }

    /// Starts a container sandbox with `runtime`'s runc, directories and node resources, and waits
    /// until its agent answers.
    /// - Parameters:
    ///   - id: a name for the sandbox (the container's id is derived from it).
    ///   - grants: host paths bound into it (as the scheduler normalized them).
    ///   - network: loopback only (`NETWORK_NONE`, `NETWORK_LOOPBACK`, the default), or
    ///     `NETWORK_ALLOWLIST`: egress to `network.allow` only, in a ``JobNetwork``.
    ///   - agentPath: the static agent binary (``ProcessSandbox/locateAgent()``).
    public static func start(
        id: String,
        limits: SandboxLimits = SandboxLimits(),
        grants: Hangar_V1_Grants = Hangar_V1_Grants(),
        network networkPolicy: Hangar_V1_NetworkPolicy = Hangar_V1_NetworkPolicy(),
        agentPath: String,
        runtime: ContainerRuntime = ContainerRuntime(),
        logger: Logger = Logger(label: "hangar.sandbox")
    ) async throws(SandboxStartError) -> ContainerSandbox {
        try await start(
            id: id,
            limits: limits,
            grants: grants,
            network: networkPolicy,
            agentPath: agentPath,
            engine: runtime.engine,
            logger: logger
        )
    }

    /// Where a gVisor sandbox's agent reads the filter it installs in commands.
    static let filterPathInside = "/.hangar/seccomp"
    /// Where a gVisor sandbox's agent makes its socket (`agent.sock`): a root-only host directory
    /// of the node's, bound here.
    static let channelInside = "/.hangar/channel"

    /// Starts a sandbox with `engine`: runc's (runtime `container`, as above) or runsc's (runtime
    /// `gvisor`, ``GVisorRuntime``). A gVisor sandbox is the same container run by runsc, so the
    /// agent and its commands talk to gVisor's kernel: no user namespace of the node's (runsc makes
    /// its own), the seccomp profile enforced inside by runsc (`--oci-seccomp`), and, since runsc
    /// hands a container only its stdio, the agent's own socket in a host folder bound at
    /// ``channelInside`` and the commands' filter read from a file bound at ``filterPathInside``.
    /// Only loopback: runsc runs
    /// with `--network=none`, so `NETWORK_ALLOWLIST` is refused.
    ///
    /// On a directory `template`, the container's root holds the template's top-level entries,
    /// bound read-write from a writable layer of the sandbox's own (``TemplateOverlay``, its upper
    /// layer on a host tmpfs of the disk limit, the template's ids mapped to the container's), in
    /// place of the host's system directories.
    static func start(
        id: String,
        limits: SandboxLimits = SandboxLimits(),
        grants: Hangar_V1_Grants = Hangar_V1_Grants(),
        network networkPolicy: Hangar_V1_NetworkPolicy = Hangar_V1_NetworkPolicy(),
        template: Template = .host,
        agentPath: String,
        engine: OCIEngine,
        logger: Logger = Logger(label: "hangar.sandbox")
    ) async throws(SandboxStartError) -> ContainerSandbox {
        let gVisor = engine.isGVisor
        let kind = gVisor ? "gvisor" : "container"
        guard geteuid() == 0 else {
            throw SandboxStartError("a stateful \(kind) sandbox needs a node running as root")
        }
        guard access(agentPath, X_OK) == 0 else { throw SandboxStartError("no sandbox agent at \(agentPath)") }
        guard access(engine.executable, X_OK) == 0 else {
            throw SandboxStartError("\(engine.toolName) not found at \(engine.executable)")
        }
        guard case .success(let filter) = ProcessRuntime.seccomp else {
            throw SandboxStartError("the seccomp filter cannot be built")
        }
        let jobLimits = limits.jobLimits
        var job = Hangar_V1_JobSpec()
        job.template = "host"
        job.limits.memoryBytes = jobLimits.memoryBytes
        job.limits.pids = jobLimits.pids
        job.limits.cpuMillis = jobLimits.cpuMillis
        job.limits.fileSizeBytes = jobLimits.fileSizeBytes
        job.limits.openFiles = jobLimits.openFiles
        job.grants = grants
        let joinsNetwork = try ProcessSandbox.checkNetwork(networkPolicy)
        if joinsNetwork && gVisor {
            throw SandboxStartError(
                "NETWORK_ALLOWLIST is not enforced in gvisor sandboxes (runsc runs them with --network=none, loopback only); use process or container"
            )
        }
        if joinsNetwork { job.network = networkPolicy }
        // A container outlives its node: its agent listens for the node's next process to
        // reconnect. runc's listens on a socket the node made (fd 3); runsc passes a container no
        // descriptor beyond its stdio, so a gVisor one's agent makes its socket itself, in the
        // host directory bound at ``channelInside`` (see ``start(id:job:filter:agentPath:engine:layer:owned:network:savedNetwork:killed:logger:)``).
        let orphanMilliseconds = String(max(1, JobLimits.milliseconds(ProcessSandbox.orphanTimeout)))
        job.argv =
            gVisor
            ? [
                ProcessSandbox.agentPathInside, "--listen-path", channelInside + "/agent.sock", "--seccomp-file",
                filterPathInside, "--orphan-ms", orphanMilliseconds,
            ]
            : [ProcessSandbox.agentPathInside, "--listen", "3", "--seccomp", "4", "--orphan-ms", orphanMilliseconds]
        var owned: (namespace: OwnedUserNamespace, user: UInt32)?
        if let mapping = engine.configOptions(cgroupsPath: "").userNamespace {
            // A user-namespaced container may only join a network namespace its own user namespace
            // owns: an allowlist sandbox's user namespace is made with one (as for jobs).
            switch await engine.ownUserNamespace(mapping: mapping, limits: job.limits, network: joinsNetwork) {
            case .success(let created): owned = created
            case .failure(let error): throw SandboxStartError(error.description)
            }
        }
        var network: JobNetwork?
        if joinsNetwork {
            do {
                network = try await JobNetwork.create(
                    egress: try Egress(network: networkPolicy, grants: grants),
                    upstream: engine.resources.dnsUpstream,
                    namespaceOf: owned?.namespace.pid,
                    subnets: engine.resources.subnets,
                    ledger: engine.resources.ledger
                )
            } catch {
                await owned?.namespace.remove()
                if let owned { engine.resources.users.release(owned.user) }
                throw SandboxStartError("cannot set up the sandbox's network: \(error.description)")
            }
        }
        // The host uid of the container's root: its user namespace's first mapped id (gVisor maps
        // none of the node's: host root).
        let rootOwner = owned == nil ? 0 : engine.configOptions(cgroupsPath: "").userNamespace?.hostID ?? 0
        var killed = false
        var layer: WritableLayer?
        do {
            if let rootfs = template.rootfs {
                layer = try mountLayer(
                    template: rootfs,
                    id: id,
                    diskBytes: jobLimits.fileSizeBytes,
                    owner: rootOwner,
                    idmap: owned?.namespace.path,
                    resolver: network?.resolver != nil,
                    ledger: engine.resources.ledger
                )
            }
            return try await start(
                id: id,
                job: job,
                filter: filter,
                agentPath: agentPath,
                engine: engine,
                layer: layer,
                owned: owned,
                network: network,
                savedNetwork: network?.saved(policy: networkPolicy, grants: grants),
                killed: &killed,
                logger: logger
            )
        } catch {
            // A sandbox that got as far as its agent was killed, and its kill removed these: never
            // twice (the subnet or uid may belong to another sandbox by now).
            if !killed {
                _ = layer?.remove()
                await network?.remove()
                await owned?.namespace.remove()
                if let owned { engine.resources.users.release(owned.user) }
            }
            throw error
        }
    }

    private static func start(
        id: String,
        job: Hangar_V1_JobSpec,
        filter: SeccompFilter,
        agentPath: String,
        engine: OCIEngine,
        layer: WritableLayer?,
        owned: (namespace: OwnedUserNamespace, user: UInt32)?,
        network: JobNetwork?,
        savedNetwork: JobNetwork.Saved?,
        killed: inout Bool,
        logger: Logger
    ) async throws(SandboxStartError) -> ContainerSandbox {
        guard let version = JobCgroup.mountedVersion() else { throw SandboxStartError("no usable cgroup hierarchy") }
        let containerID = OCIEngine.containerID(for: "sandbox-" + id)
        let gVisor = engine.isGVisor
        let ledger = engine.resources.ledger
        let cgroupPath = engine.directories.cgroupParent + "/" + containerID
        let cgroup = JobCgroup.placed(at: cgroupPath, version: version, ledger: ledger)
        var options = engine.configOptions(cgroupsPath: "/" + cgroupPath)
        options.userNamespacePath = owned?.namespace.path
        let config: OCIJobConfig
        let bundle: OCIBundle
        do {
            let resolved = try Template.resolve(job, in: engine.templates)
            options.root = try layer?.layout ?? resolved.template.layout()
            config = try OCIJobConfig(job: resolved.spec, options: options, network: network?.path)
            bundle = try OCIBundle(
                base: engine.directories.bundles,
                name: containerID,
                config: config,
                userNamespace: options.userNamespace,
                ledger: ledger
            )
            ledger.made(engine.ledgerEntry(id: containerID, bundle: bundle))
        } catch let error as TemplateError {
            throw SandboxStartError(error.description)
        } catch let error as OCIInvalidJob {
            throw SandboxStartError(error.message)
        } catch {
            throw SandboxStartError("\(error)")
        }
        // The container's ends (fds 3 and 4 of runc): closed here once runc has them, so that the
        // node's end sees the agent go as soon as the container does.
        var files: [Int32] = []
        var node: Int32 = -1
        var socketPath: String?
        // A gVisor sandbox's agent makes its socket in this host directory (bound into it).
        var channel: String?
        do throws(SandboxStartError) {
            if gVisor {
                let directory = try ProcessSandbox.makeSocketDirectory(workRoot: ProcessSandbox.defaultWorkRoot)
                channel = directory
                socketPath = directory + "/agent.sock"
                ledger.made(.socket(path: directory + "/agent.sock"))
            }
            try adapt(
                bundle: bundle.path,
                config: config,
                agentPath: agentPath,
                diskBytes: job.limits.fileSizeBytes,
                resolver: network?.resolver != nil,
                filterFile: gVisor ? Data(filter.bytes) : nil,
                channel: channel,
                hostFonts: layer == nil
            )
            do throws(CgroupError) {
                try cgroup.make(CgroupLimits(config.spec.linux.resources))
            } catch {
                throw SandboxStartError("cannot create the sandbox's cgroup: \(error.description)")
            }
            if !gVisor {
                let (listening, path) = try ProcessSandbox.makeAgentSocket(
                    workRoot: ProcessSandbox.defaultWorkRoot,
                    ledger: ledger
                )
                files.append(listening)
                socketPath = path
            }
            if !gVisor {
                do throws(InvalidJob) {
                    files.append(try BubblewrapInvocation.memoryFile(holding: Data(filter.bytes)))
                } catch {
                    throw SandboxStartError(error.message)
                }
            }
        } catch {
            for fd in files { close(fd) }
            if node >= 0 { close(node) }
            if let socketPath { ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger) }
            _ = await engine.teardown(id: containerID, killFirst: false, cgroup: cgroup, bundle: bundle)
            throw error
        }
        var arguments = [engine.toolName] + engine.globalArguments
        arguments += ["--log", bundle.path + "/\(engine.toolName).log", "--log-format", "json", "run"]
        if gVisor {
            // The agent may create its socket in the bound host directory; nothing in the sandbox
            // may connect to a host socket (`open` is not granted).
            arguments.insert("--host-uds=create", at: 1 + engine.globalArguments.count)
            arguments += ["--bundle", bundle.path, containerID]
        } else {
            arguments += ["--keep", "--preserve-fds", String(files.count), "--bundle", bundle.path, containerID]
        }
        var command = OCIEngine.launching(
            SandboxCommand(
                executable: engine.executable,
                arguments: arguments,
                environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                timeout: ProcessSandbox.lifetime,
                outputLimit: ProcessSandbox.agentStderrBytes,
                inheritedFiles: files,
                drainTimeout: OCIEngine.drainTimeout,
                containment: CgroupContainment(cgroup, cpuTime: nil),
                ledger: ledger
            ),
            under: config.inheritedRlimits
        )
        command.relaysOutput = engine.relaysOutput
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        for fd in files { close(fd) }
        let process: SandboxProcess
        do {
            process = try spawned.get()
        } catch {
            if node >= 0 { close(node) }
            if let socketPath { ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger) }
            _ = await engine.teardown(id: containerID, killFirst: true, cgroup: cgroup, bundle: bundle)
            throw SandboxStartError("cannot start runc: \(error.description)")
        }
        if let socketPath {
            // runc's socket listens already: the connection waits in its backlog until the agent
            // accepts. A gVisor agent makes its own once the sandbox has booted.
            switch await connect(to: socketPath, madeByAgent: gVisor, while: process) {
            case .success(let fd):
                node = fd
                // Bound, the socket must stay the agent's: no command (not even a "root" one, uid 0
                // without capabilities) may remove it or put one of its own there.
                if let channel, chown(channel, 65534, 65534) != 0 || chmod(channel, 0o555) != 0 {
                    let why = String(cString: strerror(errno))
                    close(fd)
                    process.kill()
                    _ = try? await process.wait()
                    ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger)
                    _ = await engine.teardown(id: containerID, killFirst: true, cgroup: cgroup, bundle: bundle)
                    throw SandboxStartError("cannot make the agent's socket folder \(channel) read-only: \(why)")
                }
            case .failure(let error):
                process.kill()
                _ = try? await process.wait()
                ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger)
                _ = await engine.teardown(id: containerID, killFirst: true, cgroup: cgroup, bundle: bundle)
                throw SandboxStartError("cannot reach the agent: \(error)")
            }
        }
        var sandbox = ContainerSandbox(
            id: id,
            containerID: containerID,
            agent: SandboxAgentChannel(socket: node, logger: logger),
            engine: engine,
            process: process,
            cgroup: cgroup,
            bundle: bundle,
            layer: layer,
            namespace: owned?.namespace,
            hostUser: owned?.user,
            network: network,
            savedNetwork: savedNetwork,
            socketPath: socketPath,
            agentInit: nil
        )
        do {
            try await sandbox.waitUntilReady()
        } catch {
            let diagnostics = await sandbox.diagnostics()
            killed = true
            _ = await sandbox.kill()
            throw SandboxStartError(error.description + (diagnostics.isEmpty ? "" : "; runc said: \(diagnostics)"))
        }
        _ = await process.spawned()  // so that `saved` knows the runtime's pid
        if socketPath != nil {
            // The agent is the container's init: its host pid, to kill it (hung up on, it would
            // wait for the next node) and to tell, after a restart, that the sandbox still runs.
            guard let pid = await sandbox.agentHostPID(), let start = SandboxLedger.startTime(of: pid) else {
                killed = true
                _ = await sandbox.kill()
                throw SandboxStartError("\(engine.toolName) state names no running init of the container")
            }
            sandbox = sandbox.knowing(agentInit: (pid, start))
        }
        return sandbox
    }

    /// Connects to the agent's socket at `path`; with `madeByAgent` (gVisor) it may not be there
    /// yet: tried again until it is, `process` ends or ``readyTimeout`` passes.
    private static func connect(
        to path: String,
        madeByAgent: Bool,
        while process: SandboxProcess
    ) async -> Result<Int32, UnixSocketError> {
        let deadline = ContinuousClock.now + readyTimeout
        var pause = Duration.milliseconds(1)
        while true {
            let attempt = UnixSocket.connect(to: path)
            guard madeByAgent, case .failure = attempt, !process.hasEnded, ContinuousClock.now < deadline else {
                return attempt
            }
            try? await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(5))
        }
    }

    /// The same sandbox, its agent's host pid known.
    private func knowing(agentInit: (pid: Int32, start: UInt64)) -> ContainerSandbox {
        ContainerSandbox(
            id: id,
            containerID: containerID,
            agent: agent,
            engine: engine,
            process: process,
            adoptedRun: adoptedRun,
            cgroup: cgroup,
            bundle: bundle,
            layer: layer,
            namespace: namespace,
            hostUser: hostUser,
            network: network,
            savedNetwork: savedNetwork,
            socketPath: socketPath,
            agentInit: agentInit
        )
    }

    /// Re-adopts a container sandbox that a node process before this one started (its registry
    /// entry), with `engine` (runc's): connects to its agent and waits for an answer. Nil, with the
    /// reason, when the container is gone or its agent does not answer; then nothing of it is
    /// claimed, and the node's sweep takes it down. The caller notes ``Saved/resources`` in the
    /// node's ledger once it is open.
    static func adopt(
        _ saved: Saved,
        engine: OCIEngine,
        logger: Logger
    ) async -> Result<ContainerSandbox, SandboxStartError> {
        let resources = engine.resources
        guard SandboxLedger.startTime(of: saved.agentPID) == saved.agentStart else {
            return .failure(SandboxStartError("its container's init (pid \(saved.agentPID)) is gone"))
        }
        guard saved.tool == engine.executable, saved.globalArguments == engine.globalArguments else {
            return .failure(SandboxStartError("it was started by \(saved.tool), not this node's \(engine.executable)"))
        }
        let (fd, network): (Int32, JobNetwork?)
        switch await ProcessSandbox.reconnect(
            socket: saved.socket,
            hostUser: saved.hostUser,
            network: saved.network,
            resources
        ) {
        case .success(let reclaimed): (fd, network) = reclaimed
        case .failure(let error): return .failure(error)
        }
        let sandbox = ContainerSandbox(
            id: saved.name,
            containerID: saved.containerID,
            agent: SandboxAgentChannel(socket: fd, logger: logger),
            engine: engine,
            process: nil,
            adoptedRun: (saved.runPID, saved.runStart),
            cgroup: JobCgroup(version: saved.cgroupVersion, directories: saved.cgroup, ledger: resources.ledger),
            bundle: OCIBundle(adopting: saved.bundle, ledger: resources.ledger),
            layer: saved.layerScratch.map { scratch in
                WritableLayer(
                    scratch: JobScratch(path: scratch, ledger: resources.ledger),
                    mounts: saved.overlay ?? TemplateOverlay.Mounts(root: scratch + "/layer/root", lower: nil),
                    layout: nil
                )
            },
            namespace: nil,
            hostUser: saved.hostUser,
            network: network,
            savedNetwork: saved.network,
            socketPath: saved.socket,
            agentInit: (saved.agentPID, saved.agentStart)
        )
        do {
            try await sandbox.waitUntilReady(within: ProcessSandbox.adoptTimeout)
        } catch {
            sandbox.detach()
            if let network { resources.subnets.give(network.subnet) }
            if let user = saved.hostUser { resources.users.release(user) }
            return .failure(error)
        }
        return .success(sandbox)
    }

    /// A directory template sandbox's writable layer: the overlay, and the host tmpfs (of the disk
    /// limit) its upper layer is on.
    struct WritableLayer: Sendable {
        let scratch: JobScratch
        let mounts: TemplateOverlay.Mounts
        /// The merged tree's top-level entries (for the bundle; nil in a re-adopted sandbox).
        let layout: TemplateRootfs?

        /// Unmounts both; what could not be, or nil.
        func remove() -> String? {
            let problems = [mounts.unmount(), scratch.remove()].compactMap { $0 }
            return problems.isEmpty ? nil : problems.joined(separator: "; ")
        }
    }

    /// Mounts the writable layer of sandbox `id` over the template at `rootfs`, on a host tmpfs
    /// of `diskBytes`, owned by host uid `owner` (the container's root) with the template's ids
    /// mapped through `idmap`.
    private static func mountLayer(
        template rootfs: String,
        id: String,
        diskBytes: UInt64,
        owner: UInt32,
        idmap: String?,
        resolver: Bool,
        ledger: SandboxLedger
    ) throws(SandboxStartError) -> WritableLayer {
        let scratch: JobScratch
        do throws(ScratchError) {
            scratch = try JobScratch.create(
                root: ProcessSandbox.defaultWorkRoot,
                name: "layer-" + id,
                sizeBytes: diskBytes,
                owner: (owner, owner),
                ledger: ledger
            )
        } catch {
            throw SandboxStartError("cannot create the sandbox's writable layer: \(error.description)")
        }
        do throws(TemplateError) {
            let overlay = try TemplateOverlay.mount(
                template: rootfs,
                in: scratch.path + "/layer",
                owner: owner,
                idmap: idmap,
                userID: ProcessSandbox.userID,
                resolver: resolver
            )
            return WritableLayer(scratch: scratch, mounts: overlay.mounts, layout: overlay.layout)
        } catch {
            _ = scratch.remove()
            throw SandboxStartError("cannot make the sandbox's writable layer over its template: \(error.description)")
        }
    }

    /// Turns a one-shot job's bundle into the sandbox's: the agent as uid 0 with CAP_SETFCAP and
    /// CAP_SETPCAP, `unshare(CLONE_NEWUSER)` allowed, the agent bound at `/.hangar/agent`, tmpfs
    /// mounts for `/home/user` and `/root`, and `/etc` files naming `user` uid 1000.
    private static func adapt(
        bundle: String,
        config: OCIJobConfig,
        agentPath: String,
        diskBytes: UInt64,
        resolver: Bool,
        filterFile: Data?,
        channel: String?,
        hostFonts: Bool
    ) throws(SandboxStartError) {
        var spec = config.spec
        spec.process.user = OCIUser(uid: 0, gid: 0, additionalGids: [0])
        let capabilities = ["CAP_SETFCAP", "CAP_SETPCAP"]
        spec.process.capabilities = OCICapabilities(
            bounding: capabilities,
            effective: capabilities,
            inheritable: [],
            permitted: capabilities,
            ambient: []
        )
        spec.process.cwd = "/"
        spec.process.env = ["PATH=" + ProcessRuntime.defaultPath]
        let home = ["nosuid", "nodev", "mode=755", "size=\(diskBytes)"]
        spec.mounts += [
            OCIMount(destination: SandboxEtc.home, type: "tmpfs", source: "tmpfs", options: home),
            OCIMount(
                destination: "/root",
                type: "tmpfs",
                source: "tmpfs",
                options: ["nosuid", "nodev", "mode=700", "size=\(diskBytes)"]
            ),
            OCIMount(
                destination: ProcessSandbox.agentPathInside,
                type: "bind",
                source: agentPath,
                options: ["bind", "ro", "nosuid", "nodev"]
            ),
        ]
        // As in process sandboxes: matplotlib finds its fonts' configuration (read-only); a
        // template has its own.
        let fonts = hostFonts && FileManager.default.fileExists(atPath: "/etc/fonts")
        if fonts { spec.mounts.append(OCIJobConfig.readOnlyBind("/etc/fonts")) }
        if filterFile != nil {
            spec.mounts.append(
                OCIMount(
                    destination: filterPathInside,
                    type: "bind",
                    source: bundle + "/seccomp",
                    options: ["bind", "ro", "nosuid", "nodev"]
                )
            )
        }
        if let channel {
            spec.mounts.append(
                OCIMount(
                    destination: channelInside,
                    type: "bind",
                    source: channel,
                    options: ["bind", "rw", "nosuid", "nodev", "noexec"]
                )
            )
        }
        spec.linux.seccomp?.syscalls.append(
            OCISyscallRule(
                names: ["unshare"],
                action: "SCMP_ACT_ALLOW",
                args: [OCISyscallArgument(index: 0, value: cloneNewUser, op: "SCMP_CMP_EQ")]
            )
        )
        let rootfs = bundle + "/rootfs"
        let directories = ["home", "home/user", "root", ".hangar"] + (channel != nil ? [".hangar/channel"] : [])
        for directory in directories + (fonts ? ["etc/fonts"] : []) {
            guard mkdir(rootfs + "/" + directory, 0o755) == 0 || errno == EEXIST else {
                throw SandboxStartError("cannot create \(rootfs)/\(directory): \(String(cString: strerror(errno)))")
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            try Data().write(to: URL(fileURLWithPath: rootfs + "/.hangar/agent"))
            if let filterFile {
                try Data().write(to: URL(fileURLWithPath: rootfs + filterPathInside))
                try filterFile.write(to: URL(fileURLWithPath: bundle + "/seccomp"))
            }
            for file in SandboxEtc.files(uid: ProcessSandbox.userID, gid: ProcessSandbox.userID, resolver: resolver) {
                try file.content.write(to: URL(fileURLWithPath: rootfs + file.path))
            }
            try encoder.encode(spec).write(to: URL(fileURLWithPath: bundle + "/config.json"))
        } catch {
            throw SandboxStartError("cannot write the sandbox's bundle: \(error.localizedDescription)")
        }
    }

    /// Pings the agent until it answers, the container dies or ``readyTimeout`` passes.
    private func waitUntilReady(within timeout: Duration = readyTimeout) async throws(SandboxStartError) {
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

    /// runc's (runsc's) log and the agent's stderr once the container has ended, for error messages.
    private func diagnostics() async -> String {
        let log = bundle.path + "/\(engine.toolName).log"
        let failure = OCIEngine.runtimeFailure(in: CgroupFile.read(log) ?? "") ?? ""
        guard let process, process.hasEnded, let result = try? await process.wait() else { return failure }
        let stderr = String(decoding: result.stderr.prefix(500), as: UTF8.self)
        return (failure + " " + stderr).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The agent's host pid (the container's init): `runc run`'s only child (runc starts the init
    /// with `CLONE_PARENT`, and its set-up processes have exited once the agent answers), read
    /// from `/proc`; else from `runc state`.
    private func agentHostPID() async -> Int32? {
        // runsc's children are its gofer and its sandbox (the sentry: the agent's host process).
        if !engine.isGVisor, let pid = process?.pid {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            var children: [Int32] = []
            for task in tasks {
                let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
                children += text.split(separator: " ").compactMap { Int32($0) }
            }
            if children.count == 1 { return children[0] }
        }
        return await initPid()
    }

    /// The host pid of the agent (the container's init), from `runc state`; nil once it is gone.
    func initPid() async -> Int32? {
        let state = await engine.tool(["state", containerID])
        guard state.succeeded, let data = state.output.data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let pid = object["pid"] as? Int, pid > 0
        else { return nil }
        return Int32(pid)
    }

    /// Ends the sandbox and leaves nothing of it: hangs up on the agent, kills and deletes the
    /// container, removes its cgroup and bundle, and gives the user namespace back. Returns what
    /// could not be cleaned up, or nil. Calling it again waits for the first call.
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
        // Hung up on, the agent kills its commands and exits; as the container's init it takes the
        // rest of the container with it, and `runc run` returns.
        agent.close()
        // A listening agent, hung up on, would wait for the next node: it is killed, and the kernel
        // ends the rest of its pid namespace.
        if socketPath != nil, let agentInit, SandboxLedger.startTime(of: agentInit.pid) == agentInit.start {
            Glibc.kill(agentInit.pid, SIGKILL)
        }
        let end = ContinuousClock.now + ProcessSandbox.hangUpGrace
        while !hasEnded && ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(2)) }
        let stopped = hasEnded
        process?.kill()
        _ = try? await process?.wait()
        if let adoptedRun { engine.resources.ledger.gone(.process(pid: adoptedRun.pid, start: adoptedRun.start)) }
        if let socketPath { ProcessSandbox.removeAgentSocket(socketPath, ledger: engine.resources.ledger) }
        let leftovers = await engine.teardown(
            id: containerID,
            killFirst: !stopped,
            stopped: stopped,
            cgroup: cgroup,
            bundle: bundle
        )
        var problems = leftovers
        if let problem = layer?.remove() { problems.append(problem) }
        // Its processes are gone: nothing but the user namespace's holder keeps the namespace.
        if let network {
            await network.remove()
            if FileManager.default.fileExists(atPath: network.path) {
                problems.append("the sandbox's network namespace \(network.name) was not removed")
            }
        }
        await engine.release(namespace: namespace, user: hostUser, cgroup: cgroup)
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }

    /// Lets go of the sandbox without ending it (see ``ProcessSandbox/detach()``): hangs up on its
    /// agent and stops its DNS resolver.
    func detach() {
        agent.close()
        network?.leave()
    }

    /// Whether the container has ended: `runc run` returned, or, in a re-adopted sandbox, its
    /// init is gone.
    private var hasEnded: Bool {
        if let process { return process.hasEnded }
        guard let agentInit else { return true }
        return SandboxLedger.startTime(of: agentInit.pid) != agentInit.start
    }
}
extension ContainerSandbox: StatefulSandbox {}
