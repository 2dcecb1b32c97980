import Foundation
import HangarShared

/// One isolation level a node can run jobs in (process, container, gvisor, microvm, wasm, null).
public protocol Runtime: Sendable {
    /// The name tenants ask for in `SubmitRequest.runtime`.
    var name: String { get }

    /// Whether this runtime works on this machine, and why not. Probed once at node start.
    func probe() async -> RuntimeProbe

    /// Runs one job to completion under its limits and reports what happened. Never throws: every
    /// failure becomes an outcome with status `ERROR` and a message.
    func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome
}

/// Result of a runtime's start-up probe.
public struct RuntimeProbe: Sendable, Equatable {
    public var available: Bool
    /// Tool and version when available, the reason when not.
    public var detail: String

    public init(available: Bool, detail: String) {
        self.available = available
        self.detail = detail
    }
}

/// What happened to one job in a sandbox.
public struct RunOutcome: Sendable {
    public var status: Hangar_V1_JobStatus
    public var exitCode: Int32 = 0
    /// Non-zero when the program was killed by a signal.
    public var signal: Int32 = 0
    public var stdout = Data()
    public var stderr = Data()
    public var stdoutTruncated = false
    public var stderrTruncated = false
    /// Bytes the program wrote, including any beyond the cap.
    public var stdoutBytes: UInt64 = 0
    public var stderrBytes: UInt64 = 0
    public var cpuTimeMicroseconds: UInt64 = 0
    public var peakMemoryBytes: UInt64 = 0
    /// Forks and clones the kernel refused at the job's pids limit (`Usage.pids_limit_hits`).
    public var pidsLimitHits: UInt64 = 0
    /// Sandbox set-up time, before the program ran.
    public var startMilliseconds: UInt64 = 0
    /// The program's own wall-clock run time.
    public var runMilliseconds: UInt64 = 0
    /// For a person: why the job ended this way (timeout, output limit, internal error).
    public var message = ""
    /// Files the job left in its scratch that matched `JobSpec.filesOut`.
    public var filesOut: [Hangar_V1_FileOut] = []

    public init(status: Hangar_V1_JobStatus) {
        self.status = status
    }

    /// An internal failure before or while running the program.
    public static func error(_ message: String) -> RunOutcome {
        var outcome = RunOutcome(status: .error)
        outcome.message = message
        return outcome
    }
}
