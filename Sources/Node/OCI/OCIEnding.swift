import Foundation
import Glibc
import HangarShared

/// Turns what `runc run` / `runsc run` did into a job outcome: its figures, and the status and
/// message of the ``JobEnding`` that ``ending(of:usage:runtimeFailure:)`` finds.
struct OCIEnding: Sendable {
    let tool: String
    let program: String
    /// The job's limits, the runtime's defaults filled in (its pids limit without the runtime's
    /// own overhead, which gVisor adds).
    let limits: JobLimits

    init(tool: String, program: String, limits: Hangar_V1_Limits, timeout: Duration, outputLimit: Int) {
        self.tool = tool
        self.program = program
        var filled = JobLimits(limits)
        filled.timeout = timeout
        filled.outputBytes = outputLimit
        self.limits = filled
    }

    func outcome(of result: SandboxResult, usage: CgroupUsage, runtimeFailure: String?) -> RunOutcome {
        let code: Int32?
        switch result.termination {
        case .exited(let value): code = value
        case .signaled, .lost: code = nil
        }
        let ending = ending(of: result, usage: usage, runtimeFailure: runtimeFailure)
        var outcome = RunOutcome(status: .error)
        if result.killReason == nil && code == nil {
            // The runtime itself died: nothing it reported is the program's.
            outcome.settle(ending, limits: limits)
            return outcome
        }
        if let code { outcome.exitCode = code }
        switch ending.cause {
        case .outOfMemory: outcome.signal = SIGKILL
        case .cpuTimeRlimit: outcome.signal = (code ?? 0) - 128
        default: break
        }
        outcome.pidsLimitHits = usage.pidsLimitHits
        outcome.recordOutput(of: result)
        outcome.cpuTimeMicroseconds = usage.cpuTimeMicroseconds ?? 0
        outcome.peakMemoryBytes = usage.peakMemoryBytes ?? 0
        outcome.runMilliseconds = JobLimits.milliseconds(result.runTime)
        outcome.settle(ending, limits: limits)
        return outcome
    }

    /// What ended the container, first match wins: the monitor's kill (wall clock, CPU time,
    /// output, cancel); the runtime itself killed or its status lost (ERROR); a non-zero exit while
    /// the cgroup's OOM killer fired; exit 0; an error the runtime logged (about the program, or a
    /// missing or non-executable program: ``ExecFailure``; the node's otherwise); a death by SIGKILL
    /// or SIGXCPU once the cgroup used the CPU-time limit (RLIMIT_CPU); any other exit. The runtimes
    /// report a program killed by signal `n` as exit code 128 + `n`.
    ///
    /// Refused forks are noted whatever the cause (and why gVisor stopped with code 2 at its pids
    /// limit), and so is a death by SIGXFSZ. OOM kills that did not end the job are not.
    func ending(of result: SandboxResult, usage: CgroupUsage, runtimeFailure: String?) -> JobEnding {
        let cpuTime = usage.cpuTimeMicroseconds ?? 0
        let oomKills = usage.oomKills ?? 0
        let code: Int32?
        switch result.termination {
        case .exited(let value): code = value
        case .signaled, .lost: code = nil
        }
        let cause: JobEnding.Cause
        if let killed = JobEnding.Cause(monitorKilled: result, cpuUsedMicroseconds: cpuTime) {
            cause = killed
        } else {
            guard let code else {
                if case .signaled(let signal) = result.termination {
                    return JobEnding(
                        cause: .failure("\(tool) itself was killed by signal \(signal)"),
                        enforcer: .container
                    )
                }
                return JobEnding(
                    cause: .failure("\(tool)'s exit status was lost (does the node ignore SIGCHLD?)"),
                    enforcer: .container
                )
            }
            let cpuLimitMicroseconds = limits.cpuTime.map { JobLimits.milliseconds($0) * 1000 } ?? 0
            if oomKills > 0 && code != 0 {
                cause = .outOfMemory(kills: oomKills)
            } else if code == 0 {
                cause = .exited(0)
            } else if let runtimeFailure {
                // The program never ran, or the runtime broke down under it.
                if let failure = ExecFailure.ociRuntime(failure: runtimeFailure, program: program) {
                    cause = .execFailure(failure, program: program)
                } else if runtimeFailure.contains(program) || runtimeFailure.contains("working directory") {
                    cause = .programFailed("\(tool): \(runtimeFailure)")
                } else {
                    cause = .failure("\(tool): \(runtimeFailure)")
                }
            } else if cpuLimitMicroseconds > 0 && (code == 128 + SIGXCPU || code == 128 + SIGKILL)
                && cpuTime >= cpuLimitMicroseconds
            {
                cause = .cpuTimeRlimit
            } else {
                cause = .exited(Int64(code))
            }
        }
        return JobEnding(
            cause: cause,
            enforcer: .container,
            pidsRefused: usage.pidsLimitHits,
            diedOfFileSize: LimitWords.diedOfFileSize(exitCode: code, signal: nil),
            // runsc on ptrace needs a host task per guest thread: at the limit the sentry itself
            // cannot start one and the whole sandbox stops with code 2, whatever the program did.
            gVisorStoppedAtPidsLimit: tool == "runsc" && result.killReason == nil && code == 2
        )
    }
}
