import Foundation
import Glibc
import HangarShared

/// Turns what a VM did into a job outcome: the agent's report when there is one (the exact limit
/// it enforced), else the node's own view (cancelled, the VM missed its deadline, the VM died, the
/// guest broke the protocol). The status and message are the ``JobEnding``'s.
struct MicroVMEnding {
    let limits: JobLimits

    func outcome(of boot: MicroVMHost.Boot, cancelled: Bool) -> RunOutcome {
        var outcome: RunOutcome
        let channel = boot.channel
        if let exit = channel.exit {
            outcome = Self.outcome(of: exit, limits: limits)
            outcome.stdoutTruncated = exit.stdoutBytes > UInt64(limits.outputBytes)
            outcome.stderrTruncated = exit.stderrBytes > UInt64(limits.outputBytes)
            outcome.stdoutBytes = max(exit.stdoutBytes, UInt64(channel.stdout.count))
            outcome.stderrBytes = max(exit.stderrBytes, UInt64(channel.stderr.count))
            outcome.cpuTimeMicroseconds = exit.cpuMicroseconds
            outcome.peakMemoryBytes = exit.peakMemoryBytes
            outcome.pidsLimitHits = exit.pidsLimitHits
            outcome.runMilliseconds = exit.runMilliseconds
        } else {
            let cause: JobEnding.Cause
            if cancelled {
                cause = .cancelled
            } else if channel.failure == .jobTimedOut {
                cause = .wallClock
            } else {
                cause = .failure("microvm: \(boot.describeFailure())")
            }
            outcome = RunOutcome(status: .error)
            outcome.settle(JobEnding(cause: cause, enforcer: .vm), limits: limits)
        }
        outcome.stdout = channel.stdout
        outcome.stderr = channel.stderr
        if let ready = channel.readyAfter { outcome.startMilliseconds = JobLimits.milliseconds(ready) }
        return outcome
    }

    /// The outcome of the guest agent's report: the limit it enforced, or the program's exit.
    static func outcome(of exit: GuestExitReport, limits: JobLimits) -> RunOutcome {
        var outcome = RunOutcome(status: .error)
        outcome.settle(ending(of: exit, limits: limits), limits: limits)
        // Exit codes are bytes and signals below 65; anything else from the guest is not believed.
        outcome.exitCode = Int32(clamping: min(exit.code, 255))
        outcome.signal = Int32(clamping: min(exit.signal, 64))
        return outcome
    }

    /// What the guest agent says ended the job; refused forks and a death by SIGXFSZ are noted.
    static func ending(of exit: GuestExitReport, limits: JobLimits) -> JobEnding {
        let cause: JobEnding.Cause
        switch exit.kind {
        case .exited: cause = .exited(Int64(exit.code))
        case .signaled: cause = .signaled(Int64(exit.signal))
        case .timedOut: cause = .wallClock
        case .cpuTime: cause = .cpuTime(usedMicroseconds: exit.cpuMicroseconds)
        case .outputLimit:
            cause = .outputLimit(
                stdout: exit.stdoutBytes > UInt64(limits.outputBytes),
                stderr: exit.stderrBytes > UInt64(limits.outputBytes)
            )
        case .oom: cause = .outOfMemory(kills: exit.oomKills)
        case .failedToStart: cause = .programFailed(exit.message)
        case .error: cause = .failure("guest agent: \(exit.message)")
        }
        return JobEnding(
            cause: cause,
            enforcer: .guest,
            pidsRefused: exit.pidsLimitHits,
            diedOfFileSize: exit.kind == .signaled && exit.signal == UInt32(SIGXFSZ)
        )
    }
}
