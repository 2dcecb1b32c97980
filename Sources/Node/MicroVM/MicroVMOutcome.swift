import Foundation
import Glibc
import HangarShared

/// Turns what a VM did into a job outcome: the agent's report when there is one (the exact limit
/// it enforced), else the node's own view (cancelled, the VM missed its deadline, the VM died, the
/// guest broke the protocol).
struct MicroVMOutcome {
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
        } else if cancelled {
            outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled; the VM was killed"
        } else if channel.failure == .jobTimedOut {
            outcome = RunOutcome(status: .timedOut)
            outcome.message =
                "wall-clock limit of \(JobLimits.milliseconds(limits.timeout)) ms reached and the guest did not "
                + "report; the VM was killed"
        } else {
            outcome = .error("microvm: \(boot.describeFailure())")
        }
        outcome.stdout = channel.stdout
        outcome.stderr = channel.stderr
        if let ready = channel.readyAfter { outcome.startMilliseconds = JobLimits.milliseconds(ready) }
        return outcome
    }

    static func outcome(of exit: GuestExitReport, limits: JobLimits) -> RunOutcome {
        var outcome: RunOutcome
        switch exit.kind {
        case .exited where exit.code == 0:
            outcome = RunOutcome(status: .succeeded)
        case .exited:
            outcome = RunOutcome(status: .failed)
            outcome.message = "exited with code \(exit.code)"
        case .signaled:
            outcome = RunOutcome(status: .failed)
            outcome.message = "killed by signal \(exit.signal)"
        case .timedOut:
            outcome = RunOutcome(status: .timedOut)
            outcome.message =
                "wall-clock limit of \(JobLimits.milliseconds(limits.timeout)) ms reached; the job was killed in the VM"
        case .cpuTime:
            outcome = RunOutcome(status: .timedOut)
            outcome.message =
                "CPU time limit of \(limits.cpuTime.map(JobLimits.milliseconds) ?? 0) ms reached "
                + "(\(exit.cpuMicroseconds / 1000) ms used); the job was killed in the VM"
        case .outputLimit:
            outcome = RunOutcome(status: .outputLimit)
            let streams = [
                exit.stdoutBytes > UInt64(limits.outputBytes) ? "stdout" : nil,
                exit.stderrBytes > UInt64(limits.outputBytes) ? "stderr" : nil,
            ]
            outcome.message =
                "\(streams.compactMap { $0 }.joined(separator: " and ")) went over the "
                + "\(limits.outputBytes)-byte limit; the job was killed in the VM"
        case .oom:
            outcome = RunOutcome(status: .oomKilled)
            outcome.message =
                "memory limit of \(JobLimits.describeBytes(limits.memoryBytes)) reached; the kernel killed "
                + LimitWords.count(exit.oomKills, "process") + " in the VM"
        case .failedToStart:
            outcome = RunOutcome(status: .failed)
            outcome.message = exit.message
        case .error:
            outcome = .error("guest agent: \(exit.message)")
        }
        var notes: [String] = []
        if exit.pidsLimitHits > 0 {
            notes.append(LimitWords.pids(limit: UInt64(limits.pids), refused: exit.pidsLimitHits))
        }
        if outcome.status == .failed && exit.kind == .signaled && exit.signal == UInt32(SIGXFSZ) {
            notes.append(LimitWords.fileSize(limit: limits.fileSizeBytes))
        }
        outcome.message = LimitWords.appending(notes, to: outcome.message)
        // Exit codes are bytes and signals below 65; anything else from the guest is not believed.
        outcome.exitCode = Int32(clamping: min(exit.code, 255))
        outcome.signal = Int32(clamping: min(exit.signal, 64))
        return outcome
    }
}
