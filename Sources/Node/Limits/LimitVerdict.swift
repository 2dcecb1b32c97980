import Foundation
import Glibc
import HangarShared

extension ProcessRuntime {
    /// The status and message that tell the tenant which limit, if any, ended the job: the
    /// monitor's kills (wall clock, CPU time, output, cancellation) first, then the kernel's OOM
    /// kills, then the program's own exit. The OOM killer and refused forks are noted in the
    /// message whatever the status.
    static func outcome(of result: SandboxResult, usage: CgroupUsage, limits: JobLimits) -> RunOutcome {
        let memory = JobLimits.describeBytes(limits.memoryBytes)
        let oomKills = Self.oomKills(usage, result.termination)
        var outcome: RunOutcome
        switch result.killReason {
        case .timedOut where result.exceededLimit == .cpuTime:
            outcome = RunOutcome(status: .timedOut)
            let used = usage.cpuTimeMicroseconds.map { " (\($0 / 1000) ms used)" } ?? ""
            outcome.message =
                "CPU time limit of \(limits.cpuTime.map(JobLimits.milliseconds) ?? 0) ms reached\(used); "
                + "the sandbox was killed"
        case .timedOut:
            outcome = RunOutcome(status: .timedOut)
            outcome.message =
                "wall-clock limit of \(JobLimits.milliseconds(limits.timeout)) ms reached; the sandbox was killed"
        case .outputLimit:
            outcome = RunOutcome(status: .outputLimit)
            let streams = [result.stdoutTruncated ? "stdout" : nil, result.stderrTruncated ? "stderr" : nil]
            outcome.message =
                "\(streams.compactMap { $0 }.joined(separator: " and ")) went over the "
                + "\(limits.outputBytes)-byte limit; the sandbox was killed"
        case .cancelled:
            outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled; the sandbox was killed"
        case nil:
            if let complaint = shimComplaint(result) {
                outcome = .error(complaint)
            } else if oomKills > 0 && result.termination != .exited(0) {
                outcome = RunOutcome(status: .oomKilled)
                outcome.message = "memory limit of \(memory) reached; the kernel killed \(count(oomKills, "process"))"
            } else {
                switch result.termination {
                case .exited(0):
                    outcome = RunOutcome(status: .succeeded)
                case .exited(let code):
                    outcome = RunOutcome(status: .failed)
                    outcome.message = sandboxComplaint(result.stderr) ?? "exited with code \(code)"
                case .signaled(let signal):
                    outcome = RunOutcome(status: .failed)
                    outcome.message = "killed by signal \(signal)"
                case .lost:
                    outcome = .error("the sandbox's exit status was lost (does the node ignore SIGCHLD?)")
                }
            }
        }
        var notes: [String] = []
        if oomKills > 0 && outcome.status != .oomKilled {
            notes.append(
                "the memory limit of \(memory) was reached and the kernel killed \(count(oomKills, "process"))"
            )
        }
        if usage.pidsLimitHits > 0 {
            notes.append(LimitWords.pids(limit: UInt64(limits.pids), refused: usage.pidsLimitHits))
        }
        let diedOfFileSize: Bool
        switch result.termination {
        case .exited(let code): diedOfFileSize = LimitWords.diedOfFileSize(exitCode: code, signal: nil)
        case .signaled(let signal): diedOfFileSize = LimitWords.diedOfFileSize(exitCode: nil, signal: signal)
        case .lost: diedOfFileSize = false
        }
        if outcome.status == .failed && diedOfFileSize {
            notes.append(LimitWords.fileSize(limit: limits.fileSizeBytes))
        }
        outcome.message = LimitWords.appending(notes, to: outcome.message)

        switch result.termination {
        case .exited(let code): outcome.exitCode = code
        case .signaled(let signal): outcome.signal = signal
        case .lost: break
        }
        outcome.stdout = result.stdout
        outcome.stderr = result.stderr
        outcome.stdoutTruncated = result.stdoutTruncated
        outcome.stderrTruncated = result.stderrTruncated
        outcome.stdoutBytes = result.stdoutBytes
        outcome.stderrBytes = result.stderrBytes
        outcome.cpuTimeMicroseconds = usage.cpuTimeMicroseconds ?? result.cpuTimeMicroseconds
        outcome.peakMemoryBytes = usage.peakMemoryBytes ?? result.peakMemoryBytes
        outcome.pidsLimitHits = usage.pidsLimitHits
        outcome.runMilliseconds = JobLimits.milliseconds(result.runTime)
        return outcome
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

    private static func count(_ number: UInt64, _ noun: String) -> String {
        LimitWords.count(number, noun)
    }
}
