import Foundation
import HangarShared

/// What happened to a job, as its runtime saw it: why it ended (the program's exit, the limit that
/// tripped, a cancel, a failure to start) and what else the limits recorded on the way.
///
/// Every runtime turns its own observations (bubblewrap's or runc's exit status and the job's
/// cgroup, a microVM's guest report) into one of these; ``verdict(limits:)`` is then the one place
/// that decides the job's status and message, so a limit reads the same whichever runtime ran the
/// job (README, "Runtimes and limits"). ``RunOutcome/settle(_:limits:)`` applies it to an outcome.
struct JobEnding: Sendable, Equatable {
    /// Why the job ended, first match per runtime (the monitor's kills before the program's exit).
    enum Cause: Sendable, Equatable {
        /// The program exited by itself: 0 is SUCCEEDED, anything else FAILED. (Wide enough for
        /// whatever a microVM's guest reports, which is not clamped in the message.)
        case exited(Int64)
        /// The program was killed by a signal nobody on the node sent: FAILED.
        case signaled(Int64)
        /// The wall-clock limit: TIMED_OUT.
        case wallClock
        /// The CPU-time limit, measured on the job's cgroup (with the CPU time used, when known):
        /// TIMED_OUT.
        case cpuTime(usedMicroseconds: UInt64?)
        /// The CPU-time limit as RLIMIT_CPU enforces it (whole seconds, the program killed by
        /// SIGXCPU or SIGKILL): TIMED_OUT.
        case cpuTimeRlimit
        /// An output stream went over its cap: OUTPUT_LIMIT.
        case outputLimit(stdout: Bool, stderr: Bool)
        /// The tenant or the node cancelled the job: CANCELLED.
        case cancelled
        /// The kernel's OOM killer ended the program: OOM_KILLED.
        case outOfMemory(kills: UInt64)
        /// The program could not be started (missing or not executable): FAILED, reported the
        /// same way by every runtime (``ExecFailure``).
        case execFailure(ExecFailure, program: String)
        /// The program's own fault, in the sandbox tool's words (`sandbox: bwrap: …`, `runc: …`):
        /// FAILED.
        case programFailed(String)
        /// The node's fault or a broken sandbox: ERROR.
        case failure(String)
    }

    /// What enforced the limit (and so what was killed), for the message's words.
    enum Enforcer: Sendable, Equatable {
        /// The node, on a bubblewrap sandbox: "the sandbox was killed".
        case sandbox
        /// The node, on a runc or runsc container: "the container was killed".
        case container
        /// The guest agent inside a microVM: "the job was killed in the VM".
        case guest
        /// The node, on a whole microVM whose guest did not report: "the VM was killed".
        case vm
    }

    var cause: Cause
    var enforcer: Enforcer
    /// OOM kills in the job's cgroup, mentioned in the message when they did not end the job (the
    /// program exited 0 regardless, or another limit ended it first).
    var oomKills: UInt64 = 0
    /// Forks the job's pids limit refused (``LimitWords/pids(limit:refused:)``).
    var pidsRefused: UInt64 = 0
    /// The program died of RLIMIT_FSIZE's SIGXFSZ (``LimitWords/fileSize(limit:)``).
    var diedOfFileSize = false
    /// A gVisor sandbox stopped with code 2 because its pids limit left its sentry no thread.
    var gVisorStoppedAtPidsLimit = false

    /// The job's status and message. `limits` are the ones the job ran under (defaults filled in).
    func verdict(limits: JobLimits) -> (status: Hangar_V1_JobStatus, message: String) {
        let (status, message) = Self.status(of: cause, enforcer: enforcer, limits: limits)
        var notes: [String] = []
        if oomKills > 0 && status != .oomKilled {
            notes.append(
                "the memory limit of \(JobLimits.describeBytes(limits.memoryBytes)) was reached and the kernel "
                    + "killed \(LimitWords.count(oomKills, "process"))"
            )
        }
        if pidsRefused > 0 {
            notes.append(LimitWords.pids(limit: UInt64(limits.pids), refused: pidsRefused))
            if gVisorStoppedAtPidsLimit { notes.append(Self.gVisorStopped) }
        }
        if status == .failed && diedOfFileSize {
            notes.append(LimitWords.fileSize(limit: limits.fileSizeBytes))
        }
        return (status, LimitWords.appending(notes, to: message))
    }

    /// Why a gVisor job that reached its pids limit ended with code 2.
    static let gVisorStopped =
        "gVisor's own threads count against it, and a sandbox that cannot start one stops with code 2"

    private static func status(
        of cause: Cause,
        enforcer: Enforcer,
        limits: JobLimits
    ) -> (Hangar_V1_JobStatus, String) {
        let killed =
            switch enforcer {
            case .sandbox: "the sandbox was killed"
            case .container: "the container was killed"
            case .guest: "the job was killed in the VM"
            case .vm: "the VM was killed"
            }
        let cpuLimit = "CPU time limit of \(limits.cpuTime.map(JobLimits.milliseconds) ?? 0) ms reached"
        switch cause {
        case .exited(0):
            return (.succeeded, "")
        case .exited(let code):
            return (.failed, "exited with code \(code)")
        case .signaled(let signal):
            return (.failed, "killed by signal \(signal)")
        case .wallClock:
            let unreported = enforcer == .vm ? " and the guest did not report" : ""
            return (
                .timedOut,
                "wall-clock limit of \(JobLimits.milliseconds(limits.timeout)) ms reached\(unreported); \(killed)"
            )
        case .cpuTime(let used):
            let usedWords = used.map { " (\($0 / 1000) ms used)" } ?? ""
            return (.timedOut, "\(cpuLimit)\(usedWords); \(killed)")
        case .cpuTimeRlimit:
            return (.timedOut, "\(cpuLimit) (RLIMIT_CPU, whole seconds); the program was killed")
        case .outputLimit(let stdout, let stderr):
            let streams = [stdout ? "stdout" : nil, stderr ? "stderr" : nil].compactMap { $0 }
            return (
                .outputLimit,
                "\(streams.joined(separator: " and ")) went over the \(limits.outputBytes)-byte limit; \(killed)"
            )
        case .cancelled:
            return (.cancelled, "cancelled; \(killed)")
        case .outOfMemory(let kills):
            let inside =
                switch enforcer {
                case .sandbox: ""
                case .container: " in the container"
                case .guest, .vm: " in the VM"
                }
            return (
                .oomKilled,
                "memory limit of \(JobLimits.describeBytes(limits.memoryBytes)) reached; the kernel killed "
                    + LimitWords.count(kills, "process") + inside
            )
        case .execFailure(let failure, let program):
            return (.failed, failure.message(program))
        case .programFailed(let message):
            return (.failed, message)
        case .failure(let message):
            return (.error, message)
        }
    }
}

extension JobEnding.Cause {
    /// Why the node's monitor killed a sandbox's process (``SandboxResult/killReason``), nil when
    /// it did not. `cpuUsedMicroseconds` is the sandbox's CPU time, for the CPU-time limit.
    init?(monitorKilled result: SandboxResult, cpuUsedMicroseconds: UInt64?) {
        switch result.killReason {
        case .timedOut where result.exceededLimit == .cpuTime: self = .cpuTime(usedMicroseconds: cpuUsedMicroseconds)
        case .timedOut: self = .wallClock
        case .outputLimit: self = .outputLimit(stdout: result.stdoutTruncated, stderr: result.stderrTruncated)
        case .cancelled: self = .cancelled
        case nil: return nil
        }
    }
}

extension RunOutcome {
    /// Sets the status and message that `ending` maps to (``JobEnding/verdict(limits:)``); a
    /// program that could not be started is then reported the uniform way
    /// (``reportExecFailure(_:program:)``). The figures (output, usage, times) are the caller's.
    mutating func settle(_ ending: JobEnding, limits: JobLimits) {
        (status, message) = ending.verdict(limits: limits)
        if case .execFailure(let failure, let program) = ending.cause {
            reportExecFailure(failure, program: program)
        }
    }

    /// Takes the sandbox's output and its byte counts from `result`.
    mutating func recordOutput(of result: SandboxResult) {
        stdout = result.stdout
        stderr = result.stderr
        stdoutTruncated = result.stdoutTruncated
        stderrTruncated = result.stderrTruncated
        stdoutBytes = result.stdoutBytes
        stderrBytes = result.stderrBytes
    }
}
