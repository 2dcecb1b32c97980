import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

@Suite("Job outcome mapping (pure)")
struct JobEndingTests {
    private static var limits: JobLimits {
        var spec = Hangar_V1_Limits()
        spec.timeoutMs = 1500
        spec.cpuTimeMs = 200
        spec.memoryBytes = 64 << 20
        spec.pids = 16
        spec.outputBytes = 100
        spec.fileSizeBytes = 1 << 20
        return JobLimits(spec)
    }

    private func verdict(_ ending: JobEnding) -> (status: Hangar_V1_JobStatus, message: String) {
        ending.verdict(limits: Self.limits)
    }

    @Test("one limit reads the same in every runtime; only what was killed differs")
    func sameWordsEverywhere() {
        let killed: [(JobEnding.Enforcer, String)] = [
            (.sandbox, "the sandbox was killed"), (.container, "the container was killed"),
            (.guest, "the job was killed in the VM"),
        ]
        for (enforcer, words) in killed {
            #expect(
                verdict(JobEnding(cause: .wallClock, enforcer: enforcer))
                    == (.timedOut, "wall-clock limit of 1500 ms reached; \(words)")
            )
            #expect(
                verdict(JobEnding(cause: .cpuTime(usedMicroseconds: 230_000), enforcer: enforcer))
                    == (.timedOut, "CPU time limit of 200 ms reached (230 ms used); \(words)")
            )
            #expect(
                verdict(JobEnding(cause: .outputLimit(stdout: true, stderr: true), enforcer: enforcer))
                    == (.outputLimit, "stdout and stderr went over the 100-byte limit; \(words)")
            )
        }
        #expect(verdict(JobEnding(cause: .cancelled, enforcer: .vm)) == (.cancelled, "cancelled; the VM was killed"))
        #expect(
            verdict(JobEnding(cause: .wallClock, enforcer: .vm))
                == (.timedOut, "wall-clock limit of 1500 ms reached and the guest did not report; the VM was killed")
        )
        #expect(
            verdict(JobEnding(cause: .cpuTime(usedMicroseconds: nil), enforcer: .sandbox))
                == (.timedOut, "CPU time limit of 200 ms reached; the sandbox was killed")
        )
        #expect(
            verdict(JobEnding(cause: .cpuTimeRlimit, enforcer: .container))
                == (.timedOut, "CPU time limit of 200 ms reached (RLIMIT_CPU, whole seconds); the program was killed")
        )
        #expect(
            verdict(JobEnding(cause: .outOfMemory(kills: 1), enforcer: .sandbox))
                == (.oomKilled, "memory limit of 64 MiB reached; the kernel killed 1 process")
        )
        #expect(
            verdict(JobEnding(cause: .outOfMemory(kills: 2), enforcer: .container))
                == (.oomKilled, "memory limit of 64 MiB reached; the kernel killed 2 processes in the container")
        )
    }

    @Test("the program's own end, and failures, map to SUCCEEDED, FAILED or ERROR")
    func programEnds() {
        #expect(verdict(JobEnding(cause: .exited(0), enforcer: .sandbox)) == (.succeeded, ""))
        #expect(verdict(JobEnding(cause: .exited(3), enforcer: .guest)) == (.failed, "exited with code 3"))
        #expect(verdict(JobEnding(cause: .signaled(11), enforcer: .sandbox)) == (.failed, "killed by signal 11"))
        #expect(
            verdict(JobEnding(cause: .programFailed("runc: no such dir"), enforcer: .container))
                == (.failed, "runc: no such dir")
        )
        #expect(verdict(JobEnding(cause: .failure("broken"), enforcer: .vm)) == (.error, "broken"))
    }

    @Test("refused forks, unreported OOM kills and SIGXFSZ are noted after the cause")
    func notes() {
        var ending = JobEnding(cause: .exited(Int64(128 + SIGXFSZ)), enforcer: .sandbox)
        ending.pidsRefused = 3
        ending.oomKills = 2
        ending.diedOfFileSize = true
        #expect(
            verdict(ending)
                == (
                    .failed,
                    "exited with code 153; the memory limit of 64 MiB was reached and the kernel killed 2 processes; "
                        + "the pids limit of 16 was reached (3 forks refused); "
                        + "the file size limit of 1 MiB was reached (SIGXFSZ)"
                )
        )
        // OOM kills that ended the job are its cause, not a note; SIGXFSZ is noted only on FAILED.
        ending.cause = JobEnding.Cause.outOfMemory(kills: 2)
        #expect(
            verdict(ending)
                == (
                    .oomKilled,
                    "memory limit of 64 MiB reached; the kernel killed 2 processes; "
                        + "the pids limit of 16 was reached (3 forks refused)"
                )
        )
        var gVisor = JobEnding(cause: .exited(2), enforcer: .container, pidsRefused: 1)
        gVisor.gVisorStoppedAtPidsLimit = true
        #expect(
            verdict(gVisor).message
                == "exited with code 2; the pids limit of 16 was reached (1 fork refused); " + JobEnding.gVisorStopped
        )
    }

    @Test("a program that could not start is reported the uniform way, notes dropped")
    func execFailure() {
        var outcome = RunOutcome(status: .error)
        outcome.exitCode = 1
        outcome.stderr = Data("bwrap: execvp nope: No such file or directory\n".utf8)
        outcome.settle(
            JobEnding(cause: .execFailure(.notFound, program: "nope"), enforcer: .sandbox, pidsRefused: 1),
            limits: Self.limits
        )
        #expect(outcome.status == .failed)
        #expect(outcome.exitCode == 127)
        #expect(outcome.message == "hangar: command not found in the sandbox: nope")
        #expect(text(outcome.stderr) == "hangar: command not found in the sandbox: nope\n")
    }
}
