import Foundation

/// Where the microvm runtime finds its parts; nil fields are discovered.
public struct MicroVMConfiguration: Sendable {
    /// `qemu-system-x86_64`.
    public var qemuPath = "/usr/bin/qemu-system-x86_64"
    /// The guest kernel; nil picks the newest `/boot/vmlinuz-*` whose modules are installed.
    public var kernelPath: String?
    /// The static guest agent; nil means `$HANGAR_GUEST_AGENT`, else `hangar-guest-agent` next to
    /// the running executable (where `swift build` puts it).
    public var agentPath: String?
    /// The static `hangar-sandbox-agent` put into the guest for VMs that become stateful
    /// sandboxes; nil means ``ProcessSandbox/locateAgent()`` (none found: no microvm sandboxes).
    public var sandboxAgentPath: String?
    /// The virtiofs daemon that shares a job's granted host paths with its VM (the C daemon of
    /// qemu 7.x, Debian's `qemu-system-common`).
    public var virtiofsdPath = "/usr/lib/qemu/virtiofsd"
    /// Whether VMs get qemu's default anonymous RAM instead of a shared memory file: boots are
    /// slower (BENCHMARKS.md, "Grants on microvm") and there are no host path grants (vhost-user
    /// needs shared RAM). For comparisons.
    public var anonymousRAM = false
    /// Put into the guest when present.
    public var busyboxPath = "/bin/busybox"
    public var pythonPath = "/usr/bin/python3"
    /// How long a KVM boot may take before KVM is declared unusable (nested KVM can hang).
    public var kvmProbeTimeout = Duration.seconds(3)
    /// Whether to try KVM at all.
    public var tryKVM = true
    /// How long a boot may take until the agent is ready, before the VM is killed.
    public var bootTimeout = Duration.seconds(60)
    /// How long a restore from a snapshot may take until the agent is ready again.
    public var restoreTimeout = Duration.seconds(20)
    /// Warm VMs: the largest memory limit of a job they take (their RAM is this plus the guest's
    /// overhead) and their vCPUs; jobs asking for more start cold.
    public var warmJobMemoryBytes = JobLimits.defaultMemoryBytes
    /// The vCPUs of a warm VM (at most the host's cores); jobs whose CPU share needs more start cold.
    public var warmVCPUs = 1
    /// Whether warm VMs are restored from a snapshot (taken once, from a booted VM) instead of
    /// booted; a failed snapshot or restore falls back to a boot.
    public var snapshotRefill = true
    /// Added to the job's wall-clock limit for the agent to report after its in-guest kill.
    public var reportGrace = Duration.seconds(5)

    /// The defaults.
    public init() {}
}

/// How guest code executes.
enum Accelerator: Sendable, Equatable {
    case kvm
    /// qemu's translator; the kernel is told the TSC frequency (the guest's TSC is the host's), as a
    /// microvm has no PIT or HPET to calibrate it against.
    case tcg(tscKHz: UInt64)
}
