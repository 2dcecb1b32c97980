import Foundation
import Glibc

/// What every VM of this node shares, prepared once: qemu, the kernel, the initramfs (in an
/// anonymous memory file that qemu reads as `/dev/fd/4`) and the accelerator.
final class MicroVMHost: Sendable {
    let configuration: MicroVMConfiguration
    let kernelPath: String
    let kernelRelease: String
    let qemuVersion: String
    /// The initramfs; each qemu gets a duplicate of it and reads it from the start.
    let initramfsFD: Int32
    let initramfsBytes: Int
    /// What the guest holds, for the probe detail.
    let contents: String
    /// Set once after the KVM probe.
    let accelerator: Accelerator
    /// Why KVM is not used, when it is not.
    let kvmNote: String?
    /// The host uids qemu runs as, one per VM.
    let users: SandboxUsers
    /// Where qemu processes are noted while they run.
    let ledger: SandboxLedger

    private init(
        configuration: MicroVMConfiguration,
        kernelPath: String,
        kernelRelease: String,
        qemuVersion: String,
        initramfsFD: Int32,
        initramfsBytes: Int,
        contents: String,
        accelerator: Accelerator,
        kvmNote: String?,
        users: SandboxUsers,
        ledger: SandboxLedger
    ) {
        self.configuration = configuration
        self.kernelPath = kernelPath
        self.kernelRelease = kernelRelease
        self.qemuVersion = qemuVersion
        self.initramfsFD = initramfsFD
        self.initramfsBytes = initramfsBytes
        self.contents = contents
        self.accelerator = accelerator
        self.kvmNote = kvmNote
        self.users = users
        self.ledger = ledger
    }

    deinit { close(initramfsFD) }

    /// Whether the guest kernel can mount a share of host path grants (see ``MicroVMShare``).
    var canShare: Bool { contents.contains(InitramfsBuilder.shareContents) }

    /// Whether the initramfs holds `hangar-sandbox-agent`, so VMs can become stateful sandboxes.
    var hasSandboxAgent: Bool { contents.contains("sandbox agent") }

    /// Finds qemu, the kernel and the agent, builds the initramfs and picks the accelerator: KVM when
    /// `/dev/kvm` opens and a KVM boot reaches the agent within the probe timeout, TCG otherwise.
    /// VMs run as uids of `users`; qemu and the programs run to prepare are noted in `ledger`.
    static func prepare(
        _ configuration: MicroVMConfiguration,
        users: SandboxUsers,
        ledger: SandboxLedger
    ) async throws(MicroVMError) -> MicroVMHost {
        guard access(configuration.qemuPath, X_OK) == 0 else {
            throw MicroVMError("qemu not found at \(configuration.qemuPath) (apt-get install qemu-system-x86)")
        }
        let qemuVersion = try await Self.qemuVersion(configuration.qemuPath, ledger: ledger)
        let (kernelPath, release) = try Self.kernel(configuration.kernelPath)
        let agentPath = try Self.agent(configuration.agentPath)
        var builder = InitramfsBuilder(
            agentPath: agentPath,
            modulesDirectory: "/lib/modules/" + release,
            busyboxPath: access(configuration.busyboxPath, X_OK) == 0 ? configuration.busyboxPath : nil,
            pythonPath: access(configuration.pythonPath, X_OK) == 0 ? configuration.pythonPath : nil,
            ledger: ledger
        )
        if let sandboxAgent = configuration.sandboxAgentPath ?? ProcessSandbox.locateAgent(),
            case .success(let filter) = ProcessRuntime.seccomp
        {
            builder.sandboxAgent = (sandboxAgent, Data(filter.bytes))
        }
        let (archive, contents) = try await builder.build()
        let fd = try Self.memoryFile(archive)
        let tscKHz = try await Self.tscKHz(agentPath, ledger: ledger)
        var host = MicroVMHost(
            configuration: configuration,
            kernelPath: kernelPath,
            kernelRelease: release,
            qemuVersion: qemuVersion,
            initramfsFD: fd,
            initramfsBytes: archive.count,
            contents: contents,
            accelerator: .tcg(tscKHz: tscKHz),
            kvmNote: "KVM not tried",
            users: users,
            ledger: ledger
        )
        guard configuration.tryKVM else { return host }
        let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard kvm >= 0 else {
            return host.with(.tcg(tscKHz: tscKHz), note: "/dev/kvm: \(String(cString: strerror(errno)))")
        }
        close(kvm)
        let candidate = host.with(.kvm, note: nil)
        host = host.with(.tcg(tscKHz: tscKHz), note: nil)
        let trial = await candidate.boot(
            job: MicroVMRuntime.trialJob,
            memoryBytes: (32 << 20) + MicroVMRuntime.guestOverheadBytes + 2 * UInt64(archive.count),
            vcpus: 1,
            outputLimit: 4096,
            bootTimeout: configuration.kvmProbeTimeout,
            jobDeadline: .seconds(5)
        )
        if trial.channel.exit?.kind == .exited && trial.channel.exit?.code == 0 { return candidate }
        let why =
            trial.channel.failure == .bootTimedOut
            ? "a KVM boot did not reach the agent within \(configuration.kvmProbeTimeout) (nested KVM hangs here)"
            : "a KVM boot failed: \(trial.describeFailure())"
        return host.with(.tcg(tscKHz: tscKHz), note: why)
    }

    private func with(_ accelerator: Accelerator, note: String?) -> MicroVMHost {
        let copy = open("/proc/self/fd/\(initramfsFD)", O_RDONLY | O_CLOEXEC)
        return MicroVMHost(
            configuration: configuration,
            kernelPath: kernelPath,
            kernelRelease: kernelRelease,
            qemuVersion: qemuVersion,
            initramfsFD: copy,
            initramfsBytes: initramfsBytes,
            contents: contents,
            accelerator: accelerator,
            kvmNote: note,
            users: users,
            ledger: ledger
        )
    }

    /// One line for the probe detail and the heartbeat.
    var summary: String {
        let accel: String
        switch accelerator {
        case .kvm: accel = "KVM"
        case .tcg: accel = "TCG" + (kvmNote.map { " (\($0))" } ?? "")
        }
        return
            "\(qemuVersion) -M microvm, \(accel), kernel \(kernelRelease), guest: \(contents) "
            + "(\(initramfsBytes >> 20) MiB initramfs)"
    }

    // MARK: - Booting

    /// What one VM did.
    struct Boot: Sendable {
        var channel: GuestChannelResult
        /// qemu's own end: the console and qemu's messages (capped).
        var process: SandboxResult?
        var spawnError: String?

        func describeFailure() -> String {
            if let spawnError { return spawnError }
            var parts: [String] = []
            switch channel.failure {
            case .bootTimedOut: parts.append("the guest agent was not ready in time")
            case .jobTimedOut: parts.append("the guest agent did not report in time")
            case .closed: parts.append("the VM stopped before the agent reported")
            case .protocolViolation(let what): parts.append("the guest broke the protocol: \(what)")
            case nil: break
            }
            if let process {
                let console = String(decoding: process.stdout + process.stderr, as: UTF8.self)
                    .split(separator: "\n").suffix(5).joined(separator: " | ")
                if !console.isEmpty { parts.append("qemu/console: \(console)") }
            }
            return parts.joined(separator: "; ")
        }
    }

    /// A qemu process and the node's end of its agent channel.
    struct RunningVM: Sendable {
        let process: SandboxProcess
        /// The node's end of the socket pair (or connection) qemu serves as the agent's port.
        let channel: Int32
        let spawned: ContinuousClock.Instant
        /// The host uid qemu runs as (nil when the node is not root); back in the pool once qemu
        /// is reaped.
        let user: UInt32?
    }

    /// Where the agent's port is served from.
    enum AgentPort {
        /// A fresh socket pair: the port ends with the node's end.
        case pair
        /// A listening socket of the node's, which qemu serves the port from (`server=on`), and the
        /// node's connection to it: when the node hangs up, qemu waits for the next connection,
        /// and the VM runs on (a stateful sandbox outliving its node). `spawn` closes `listening`.
        case listening(Int32, connected: Int32)
    }

    /// Where a VM's RAM and devices come from besides the kernel and initramfs, and what else it
    /// gets on fd 5.
    enum Extra {
        case none
        /// Restore the state in this file (a snapshot, see ``MicroVMSnapshot``): `-incoming fd:5`.
        case incoming(Int32)
        /// A QMP monitor on this socket (to take a snapshot).
        case monitor(Int32)
    }

    /// Starts qemu with the agent's port on a fresh socket pair. Nothing is waited for; qemu is
    /// killed at `lifetime` at the latest.
    func spawn(
        memoryBytes: UInt64,
        vcpus: Int,
        lifetime: Duration,
        extra: Extra = .none,
        share: String? = nil,
        port: AgentPort = .pair
    ) -> Result<RunningVM, MicroVMError> {
        // pair[0]: the node's end; pair[1]: qemu's (fd 3), closed here once qemu has it.
        var pair: [Int32] = [-1, -1]
        switch port {
        case .pair:
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                return .failure(MicroVMError("socketpair: \(String(cString: strerror(errno)))"))
            }
        case .listening(let listening, let connected): pair = [connected, listening]
        }
        // As root, qemu drops to a host uid of this VM's own (see ``SandboxUsers``), as process and
        // container jobs do: no two VMs share a host user or its per-user kernel budgets.
        var user: UInt32?
        if geteuid() == 0 {
            guard let uid = users.acquire() else {
                close(pair[0])
                close(pair[1])
                return .failure(MicroVMError("all \(users.count) sandbox users are in use"))
            }
            user = uid
        }
        var files = [pair[1], initramfsFD]
        var arguments = arguments(
            memoryBytes: memoryBytes,
            vcpus: vcpus,
            user: user,
            share: share,
            serving: { if case .listening = port { true } else { false } }()
        )
        switch extra {
        case .none: break
        case .incoming(let fd):
            files.append(fd)
            arguments += ["-incoming", "fd:5"]
        case .monitor(let fd):
            files.append(fd)
            arguments += ["-chardev", "socket,id=qmp,fd=5", "-mon", "chardev=qmp,mode=control"]
        }
        let spawned = ContinuousClock.now
        let command = SandboxCommand(
            executable: configuration.qemuPath,
            arguments: ["qemu-system-x86_64"] + arguments,
            timeout: lifetime,
            outputLimit: 256 << 10,
            inheritedFiles: files,
            drainTimeout: .seconds(1),
            ledger: ledger
        )
        let process: SandboxProcess
        do {
            process = try SandboxProcess(command)
        } catch {
            close(pair[0])
            close(pair[1])
            if let user { users.release(user) }
            return .failure(MicroVMError("cannot start qemu: \(error.description)"))
        }
        close(pair[1])  // qemu holds the only other end: its death closes the channel
        if let user {
            // qemu may not spawn (`-sandbox spawn=deny`): once it is reaped, nothing runs as its uid.
            Task.detached { [users] in
                _ = try? await process.wait()
                users.release(user)
            }
        }
        return .success(RunningVM(process: process, channel: pair[0], spawned: spawned, user: user))
    }

    /// Boots a VM, hands the agent `job` (a JOB frame), collects its report and kills the VM.
    /// Cancelling the calling task kills the VM. `share` is a virtiofs daemon's socket (see
    /// ``MicroVMShare``) whose grants the guest mounts.
    func boot(
        job: Data,
        memoryBytes: UInt64,
        vcpus: Int,
        outputLimit: Int,
        bootTimeout: Duration,
        jobDeadline: Duration,
        share: String? = nil
    ) async -> Boot {
        let vm: RunningVM
        let lifetime = bootTimeout + jobDeadline + .seconds(2)
        switch spawn(memoryBytes: memoryBytes, vcpus: vcpus, lifetime: lifetime, share: share) {
        case .failure(let error): return Boot(channel: GuestChannelResult(), spawnError: error.description)
        case .success(let running): vm = running
        }
        let channel = GuestChannel(
            fd: vm.channel,
            mode: .boot(job: job),
            outputLimit: outputLimit,
            bootTimeout: bootTimeout,
            jobDeadline: jobDeadline,
            spawned: vm.spawned
        )
        return await Self.finish(vm, channel: channel)
    }

    /// Runs `channel` to its end (cancelling the calling task kills the VM), then kills qemu and
    /// waits for it.
    static func finish(_ vm: RunningVM, channel: GuestChannel) async -> Boot {
        let process = vm.process
        let result = await withTaskCancellationHandler {
            await channel.run()
        } onCancel: {
            process.kill()
        }
        process.kill()  // the agent has reported (or failed); nothing in the VM is needed any more
        do {
            return Boot(channel: result, process: try await process.wait())
        } catch {
            return Boot(channel: result, spawnError: "cannot start qemu: \(error.description)")
        }
    }

    /// qemu's arguments after argv[0]: a microvm (its RAM a shared memory file) with the agent's port on fd 3 and the initramfs on
    /// fd 4 (see ``spawn(memoryBytes:vcpus:lifetime:extra:)`` for fd 5), no network device, no disks, no display,
    /// no monitor, a seccomp sandbox, and (as root) qemu dropping to `user` (uid and gid) once set up.
    /// With `share` (a vhost-user socket of ``MicroVMShare``) the VM gets the vhost-user device
    /// and the guest is told to mount the share (`hangar.share`). `serving`: fd 3 is a listening
    /// socket qemu accepts the node's connections on, one at a time (``AgentPort/listening(_:connected:)``).
    func arguments(
        memoryBytes: UInt64,
        vcpus: Int,
        user: UInt32?,
        share: String? = nil,
        serving: Bool = false
    ) -> [String] {
        var append = "console=ttyS0 quiet loglevel=1 panic=-1 reboot=t pci=off 8250.nr_uarts=1 random.trust_cpu=on"
        let memoryFile = !configuration.anonymousRAM || share != nil
        var arguments = ["-M", memoryFile ? "microvm,memory-backend=ram" : "microvm"]
        switch accelerator {
        case .kvm:
            arguments += ["-accel", "kvm", "-cpu", "host"]
        case .tcg(let khz):
            arguments += ["-accel", "tcg", "-cpu", "max"]
            append += " tsc_early_khz=\(khz) tsc=reliable no_timer_check lpj=\(khz * 4)"  // HZ=250
        }
        let mebibytes = max(64, (memoryBytes + (1 << 20) - 1) >> 20)
        // The RAM is a memory file, shared (vhost-user needs that): boots took 10-20% less than
        // with qemu's default anonymous RAM here (BENCHMARKS.md, "Grants on microvm").
        if memoryFile { arguments += ["-object", "memory-backend-memfd,id=ram,size=\(mebibytes)M,share=on"] }
        if let share {
            append += " hangar.share=\(MicroVMShare.tag)"
            // libvhost-user (virtiofsd) serves modern virtio only; microvm's virtio-mmio is legacy
            // by default.
            arguments += [
                "-global", "virtio-mmio.force-legacy=false",
                "-chardev", "socket,id=share,path=\(share)",
                "-device", "vhost-user-fs-device,chardev=share,tag=\(MicroVMShare.tag)",
            ]
        }
        arguments += [
            "-m", "\(mebibytes)M", "-smp", "\(vcpus)", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-serial", "stdio", "-kernel", kernelPath, "-initrd", "/dev/fd/4", "-append", append,
            "-device", "virtio-serial-device", "-chardev",
            "socket,id=agent,fd=3" + (serving ? ",server=on,wait=off" : ""),
            "-device", "virtserialport,chardev=agent,name=hangar.agent",
        ]
        // qemu 7.2 applies the seccomp sandbox before -runas, so elevateprivileges=deny would kill
        // it at its own setuid: as root, the uid drop stands in for it.
        if let user {
            arguments += ["-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny", "-runas", "\(user):\(user)"]
        } else {
            arguments += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        }
        return arguments
    }
}
