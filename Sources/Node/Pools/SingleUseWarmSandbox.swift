import Foundation
import HangarShared
import Synchronization

/// A warm sandbox that serves one job and is then destroyed: what every warm sandbox shares.
/// ``runOnce(_:)`` (the default ``WarmSandbox/run(_:jobID:)``) claims the sandbox, destroys it
/// when the job does not fit, and hands the job to ``runClaimed(_:limits:began:)``;
/// ``destroyOnce()`` (the default ``WarmSandbox/destroy()``) destroys it unless it was claimed
/// already.
protocol SingleUseWarmSandbox: WarmSandbox {
    /// What the sandbox is, for messages: "sandbox", "container", "VM".
    static var noun: String { get }
    /// Marks the sandbox used; false when it was already (run or destroyed).
    func claim() -> Bool
    /// Kills the claimed sandbox and removes all of it.
    func discard() async
    /// Runs `spec`, which the sandbox accepts, in the claimed sandbox and destroys the sandbox.
    /// `began` is when the job was handed over, for the outcome's start time.
    func runClaimed(_ spec: Hangar_V1_JobSpec, limits: JobLimits, began: ContinuousClock.Instant) async -> RunOutcome
}

extension SingleUseWarmSandbox {
    /// ``WarmSandbox/run(_:jobID:)`` of a single-use sandbox.
    func runOnce(_ spec: Hangar_V1_JobSpec) async -> RunOutcome {
        let began = ContinuousClock.now
        guard claim() else { return .error("a warm \(Self.noun) was used twice") }
        guard accepts(spec) else {
            await discard()
            return .error("the warm \(Self.noun) does not fit the job")
        }
        return await runClaimed(spec, limits: JobLimits(spec.limits), began: began)
    }

    /// ``WarmSandbox/destroy()`` of a single-use sandbox.
    func destroyOnce() async {
        guard claim() else { return }
        await discard()
    }

    func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        await runOnce(spec)
    }

    func destroy() async {
        await destroyOnce()
    }
}

/// A single-use warm sandbox whose program is a shell waiting for its job on pipes (``WarmScript``):
/// a bubblewrap sandbox or an OCI container, its process monitored by the node and its processes in
/// one cgroup. ``runClaimed(_:limits:began:)`` writes the job's limits into the cgroup, hands the job
/// to the script (``start(_:limits:cpuBaseline:)``), runs the job's wall clock, waits for the
/// sandbox's process and has the runtime turn what happened into the outcome
/// (``finish(_:result:limits:cpuBaseline:)``).
protocol ScriptedWarmSandbox: SingleUseWarmSandbox {
    /// The sandbox's monitored process (bubblewrap, or runc / runsc run).
    var process: SandboxProcess { get }
    /// The cgroup holding the sandbox's processes.
    var cgroup: JobCgroup { get }
    /// Writes the job's memory, pids and CPU bandwidth over the pool's.
    func applyJobLimits(_ limits: JobLimits) throws(CgroupError)
    /// Hands the job (its stdin and its script) to the waiting shell; the CPU-time limit counts
    /// from `cpuBaseline`, the cgroup's CPU time until then.
    func start(_ spec: Hangar_V1_JobSpec, limits: JobLimits, cpuBaseline: UInt64)
    /// The outcome of the job that ran (figures, status, message), and what tearing the sandbox
    /// down left undone, if anything. The sandbox is gone afterwards.
    func finish(
        _ spec: Hangar_V1_JobSpec,
        result: SandboxResult,
        limits: JobLimits,
        cpuBaseline: UInt64
    ) async -> (outcome: RunOutcome, cleanupProblem: String?)
    /// Removes the sandbox whose process could not be waited for; what that left undone, if
    /// anything.
    func abandon() async -> String?
}

extension ScriptedWarmSandbox {
    func runClaimed(_ spec: Hangar_V1_JobSpec, limits: JobLimits, began: ContinuousClock.Instant) async -> RunOutcome {
        let clock = ContinuousClock()
        do {
            try applyJobLimits(limits)
        } catch {
            await discard()
            return .error("cannot set the job's limits on the warm \(Self.noun)'s cgroup: \(error.description)")
        }
        let baseline = cgroup.cpuTimeMicroseconds() ?? 0
        start(spec, limits: limits, cpuBaseline: baseline)
        let armed = clock.now
        let timedOut = Atomic<Bool>(false)
        let process = self.process
        let timer = Task {
            try? await Task.sleep(for: limits.timeout)
            guard !Task.isCancelled else { return }
            timedOut.store(true, ordering: .sequentiallyConsistent)
            process.kill()
        }
        var outcome: RunOutcome
        let cleanupProblem: String?
        do throws(SandboxSpawnError) {
            var result = try await process.waitKillingOnCancellation()
            let ended = clock.now
            timer.cancel()
            if timedOut.load(ordering: .sequentiallyConsistent) && result.killReason == .cancelled {
                result.killReason = .timedOut  // the job's own wall clock, not a cancellation
            }
            (outcome, cleanupProblem) = await finish(spec, result: result, limits: limits, cpuBaseline: baseline)
            outcome.noteExecFailure(program: spec.argv[0])
            outcome.startMilliseconds = JobLimits.milliseconds(armed - began)
            outcome.runMilliseconds = JobLimits.milliseconds(ended - armed)
        } catch {
            timer.cancel()
            cleanupProblem = await abandon()
            outcome = .error("the warm \(Self.noun) had not started: \(error.description)")
        }
        if let cleanupProblem { outcome.appendMessage(cleanupProblem) }
        return outcome
    }

    /// The cgroup's usage since `cpuBaseline` (CPU time; the other figures are the cgroup's own).
    func usage(since cpuBaseline: UInt64) -> CgroupUsage {
        var usage = cgroup.usage()
        usage.cpuTimeMicroseconds = usage.cpuTimeMicroseconds.map { $0 > cpuBaseline ? $0 - cpuBaseline : 0 }
        return usage
    }
}

extension JobCgroup {
    /// Writes `limits` over the cgroup's. On v1 the kernel refuses a memory limit above the
    /// memory+swap one, so a raise to `memoryBytes` writes memory+swap first.
    func applyLimits(_ limits: CgroupLimits, raisingMemoryTo memoryBytes: UInt64) throws(CgroupError) {
        do {
            try applyLimits(limits)
        } catch {
            let swap = directories.memory + "/memory.memsw.limit_in_bytes"
            guard version == .v1, CgroupFile.exists(swap) else { throw error }
            try CgroupFile.write(String(memoryBytes), to: swap)
            try applyLimits(limits)
        }
    }
}
