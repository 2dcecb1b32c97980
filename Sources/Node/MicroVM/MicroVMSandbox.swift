import Foundation
import Glibc
import HangarShared
import Logging
import Synchronization

/// A qemu microVM that is a stateful sandbox (runtime `microvm`): booted like a job's VM (the
/// node's kernel and initramfs, ``MicroVMHost``), but instead of a JOB the guest agent gets an
/// ATTACH frame and execs `hangar-sandbox-agent` (put into the initramfs at `/.hangar/agent`) with
/// the virtio-serial port as its channel, so the node talks to it exactly as to a process or
/// container sandbox's agent (``SandboxAgentChannel``).
///
/// Inside: the guest kernel (its own, not the host's), busybox and the host's python3 with its
/// standard library (no site packages), `/home/user` (`user`'s), `/root` and `/tmp` as tmpfs mounts
/// of the disk limit's size each, only loopback. The sandbox agent is the guest's pid 1 and runs
/// commands as `user` in a nested user namespace or as a capability-less root, with the node's
/// seccomp filter (read from `/.hangar/seccomp`), as everywhere. Outside: the VM's RAM (the memory
/// limit plus the guest's overhead) and vCPUs (the CPU limit rounded up to whole cores) bound the
/// sandbox; qemu runs as a host uid of its own under its seccomp sandbox. Host path grants come
/// through a virtiofs share (``MicroVMShare``: guest root acts on them as host uid 100000, as a
/// container's root does); `NETWORK_ALLOWLIST` is refused (the VM has no network device).
///
/// Killing: hangs up on the agent and kills qemu; nothing of the sandbox is left on the host.
///
/// Restarts: qemu serves the agent's port from a listening socket of the node's (in a root-only
/// directory under `/run/hangar-sandboxes/agents`, as a process sandbox's), so when the node goes
/// the VM runs on and the agent waits for the next node (`--port`, at most
/// ``ProcessSandbox/orphanTimeout``). The next node process re-adopts it from its ``Saved`` state
/// (``adopt(_:resources:logger:)``): it connects to the socket and resynchronises the stream
/// (``resynchronise(_:within:)``), since what the agent was writing when the node went may still
/// come through cut short. A sandbox with host path grants keeps its share too: its virtiofs
/// daemon serves qemu on, and the next node takes it down with the VM (``MicroVMShare/adopt(_:views:users:)``).
public final class MicroVMSandbox: StatefulSandbox {
    /// The sandbox's name.
    public let id: String
    /// The channel to the sandbox's agent.
    public let agent: SandboxAgentChannel
    /// Whether qemu has ended (the sandbox was killed, or its VM stopped).
    public var hasEnded: Bool { qemu.hasEnded }

    private let qemu: ProcessSandbox.Leader
    /// The share of the sandbox's granted host paths, if it has any.
    private let share: MicroVMShare?
    /// The listening socket qemu serves the agent's port from.
    private let socketPath: String
    /// The host uid qemu runs as; nil when the node is not root.
    private let hostUser: UInt32?
    private let resources: NodeResources
    private let killed = Mutex<Task<String?, Never>?>(nil)

    private init(
        id: String,
        agent: SandboxAgentChannel,
        qemu: ProcessSandbox.Leader,
        share: MicroVMShare?,
        socketPath: String,
        hostUser: UInt32?,
        resources: NodeResources
    ) {
        self.id = id
        self.agent = agent
        self.qemu = qemu
        self.share = share
        self.socketPath = socketPath
        self.hostUser = hostUser
        self.resources = resources
    }

    /// What the node's registry keeps of a microVM sandbox that outlives its node: enough to
    /// reconnect to its agent and, later, to kill it.
    public struct Saved: Codable, Sendable, Equatable {
        /// ``MicroVMSandbox/id``.
        var name: String
        /// The listening socket qemu serves the agent's port from.
        var socket: String
        /// qemu's pid and start time.
        var qemuPID: Int32
        var qemuStart: UInt64
        var hostUser: UInt32?
        /// The share of its host path grants, if it has one.
        var share: MicroVMShare.Saved?

        /// What the node's ledger lists for the sandbox: kept (not swept) when it is re-adopted.
        var resources: [SandboxLedger.Resource] {
            [.process(pid: qemuPID, start: qemuStart), .socket(path: socket)] + (share?.resources ?? [])
        }
    }

    /// What the node's registry keeps of it, to outlive its node; nil once qemu (or its share's
    /// daemon) has ended.
    public var saved: Saved? {
        guard let pid = qemu.pid, let start = SandboxLedger.startTime(of: pid) else { return nil }
        if case .adopted(_, let saved) = qemu, saved != start { return nil }
        let savedShare = share?.saved
        if share != nil && savedShare == nil { return nil }
        return Saved(
            name: id,
            socket: socketPath,
            qemuPID: pid,
            qemuStart: start,
            hostUser: hostUser,
            share: savedShare
        )
    }

    /// How long the sandbox agent may take to answer its first ping once attached.
    static let readyTimeout = Duration.seconds(30)

    /// Boots a VM with `runtime`'s parts, makes it a sandbox and waits until its agent answers.
    public static func start(
        id: String,
        limits: SandboxLimits = SandboxLimits(),
        grants: Hangar_V1_Grants = Hangar_V1_Grants(),
        network: Hangar_V1_NetworkPolicy = Hangar_V1_NetworkPolicy(),
        runtime: MicroVMRuntime,
        logger: Logger = Logger(label: "hangar.sandbox")
    ) async throws(SandboxStartError) -> MicroVMSandbox {
        if try ProcessSandbox.checkNetwork(network) {
            throw SandboxStartError(
                "NETWORK_ALLOWLIST is not enforced in microvm sandboxes (the VM has no network device, loopback only); use process or container"
            )
        }
        let host: MicroVMHost
        switch await runtime.host() {
        case .failure(let error): throw SandboxStartError("the microvm runtime is unavailable: \(error.description)")
        case .success(let prepared): host = prepared
        }
        guard host.hasSandboxAgent else {
            throw SandboxStartError(
                "this node's microVMs have no sandbox agent: no hangar-sandbox-agent next to the node's binary"
            )
        }
        let jobLimits = limits.jobLimits
        let share: MicroVMShare?
        switch await runtime.shareGrants(grants, host: host, lifetime: ProcessSandbox.lifetime + .seconds(10)) {
        case .failure(let error): throw SandboxStartError(error.message)
        case .success(let started): share = started
        }
        let ledger = runtime.resources.ledger
        let socketPath: String
        let port: MicroVMHost.AgentPort
        do throws(SandboxStartError) {
            let listening: Int32
            (listening, socketPath) = try ProcessSandbox.makeAgentSocket(
                workRoot: ProcessSandbox.defaultWorkRoot,
                ledger: ledger
            )
            // It listens already: the connection waits in its backlog until qemu accepts it.
            switch UnixSocket.connect(to: socketPath) {
            case .success(let connected): port = .listening(listening, connected: connected)
            case .failure(let error):
                close(listening)
                ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger)
                throw SandboxStartError("cannot connect to the agent's socket: \(error)")
            }
        } catch {
            _ = await share?.stop()
            throw error
        }
        let vm: MicroVMHost.RunningVM
        switch host.spawn(
            memoryBytes: limits.memoryBytes + MicroVMRuntime.overhead(host),
            vcpus: MicroVMRuntime.vcpus(for: jobLimits),
            lifetime: ProcessSandbox.lifetime,
            share: share?.socketPath,
            port: port
        ) {
        case .failure(let error):
            _ = await share?.stop()
            ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger)
            throw SandboxStartError(error.description)
        case .success(let running): vm = running
        }
        let handshake = GuestChannel(
            fd: vm.channel,
            mode: .handshake(greeting: Data()),
            outputLimit: 4096,
            bootTimeout: runtime.configuration.bootTimeout,
            jobDeadline: .seconds(1),
            spawned: vm.spawned
        )
        let greeted = await handshake.run()
        guard greeted.isReady else {
            vm.process.kill()
            let result = try? await vm.process.wait()
            _ = await share?.stop()
            ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger)
            let boot = MicroVMHost.Boot(channel: greeted, process: result)
            throw SandboxStartError("the VM did not come up: \(boot.describeFailure())")
        }
        // The handshake leaves the socket non-blocking; the agent channel reads it blocking.
        _ = fcntl(vm.channel, F_SETFL, fcntl(vm.channel, F_GETFL) & ~O_NONBLOCK)
        let attach = GuestProtocol.encodeAttach(diskBytes: limits.diskBytes)
        let written = attach.withUnsafeBytes { write(vm.channel, $0.baseAddress, $0.count) }
        guard written == attach.count else {
            close(vm.channel)
            vm.process.kill()
            _ = try? await vm.process.wait()
            _ = await share?.stop()
            ProcessSandbox.removeAgentSocket(socketPath, ledger: ledger)
            throw SandboxStartError("cannot attach to the VM: \(String(cString: strerror(errno)))")
        }
        let sandbox = MicroVMSandbox(
            id: id,
            agent: SandboxAgentChannel(socket: vm.channel, logger: logger),
            qemu: .child(vm.process),
            share: share,
            socketPath: socketPath,
            hostUser: vm.user,
            resources: runtime.resources
        )
        let deadline = Task { [agent = sandbox.agent] in
            try? await Task.sleep(for: Self.readyTimeout)
            if !Task.isCancelled { agent.close() }
        }
        do {
            try await sandbox.agent.ping()
            deadline.cancel()
        } catch {
            deadline.cancel()
            await sandbox.kill()
            let console = await sandbox.console()
            throw SandboxStartError(
                "the sandbox agent in the VM did not answer within \(JobLimits.milliseconds(Self.readyTimeout)) ms: \(error)"
                    + (console.isEmpty ? "" : "; qemu/console: \(console)")
            )
        }
        _ = await vm.process.spawned()  // so that `saved` knows qemu's pid
        return sandbox
    }

    /// The last lines qemu and the guest's console wrote, once qemu (a child of this node process)
    /// has ended.
    private func console() async -> String {
        guard case .child(let process) = qemu, process.hasEnded, let result = try? await process.wait() else {
            return ""
        }
        return String(decoding: result.stdout + result.stderr, as: UTF8.self)
            .split(separator: "\n").suffix(5).joined(separator: " | ")
    }

    /// Ends the sandbox: hangs up on the agent and kills qemu. Returns what could not be cleaned
    /// up, or nil. Calling it again waits for the first call.
    @discardableResult
    public func kill() async -> String? {
        let task = killed.withLock { task in
            if let task { return task }
            let started = Task { () -> String? in
                self.agent.close()
                self.qemu.kill()
                await self.qemu.wait()
                _ = await self.share?.stop()
                let ended = self.qemu.hasEnded
                if case .adopted(let pid, let start) = self.qemu, ended {
                    // qemu was started by a node process before this one: its uid comes back here.
                    self.resources.ledger.gone(.process(pid: pid, start: start))
                    if let user = self.hostUser { self.resources.users.release(user) }
                }
                ProcessSandbox.removeAgentSocket(self.socketPath, ledger: self.resources.ledger)
                return ended ? nil : "the sandbox's qemu did not end"
            }
            task = started
            return started
        }
        return await task.value
    }

    /// How long a re-adopting node waits for the agent's answer.
    static let adoptTimeout = Duration.seconds(10)
    /// How often the resynchronising Ping is sent again while no answer has come: a guest that
    /// learns late of the last node's hang-up can drop its answer to the first as written for that
    /// node.
    static let resyncPingInterval = Duration.seconds(1)

    /// Re-adopts a sandbox that a node process before this one started (its registry entry):
    /// connects to qemu's socket, claims qemu's host uid from `resources` and resynchronises the
    /// stream with the agent. Nothing is claimed when that fails (the sandbox is gone, or its
    /// agent does not answer); the node's sweep then takes it down.
    static func adopt(
        _ saved: Saved,
        resources: NodeResources,
        logger: Logger
    ) async -> Result<MicroVMSandbox, SandboxStartError> {
        guard SandboxLedger.startTime(of: saved.qemuPID) == saved.qemuStart else {
            return .failure(SandboxStartError("its qemu (pid \(saved.qemuPID)) is gone"))
        }
        let fd: Int32
        switch await ProcessSandbox.reconnect(socket: saved.socket, hostUser: saved.hostUser, network: nil, resources) {
        case .success(let (connected, _)): fd = connected
        case .failure(let error): return .failure(error)
        }
        if let problem = await resynchronise(fd, within: adoptTimeout) {
            close(fd)
            if let user = saved.hostUser { resources.users.release(user) }
            return .failure(SandboxStartError("its agent did not answer: \(problem)"))
        }
        var share: MicroVMShare?
        if let savedShare = saved.share {
            switch MicroVMShare.adopt(savedShare, views: resources.grantViews, users: resources.users) {
            case .success(let adopted): share = adopted
            case .failure(let error):
                close(fd)
                if let user = saved.hostUser { resources.users.release(user) }
                return .failure(SandboxStartError(error.description))
            }
        }
        return .success(
            MicroVMSandbox(
                id: saved.name,
                agent: SandboxAgentChannel(socket: fd, logger: logger),
                qemu: .adopted(pid: saved.qemuPID, start: saved.qemuStart),
                share: share,
                socketPath: saved.socket,
                hostUser: saved.hostUser,
                resources: resources
            )
        )
    }

    /// At most this much is skipped while resynchronising: more than any frame the agent sends.
    static let resyncLimit = 16 << 20

    /// Brings the stream on `fd` (a new connection to qemu's socket) back to a frame boundary: the
    /// agent's port is one stream across nodes, and what the agent was writing when the last node
    /// went may come through cut short. Sends a Ping whose id is random (a command in the sandbox
    /// cannot know it, so cannot forge its answer) and skips everything up to the Pong that
    /// answers it. The Ping says `new_node`: the agent forgets the requests of the nodes before
    /// (it may have missed their hang-up), so no event of theirs, with ids this node's channel
    /// will use again, comes after the Pong. The Ping is sent again every
    /// ``resyncPingInterval`` until answered. Nil when done; otherwise why not (the deadline, the
    /// socket closed, too much skipped). Runs on a thread of its own.
    static func resynchronise(_ fd: Int32, within timeout: Duration) async -> String? {
        let nonce = UInt64.random(in: (1 << 63)...UInt64.max)  // apart from the channel's ids, which count from 1
        var ping = Hangar_V1_AgentRequest()
        ping.id = nonce
        ping.ping = Hangar_V1_AgentPing.with { $0.newNode = true }
        var pong = Hangar_V1_AgentEvent()
        pong.id = nonce
        pong.pong = Hangar_V1_AgentPong()
        guard let request = try? ping.serializedData(), let answer = try? pong.serializedData() else {
            return "cannot encode a ping"
        }
        let (frame, expected) = (SandboxAgentChannel.frame(request), SandboxAgentChannel.frame(answer))
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: skip(fd, sending: frame, until: expected, deadline: .now + timeout))
            }
            thread.name = "hangar-microvm-resync"
            thread.start()
        }
    }

    /// Writes `frame` to `fd` (again every ``resyncPingInterval``), reading until `expected` has
    /// come (nil) or `deadline` passes.
    private static func skip(
        _ fd: Int32,
        sending frame: Data,
        until expected: Data,
        deadline: ContinuousClock.Instant
    )
        -> String?
    {
        var seen = Data()
        var skipped = 0
        var sent = 0
        var nextSend = ContinuousClock.now
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let now = ContinuousClock.now
            if now >= nextSend {
                let written = frame.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard written == frame.count else { return "cannot write to it: \(String(cString: strerror(errno)))" }
                sent += 1
                nextSend = now + resyncPingInterval
            }
            guard now < deadline else {
                return "no answer to \(sent) pings within the deadline (\(skipped) bytes came and were skipped)"
            }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = min(deadline, nextSend) - now
            let millis = Int32(
                clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000
            )
            guard poll(&entry, 1, max(millis, 1)) > 0 else { continue }
            let count = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return "the socket closed" }
            seen.append(contentsOf: scratch[0..<count])
            if seen.range(of: expected) != nil { return nil }  // nothing comes after the answer
            // Keep what could be the start of the answer.
            let keep = min(seen.count, expected.count - 1)
            skipped += seen.count - keep
            guard skipped <= resyncLimit else { return "more than \(resyncLimit) bytes came before the answer" }
            seen = Data(seen.suffix(keep))
        }
    }
}
