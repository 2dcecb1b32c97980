import Foundation
import Glibc
import HangarShared
import Logging
import Synchronization

/// Runs each job in its own qemu microVM (`-M microvm`): the host's Debian kernel, an initramfs
/// the node builds at start (see ``InitramfsBuilder``) whose `/init` is the guest agent
/// (`Sources/GuestAgent`). The agent receives the job over a virtio-serial port, runs it as uid
/// 65534 in a cgroup (memory, pids, CPU bandwidth), with rlimits and a size-bounded `/tmp`, streams
/// its output with the cap applied, and reports how it ended; the node then kills the VM.
///
/// From outside, the VM's memory (the job's limit plus the guest's own overhead), its vCPUs (the
/// job's CPU share, rounded up) and a wall-clock kill bound the job. The VM has no network device
/// (only the guest's `lo`), no disk, and qemu runs under its seccomp sandbox, as a host uid of the
/// VM's own (``SandboxUsers``) when the node is root. KVM is used when a bounded trial boot works, TCG otherwise (see ``MicroVMHost``).
public final class MicroVMRuntime: Runtime {
    /// Always "microvm".
    public let name = "microvm"
    public let configuration: MicroVMConfiguration
    /// The shared preparation, started by the first ``probe()`` or ``run(_:jobID:)``.
    private let preparation = Mutex<Task<Result<MicroVMHost, MicroVMError>, Never>?>(nil)
    /// The snapshot warm VMs are restored from (see ``prepareWarm(template:profile:)``).
    let snapshots = Mutex(SnapshotState())
    let logger: Logger
    /// The node's uids, which qemu runs as.
    public let resources: NodeResources

    /// Where the snapshot for pool refills stands.
    struct SnapshotState: Sendable {
        /// Taking it, or taken (or why not).
        var task: Task<Result<MicroVMSnapshot, MicroVMError>, Never>?
        /// Restores that failed in a row; at ``MicroVMRuntime/restoreFailureLimit`` snapshots are off.
        var failedRestores = 0
        /// Why pools boot every VM instead, once that is decided.
        var disabled: String?
        /// Whether the snapshot's figures were logged.
        var announced = false
    }

    /// Memory the guest kernel, the unpacked initramfs and the agent need besides the job.
    static let guestOverheadBytes: UInt64 = 96 << 20

    /// A runtime with the given parts (discovered by default), its VMs running as uids of
    /// `resources`, logging snapshot and refill events to `logger`.
    public init(
        configuration: MicroVMConfiguration = MicroVMConfiguration(),
        resources: NodeResources = .standard,
        logger: Logger = Logger(label: "hangar.node.microvm")
    ) {
        self.configuration = configuration
        self.resources = resources
        self.logger = logger
    }

    /// The prepared host, preparing it on first use.
    func host() async -> Result<MicroVMHost, MicroVMError> {
        let task = preparation.withLock { task in
            if let task { return task }
            let configuration = configuration
            let (users, ledger) = (resources.users, resources.ledger)
            let created = Task { () -> Result<MicroVMHost, MicroVMError> in
                do throws(MicroVMError) {
                    return .success(try await MicroVMHost.prepare(configuration, users: users, ledger: ledger))
                } catch {
                    return .failure(error)
                }
            }
            task = created
            return created
        }
        return await task.value
    }

    /// A `true` job, for probes.
    static let trialJob = GuestProtocol.encodeJob(
        argv: ["/bin/true"],
        environment: ["PATH=/usr/bin:/bin"],
        cwd: "/tmp",
        stdin: Data(),
        files: [],
        limits: GuestLimits(
            timeoutMs: 5000,
            cpuTimeMs: 0,
            memoryBytes: 32 << 20,
            pids: 16,
            outputBytes: 4096,
            fileSizeBytes: 1 << 20,
            openFiles: 64,
            cpuMillis: 1000,
            loopback: false
        )
    )

    /// Available when qemu, a kernel with its modules and the agent are found, the initramfs is
    /// built, and a trial VM runs `true` to completion. The detail names qemu, the accelerator (and
    /// why not KVM), the kernel, what the guest holds and the trial's boot → agent-ready time.
    public func probe() async -> RuntimeProbe {
        let host: MicroVMHost
        switch await self.host() {
        case .failure(let error): return RuntimeProbe(available: false, detail: error.description)
        case .success(let prepared): host = prepared
        }
        let trial = await host.boot(
            job: Self.trialJob,
            memoryBytes: (32 << 20) + Self.overhead(host),
            vcpus: 1,
            outputLimit: 4096,
            bootTimeout: configuration.bootTimeout,
            jobDeadline: .seconds(10)
        )
        guard let exit = trial.channel.exit, exit.kind == .exited, exit.code == 0 else {
            return RuntimeProbe(
                available: false,
                detail: "\(host.summary); a trial VM failed: \(trial.exitOrFailure)"
            )
        }
        let ready = trial.channel.readyAfter.map { " boot → agent ready \(JobLimits.milliseconds($0)) ms" } ?? ""
        let uptime = trial.channel.guestUptimeMilliseconds.map { " (guest kernel up \($0) ms of it)" } ?? ""
        return RuntimeProbe(available: true, detail: host.summary + ";" + ready + uptime)
    }

    /// The job's CPU share rounded up to whole cores, at most the host's.
    static func vcpus(for limits: JobLimits) -> Int {
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
        return min(cores, max(1, Int((limits.cpuMillis + 999) / 1000)))
    }

    static func overhead(_ host: MicroVMHost) -> UInt64 {
        guestOverheadBytes + 2 * UInt64(host.initramfsBytes)
    }

    /// Boots a VM for the job, runs it there under its limits, and kills the VM.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        if Task.isCancelled {
            var outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled before the VM started"
            return outcome
        }
        let host: MicroVMHost
        switch await self.host() {
        case .failure(let error): return .error("the microvm runtime is unavailable: \(error.description)")
        case .success(let prepared): host = prepared
        }
        let limits = JobLimits(spec.limits)
        let job: Data
        do {
            job = try MicroVMJob.frame(spec, limits: limits)
        } catch {
            return .error(error.message)
        }
        let vcpus = Self.vcpus(for: limits)
        let share: MicroVMShare?
        let lifetime = configuration.bootTimeout + limits.timeout + .seconds(10)
        switch await shareGrants(spec.grants, host: host, lifetime: lifetime) {
        case .failure(let error): return .error(error.message)
        case .success(let started): share = started
        }
        let boot = await host.boot(
            job: job,
            memoryBytes: limits.memoryBytes + Self.overhead(host),
            vcpus: vcpus,
            outputLimit: limits.outputBytes,
            bootTimeout: configuration.bootTimeout,
            jobDeadline: limits.timeout + configuration.reportGrace,
            share: share?.socketPath
        )
        var outcome = MicroVMEnding(limits: limits).outcome(of: boot, cancelled: Task.isCancelled)
        if let share, let said = await share.stop(), outcome.status == .error {
            outcome.message += " (virtiofsd: \(said))"
        }
        return outcome
    }

    /// The share of `grants`' host paths for one VM (nil when the job has none, or none of its
    /// granted paths exists on this host), or why they cannot be given: the job must not run
    /// without them.
    func shareGrants(
        _ grants: Hangar_V1_Grants,
        host: MicroVMHost,
        lifetime: Duration
    ) async -> Result<MicroVMShare?, InvalidJob> {
        let mounts: GrantMounts
        do {
            mounts = try GrantMounts(grants)
        } catch {
            return .failure(InvalidJob(message: error.message))
        }
        guard !mounts.mounts.isEmpty else { return .success(nil) }
        guard !configuration.anonymousRAM else {
            return .failure(
                InvalidJob(message: "host path grants need the VM's RAM to be shared (anonymousRAM is set)")
            )
        }
        guard host.canShare else {
            return .failure(
                InvalidJob(
                    message: "host path grants need the guest kernel's virtiofs module, which "
                        + "\(host.kernelRelease) does not have"
                )
            )
        }
        do throws(MicroVMError) {
            return .success(
                try await MicroVMShare.start(
                    mounts,
                    virtiofsd: configuration.virtiofsdPath,
                    views: resources.grantViews,
                    users: resources.users,
                    ledger: resources.ledger,
                    lifetime: lifetime
                )
            )
        } catch {
            return .failure(InvalidJob(message: error.description))
        }
    }
}

extension MicroVMHost.Boot {
    /// The agent's report or the failure, for messages.
    var exitOrFailure: String {
        if let exit = channel.exit {
            return "the agent reported \(exit.kind) code \(exit.code) signal \(exit.signal) \(exit.message)"
        }
        return describeFailure()
    }
}
