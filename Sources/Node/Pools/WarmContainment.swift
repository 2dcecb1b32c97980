import Synchronization

/// The cgroup of a warm sandbox as its monitor thread sees it: killed with the sandbox, and
/// watched for a CPU-time limit only once a job is armed, counting from the CPU time the sandbox
/// had used while it waited (so the set-up is not charged to the job).
final class WarmContainment: SandboxContainment {
    let cgroup: JobCgroup
    /// The job's limit and the cgroup's CPU time when it started, in microseconds.
    private let armed = Mutex<(limit: UInt64, baseline: UInt64)?>(nil)

    init(_ cgroup: JobCgroup) {
        self.cgroup = cgroup
    }

    /// Fixed when the sandbox is spawned, so always on; a check before a job is armed reads nothing.
    var checkInterval: Duration? { CgroupContainment.cpuCheckInterval }

    /// Starts watching `limit` of CPU time from now on.
    func arm(cpuTime limit: Duration?, baseline: UInt64) {
        guard let limit else { return }
        armed.withLock { $0 = (JobLimits.milliseconds(limit) * 1000, baseline) }
    }

    func check() -> SandboxLimit? {
        guard let (limit, baseline) = armed.withLock({ $0 }), let used = cgroup.cpuTimeMicroseconds() else {
            return nil
        }
        return used > baseline && used - baseline >= limit ? .cpuTime : nil
    }

    func killAll() {
        cgroup.killAll()
    }
}
