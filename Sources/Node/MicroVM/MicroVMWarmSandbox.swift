import Foundation
import Glibc
import HangarShared
import Synchronization

/// A microVM of the `host` template whose guest agent said READY and waits on its channel for the
/// job (see ``MicroVMRuntime/prepareWarm(template:profile:)``). At assignment the JOB frame goes in
/// and the job runs exactly as in a fresh VM (the agent applies every limit from that frame);
/// afterwards the VM is killed, so each serves one job.
///
/// The VM's size is fixed when it starts: RAM for jobs of up to ``jobMemoryBytes`` (plus the
/// guest's own overhead) and ``vcpus`` vCPUs; a job asking for more memory or CPUs starts cold.
public final class MicroVMWarmSandbox: WarmSandbox {
    /// How the VM got to READY.
    public enum Origin: String, Sendable {
        /// A fresh boot of the kernel and initramfs.
        case booted
        /// Restored from a ``MicroVMSnapshot`` and reseeded.
        case restored
    }

    /// Booted or restored.
    public let origin: Origin
    /// From spawning qemu until the agent was ready: the boot, or the restore and the reseed.
    public let readyTime: Duration
    /// The largest memory limit of a job this VM takes.
    let jobMemoryBytes: UInt64
    let vcpus: Int
    private let host: MicroVMHost
    private let vm: MicroVMHost.RunningVM
    private let used = Atomic<Bool>(false)

    /// How long a VM may wait unused; the pool replaces idle ones long before.
    static let lifetime = Duration.seconds(24 * 3600)

    private init(
        origin: Origin,
        readyTime: Duration,
        jobMemoryBytes: UInt64,
        vcpus: Int,
        host: MicroVMHost,
        vm: MicroVMHost.RunningVM
    ) {
        self.origin = origin
        self.readyTime = readyTime
        self.jobMemoryBytes = jobMemoryBytes
        self.vcpus = vcpus
        self.host = host
        self.vm = vm
    }

    /// Boots a VM (or, given a snapshot, restores one and sends it `seed`) and waits for its agent.
    static func start(
        host: MicroVMHost,
        jobMemoryBytes: UInt64,
        vcpus: Int,
        snapshot: MicroVMSnapshot? = nil,
        seed: Data = GuestProtocol.encodeSeed()
    ) async throws(MicroVMError) -> MicroVMWarmSandbox {
        let memory = jobMemoryBytes + MicroVMRuntime.overhead(host)
        let spawned: Result<MicroVMHost.RunningVM, MicroVMError>
        if let snapshot {
            guard snapshot.memoryBytes == memory, snapshot.vcpus == vcpus else {
                throw MicroVMError("the snapshot is of another VM size")
            }
            let reader = try snapshot.reader()
            spawned = host.spawn(memoryBytes: memory, vcpus: vcpus, lifetime: lifetime, extra: .incoming(reader))
            close(reader)
        } else {
            spawned = host.spawn(memoryBytes: memory, vcpus: vcpus, lifetime: lifetime)
        }
        let vm = try spawned.get()
        let ready = await GuestChannel(
            fd: vm.channel,
            mode: .handshake(greeting: snapshot == nil ? Data() : seed),
            outputLimit: 0,
            bootTimeout: snapshot == nil ? host.configuration.bootTimeout : host.configuration.restoreTimeout,
            jobDeadline: .zero,
            spawned: vm.spawned
        ).run()
        guard ready.isReady, let readyTime = ready.readyAfter else {
            vm.process.kill()
            let result = try? await vm.process.wait()
            let why = MicroVMHost.Boot(channel: ready, process: result).describeFailure()
            throw MicroVMError(
                (snapshot == nil ? "a warm VM did not boot: " : "a warm VM was not restored: ")
                    + (why.isEmpty ? "unknown failure" : why)
            )
        }
        return MicroVMWarmSandbox(
            origin: snapshot == nil ? .booted : .restored,
            readyTime: readyTime,
            jobMemoryBytes: jobMemoryBytes,
            vcpus: vcpus,
            host: host,
            vm: vm
        )
    }

    public func accepts(_ spec: Hangar_V1_JobSpec) -> Bool {
        let limits = JobLimits(spec.limits)
        // A VM with grants boots cold: its share is attached when qemu starts.
        return (spec.template.isEmpty || spec.template == TemplateName.host)
            && spec.grants.allowRead.isEmpty && spec.grants.allowWrite.isEmpty
            && limits.memoryBytes <= jobMemoryBytes
            && MicroVMRuntime.vcpus(for: limits) <= vcpus
    }

    /// Sends the JOB frame, collects the output and the agent's report, kills the VM. The
    /// outcome's start time is from this call until the whole job was handed to the agent.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        await runOnce(spec)
    }

    public func destroy() async {
        await destroyOnce()
    }
}

extension MicroVMWarmSandbox: SingleUseWarmSandbox {
    static let noun = "VM"

    func claim() -> Bool {
        !used.exchange(true, ordering: .sequentiallyConsistent)
    }

    func runClaimed(_ spec: Hangar_V1_JobSpec, limits: JobLimits, began: ContinuousClock.Instant) async -> RunOutcome {
        let frame: Data
        do {
            frame = try MicroVMJob.frame(spec, limits: limits)
        } catch {
            await discard()
            return .error(error.message)
        }
        let channel = GuestChannel(
            fd: vm.channel,
            mode: .job(frame),
            outputLimit: limits.outputBytes,
            bootTimeout: .zero,
            jobDeadline: limits.timeout + host.configuration.reportGrace,
            spawned: began
        )
        let boot = await MicroVMHost.finish(vm, channel: channel)
        var outcome = MicroVMEnding(limits: limits).outcome(of: boot, cancelled: Task.isCancelled)
        outcome.startMilliseconds = boot.channel.jobSentAfter.map(JobLimits.milliseconds) ?? 0
        return outcome
    }

    /// Kills the VM and closes its channel.
    func discard() async {
        vm.process.kill()
        _ = try? await vm.process.wait()
        close(vm.channel)
    }
}
