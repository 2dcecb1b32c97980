import Foundation
import Glibc
import HangarShared

/// Turns what `runc run` / `runsc run` did into a job outcome.
///
/// Status, first match wins: the monitor's kill (TIMED_OUT, OUTPUT_LIMIT, CANCELLED); a non-zero exit
/// while the cgroup's OOM killer fired (OOM_KILLED); exit 0 (SUCCEEDED); an error the runtime logged
/// (FAILED when it concerns the program, ERROR otherwise; a missing or non-executable program is
/// reported as ``ExecFailure``: exit 127 or 126); a death by
/// SIGKILL or SIGXCPU once the cgroup used the CPU-time limit (TIMED_OUT); any other exit (FAILED).
/// The runtimes report a program killed by signal `n` as exit code 128 + `n`.
///
/// Whatever the status, the message then names the pids limit when the cgroup refused forks (and
/// `pidsLimitHits` carries the count) and the file-size limit when the program died of SIGXFSZ, in
/// the words of ``LimitWords``, as the other runtimes do.
struct OCIOutcome: Sendable {
    let tool: String
    let program: String
    let limits: Hangar_V1_Limits
    let timeout: Duration
    let outputLimit: Int

    func outcome(of result: SandboxResult, usage: CgroupUsage, runtimeFailure: String?) -> RunOutcome {
        var outcome: RunOutcome
        var execFailure: ExecFailure?
        let cpuTime = usage.cpuTimeMicroseconds ?? 0
        let oomKills = usage.oomKills ?? 0
        let code: Int32?
        switch result.termination {
        case .exited(let value): code = value
        case .signaled, .lost: code = nil
        }
        switch result.killReason {
        case .timedOut where result.exceededLimit == .cpuTime:
            outcome = RunOutcome(status: .timedOut)
            outcome.message =
                "CPU time limit of \(limits.cpuTimeMs) ms reached (\(cpuTime / 1000) ms used); "
                + "the container was killed"
        case .timedOut:
            outcome = RunOutcome(status: .timedOut)
            outcome.message =
                "wall-clock limit of \(Self.milliseconds(timeout)) ms reached; the container was killed"
        case .outputLimit:
            outcome = RunOutcome(status: .outputLimit)
            let streams = [result.stdoutTruncated ? "stdout" : nil, result.stderrTruncated ? "stderr" : nil]
            outcome.message =
                "\(streams.compactMap { $0 }.joined(separator: " and ")) went over the "
                + "\(outputLimit)-byte limit; the container was killed"
        case .cancelled:
            outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled; the container was killed"
        case nil:
            guard let code else {
                if case .signaled(let signal) = result.termination {
                    return .error("\(tool) itself was killed by signal \(signal)")
                }
                return .error("\(tool)'s exit status was lost (does the node ignore SIGCHLD?)")
            }
            if oomKills > 0 && code != 0 {
                outcome = RunOutcome(status: .oomKilled)
                outcome.signal = SIGKILL
                outcome.message =
                    "memory limit of \(JobLimits.describeBytes(memoryBytes)) reached; the kernel killed "
                    + LimitWords.count(oomKills, "process") + " in the container"
            } else if code == 0 {
                outcome = RunOutcome(status: .succeeded)
            } else if let runtimeFailure {
                // The program never ran, or the runtime broke down under it.
                let aboutProgram = runtimeFailure.contains(program) || runtimeFailure.contains("working directory")
                outcome = aboutProgram ? RunOutcome(status: .failed) : .error("")
                outcome.message = "\(tool): \(runtimeFailure)"
                execFailure = ExecFailure.ociRuntime(failure: runtimeFailure, program: program)
            } else if limits.cpuTimeMs > 0 && (code == 128 + SIGXCPU || code == 128 + SIGKILL)
                && cpuTime >= UInt64(limits.cpuTimeMs) * 1000
            {
                outcome = RunOutcome(status: .timedOut)
                outcome.signal = code - 128
                outcome.message =
                    "CPU time limit of \(limits.cpuTimeMs) ms reached (RLIMIT_CPU, whole seconds); the program was killed"
            } else {
                outcome = RunOutcome(status: .failed)
                outcome.message = "exited with code \(code)"
            }
        }
        var notes: [String] = []
        if usage.pidsLimitHits > 0 {
            notes.append(LimitWords.pids(limit: UInt64(pids), refused: usage.pidsLimitHits))
            // runsc on ptrace needs a host task per guest thread: at the limit the sentry itself
            // cannot start one and the whole sandbox stops with code 2, whatever the program did.
            if tool == "runsc" && result.killReason == nil && code == 2 {
                notes.append(Self.gVisorStopped)
            }
        }
        if outcome.status == .failed && LimitWords.diedOfFileSize(exitCode: code, signal: nil) {
            notes.append(LimitWords.fileSize(limit: fileSizeBytes))
        }
        outcome.message = LimitWords.appending(notes, to: outcome.message)
        outcome.pidsLimitHits = usage.pidsLimitHits
        if let code { outcome.exitCode = code }
        outcome.stdout = result.stdout
        outcome.stderr = result.stderr
        outcome.stdoutTruncated = result.stdoutTruncated
        outcome.stderrTruncated = result.stderrTruncated
        outcome.stdoutBytes = result.stdoutBytes
        outcome.stderrBytes = result.stderrBytes
        outcome.cpuTimeMicroseconds = cpuTime
        outcome.peakMemoryBytes = usage.peakMemoryBytes ?? 0
        outcome.runMilliseconds = Self.milliseconds(result.runTime)
        if let execFailure { outcome.reportExecFailure(execFailure, program: program) }
        return outcome
    }

    /// Why a gVisor job that reached its pids limit ended with code 2.
    static let gVisorStopped =
        "gVisor's own threads count against it, and a sandbox that cannot start one stops with code 2"

    /// The job's pids limit (the runtime's own overhead, which gVisor adds, not counted).
    private var pids: UInt32 { limits.pids > 0 ? limits.pids : OCIJobConfig.defaultPids }
    private var memoryBytes: UInt64 { limits.memoryBytes > 0 ? limits.memoryBytes : OCIJobConfig.defaultMemoryBytes }
    private var fileSizeBytes: UInt64 {
        limits.fileSizeBytes > 0 ? limits.fileSizeBytes : OCIJobConfig.defaultScratchBytes
    }

    static func milliseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }
}
