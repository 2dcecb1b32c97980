import HangarShared
import Synchronization
import Testing

@testable import HangarNode

@Suite("The single-use warm sandbox base (pure)")
struct SingleUseWarmSandboxTests {
    /// A sandbox that records what the base asked of it.
    final class Recorder: SingleUseWarmSandbox {
        static let noun = "recorder"
        let used = Atomic<Bool>(false)
        let discards = Atomic<Int>(0)
        let runs = Atomic<Int>(0)

        func accepts(_ spec: Hangar_V1_JobSpec) -> Bool { spec.argv == ["fits"] }
        func claim() -> Bool { !used.exchange(true, ordering: .sequentiallyConsistent) }
        func discard() async { discards.add(1, ordering: .sequentiallyConsistent) }

        func runClaimed(
            _ spec: Hangar_V1_JobSpec,
            limits: JobLimits,
            began: ContinuousClock.Instant
        ) async -> RunOutcome {
            runs.add(1, ordering: .sequentiallyConsistent)
            var outcome = RunOutcome(status: .succeeded)
            outcome.runMilliseconds = JobLimits.milliseconds(limits.timeout)
            return outcome
        }
    }

    @Test("a sandbox runs one job with the job's limits; a second run is an error and runs nothing")
    func once() async {
        let sandbox = Recorder()
        let first = await sandbox.run(job(["fits"]) { $0.limits.timeoutMs = 1234 }, jobID: "a")
        #expect(first.status == .succeeded)
        #expect(first.runMilliseconds == 1234)
        let second = await sandbox.run(job(["fits"]), jobID: "b")
        #expect(second.status == .error)
        #expect(second.message == "a warm recorder was used twice")
        await sandbox.destroy()
        #expect(sandbox.runs.load(ordering: .sequentiallyConsistent) == 1)
        #expect(sandbox.discards.load(ordering: .sequentiallyConsistent) == 0)
    }

    @Test("a job that does not fit destroys the sandbox instead of running in it")
    func misfit() async {
        let sandbox = Recorder()
        let outcome = await sandbox.run(job(["does not fit"]), jobID: "a")
        #expect(outcome.status == .error)
        #expect(outcome.message == "the warm recorder does not fit the job")
        #expect(sandbox.runs.load(ordering: .sequentiallyConsistent) == 0)
        #expect(sandbox.discards.load(ordering: .sequentiallyConsistent) == 1)
    }

    @Test("destroying removes the sandbox once, and a destroyed sandbox runs nothing")
    func destroy() async {
        let sandbox = Recorder()
        await sandbox.destroy()
        await sandbox.destroy()
        #expect(sandbox.discards.load(ordering: .sequentiallyConsistent) == 1)
        #expect(await sandbox.run(job(["fits"]), jobID: "a").status == .error)
        #expect(sandbox.runs.load(ordering: .sequentiallyConsistent) == 0)
    }
}
