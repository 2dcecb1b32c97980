import Synchronization

/// The cgroup of a warm sandbox as its monitor thread sees it: killed with the sandbox, and
/// watched for a CPU-time limit only once a job is armed, counting from the CPU time the sandbox
/// had used while it waited (so the set-up is not charged to the job).
final class WarmContainment: SandboxContainment {
    private let cpuTime: @Sendable () -> UInt64?
    private let kill: @Sendable () -> Void
    /// The job's limit and the cgroup's CPU time when it started, in microseconds.
    private let armed = Mutex<(limit: UInt64, baseline: UInt64)?>(nil)

    /// - Parameters:
    ///   - cpuTime: the cgroup's CPU time so far in microseconds, nil when unreadable.
    ///   - killAll: kills every process of the cgroup.
    init(cpuTime: @escaping @Sendable () -> UInt64?, killAll: @escaping @Sendable () -> Void) {
        self.cpuTime = cpuTime
        kill = killAll
    }

    /// Fixed when the sandbox is spawned, so always on; a check before a job is armed reads nothing.
    var checkInterval: Duration? { CgroupContainment.cpuCheckInterval }

    /// Starts watching `limit` of CPU time beyond `baseline` (microseconds already used).
    func arm(cpuTime limit: Duration?, baseline: UInt64) {
        guard let limit else { return }
        armed.withLock { $0 = (JobLimits.milliseconds(limit) * 1000, baseline) }
    }

    func check() -> SandboxLimit? {
        guard let (limit, baseline) = armed.withLock({ $0 }), let used = cpuTime() else { return nil }
        return used > baseline && used - baseline >= limit ? .cpuTime : nil
    }

    func killAll() {
        kill()
    }
}
