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
public final class MicroVMSandbox: StatefulSandbox {
    /// The sandbox's name.
    public let id: String
    /// The channel to the sandbox's agent.
    public let agent: SandboxAgentChannel
    /// Whether qemu has ended (the sandbox was killed, or its VM stopped).
    public var hasEnded: Bool { process.hasEnded }

    private let process: SandboxProcess
    /// The share of the sandbox's granted host paths, if it has any.
    private let share: MicroVMShare?
    private let killed = Mutex<Task<String?, Never>?>(nil)

    private init(id: String, agent: SandboxAgentChannel, process: SandboxProcess, share: MicroVMShare?) {
        self.id = id
        self.agent = agent
        self.process = process
        self.share = share
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
        let vm: MicroVMHost.RunningVM
        switch host.spawn(
            memoryBytes: limits.memoryBytes + MicroVMRuntime.overhead(host),
            vcpus: MicroVMRuntime.vcpus(for: jobLimits),
            lifetime: ProcessSandbox.lifetime,
            share: share?.socketPath
        ) {
        case .failure(let error):
            _ = await share?.stop()
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
            throw SandboxStartError("cannot attach to the VM: \(String(cString: strerror(errno)))")
        }
        let sandbox = MicroVMSandbox(
            id: id,
            agent: SandboxAgentChannel(socket: vm.channel, logger: logger),
            process: vm.process,
            share: share
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
        return sandbox
    }

    /// The last lines qemu and the guest's console wrote, once qemu has ended.
    private func console() async -> String {
        guard process.hasEnded, let result = try? await process.wait() else { return "" }
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
                self.process.kill()
                _ = try? await self.process.wait()
                _ = await self.share?.stop()
                return self.process.hasEnded ? nil : "the sandbox's qemu did not end"
            }
            task = started
            return started
        }
        return await task.value
    }
}
