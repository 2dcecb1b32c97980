import HangarShared

/// A runtime that can set sandboxes up before their jobs arrive, for ``WarmPools``. Each warm
/// sandbox serves exactly one job and is destroyed afterwards.
///
/// A warm sandbox fixes at creation what a fresh one would take from the job: the template, and the
/// limits that are part of its set-up (``WarmProfile``). It runs a job only when that job asks for
/// exactly those (``WarmSandbox/accepts(_:)``); every other job starts cold. The microvm runtime
/// adopts pools by conforming to this protocol.
public protocol WarmableRuntime: Runtime {
    /// Sets up one sandbox of `template` with `profile`'s creation-time limits, and returns once it
    /// waits for its program.
    /// - Throws: ``WarmError`` when the sandbox cannot be prepared (the pool reports it).
    func prepareWarm(template: String, profile: WarmProfile) async throws(WarmError) -> any WarmSandbox
}

/// One prepared sandbox, waiting for its job.
public protocol WarmSandbox: Sendable {
    /// Whether ``run(_:jobID:)`` would run `spec` exactly as a fresh sandbox would: same template,
    /// and the limits fixed at creation equal to the job's.
    func accepts(_ spec: Hangar_V1_JobSpec) -> Bool

    /// Runs the job in this sandbox and destroys the sandbox afterwards. Call at most once, and only
    /// for a spec it accepts. Never throws: failures become an outcome with status `ERROR`.
    func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome

    /// Destroys the sandbox without running anything; nothing of it is left (processes, cgroups,
    /// mounts, files). Call at most once, and not after ``run(_:jobID:)``.
    func destroy() async
}

/// The limits a warm sandbox is created with, for the limits that cannot change once it exists:
/// the output cap per stream (the node's pipe reader), the `/tmp` size and largest file, and the
/// open-files limit (rlimits set before the sandbox starts). Memory, pids and CPU bandwidth (cgroup
/// files), the wall clock and the CPU time are set from the job when it is assigned.
public struct WarmProfile: Sendable, Hashable {
    public var outputBytes: Int
    public var fileSizeBytes: UInt64
    public var openFiles: UInt32

    /// The node's defaults, which are the scheduler's: a job with default limits is served warm.
    public static let defaults = WarmProfile(JobLimits(Hangar_V1_Limits()))

    /// The creation-time part of `limits`.
    public init(_ limits: JobLimits) {
        outputBytes = limits.outputBytes
        fileSizeBytes = limits.fileSizeBytes
        openFiles = limits.openFiles
    }

    /// Whether a job with `limits` can run in a sandbox created with this profile.
    public func matches(_ limits: JobLimits) -> Bool {
        WarmProfile(limits) == self
    }

    /// Full job limits with this profile's creation-time values and defaults for the rest.
    var limits: JobLimits {
        var limits = JobLimits(Hangar_V1_Limits())
        limits.outputBytes = outputBytes
        limits.fileSizeBytes = fileSizeBytes
        limits.openFiles = openFiles
        return limits
    }
}

/// Why a warm sandbox could not be prepared.
public struct WarmError: Error, Sendable, CustomStringConvertible {
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }
}
