import Foundation
import Glibc
import HangarShared

extension ProcessRuntime {
    /// The outcome of a bubblewrap sandbox: its figures, and the status and message of
    /// ``ending(of:usage:limits:program:)`` (``JobEnding``).
    static func outcome(
        of result: SandboxResult,
        usage: CgroupUsage,
        limits: JobLimits,
        program: String? = nil
    ) -> RunOutcome {
        var outcome = RunOutcome(status: .error)
        switch result.termination {
        case .exited(let code): outcome.exitCode = code
        case .signaled(let signal): outcome.signal = signal
        case .lost: break
        }
        outcome.recordOutput(of: result)
        outcome.cpuTimeMicroseconds = usage.cpuTimeMicroseconds ?? result.cpuTimeMicroseconds
        outcome.peakMemoryBytes = usage.peakMemoryBytes ?? result.peakMemoryBytes
        outcome.pidsLimitHits = usage.pidsLimitHits
        outcome.runMilliseconds = JobLimits.milliseconds(result.runTime)
        outcome.settle(ending(of: result, usage: usage, limits: limits, program: program), limits: limits)
        return outcome
    }

    /// What ended a bubblewrap sandbox: the monitor's kills (wall clock, CPU time, output,
    /// cancellation) first, then bubblewrap's failure to exec `program` (when given), the limit
    /// shim's own failure, the kernel's OOM kills, and the program's own exit. The OOM killer and
    /// refused forks are noted whatever the cause.
    static func ending(
        of result: SandboxResult,
        usage: CgroupUsage,
        limits: JobLimits,
        program: String? = nil
    ) -> JobEnding {
        let oomKills = Self.oomKills(usage, result.termination)
        let cause: JobEnding.Cause
        if let killed = JobEnding.Cause(monitorKilled: result, cpuUsedMicroseconds: usage.cpuTimeMicroseconds) {
            cause = killed
        } else if result.termination == .exited(1), let program,
            let failure = ExecFailure.bubblewrap(stderr: result.stderr, program: program)
        {
            cause = .execFailure(failure, program: program)
        } else if let complaint = shimComplaint(result) {
            cause = .failure(complaint)
        } else if oomKills > 0 && result.termination != .exited(0) {
            cause = .outOfMemory(kills: oomKills)
        } else {
            switch result.termination {
            case .exited(0):
                cause = .exited(0)
            case .exited(let code):
                cause = sandboxComplaint(result.stderr).map { .programFailed($0) } ?? .exited(Int64(code))
            case .signaled(let signal):
                cause = .signaled(Int64(signal))
            case .lost:
                cause = .failure("the sandbox's exit status was lost (does the node ignore SIGCHLD?)")
            }
        }
        let diedOfFileSize: Bool
        switch result.termination {
        case .exited(let code): diedOfFileSize = LimitWords.diedOfFileSize(exitCode: code, signal: nil)
        case .signaled(let signal): diedOfFileSize = LimitWords.diedOfFileSize(exitCode: nil, signal: signal)
        case .lost: diedOfFileSize = false
        }
        return JobEnding(
            cause: cause,
            enforcer: .sandbox,
            oomKills: oomKills,
            pidsRefused: usage.pidsLimitHits,
            diedOfFileSize: diedOfFileSize
        )
    }

    /// OOM kills in the job's cgroup. Without the kernel's counter (v1 before Linux 4.13), a
    /// sandbox that hit its memory limit and ended by SIGKILL (bubblewrap reports 128 + 9) counts.
    private static func oomKills(_ usage: CgroupUsage, _ termination: SandboxResult.Termination) -> UInt64 {
        if let kills = usage.oomKills { return kills }
        let killed = termination == .signaled(SIGKILL) || termination == .exited(128 + SIGKILL)
        return usage.memoryLimitHits > 0 && killed ? 1 : 0
    }

    /// The shim's own failure (joining the cgroup, setting rlimits), which is the node's fault.
    private static func shimComplaint(_ result: SandboxResult) -> String? {
        guard result.termination == .exited(LimitShim.failureStatus) else { return nil }
        let text = String(decoding: result.stderr.prefix(2048), as: UTF8.self)
        guard text.hasPrefix(LimitShim.marker) else { return nil }
        return "cannot limit the sandbox: " + text.dropFirst(LimitShim.marker.count).trimmingCharacters(in: .newlines)
    }

    /// bubblewrap's own complaint ("bwrap: execvp nope: No such file or directory"), if that is
    /// what ended the job.
    private static func sandboxComplaint(_ stderr: Data) -> String? {
        let text = String(decoding: stderr.prefix(1024), as: UTF8.self)
        guard text.hasPrefix("bwrap: ") else { return nil }
        return "sandbox: " + (text.split(separator: "\n").first.map(String.init) ?? text)
    }
}
