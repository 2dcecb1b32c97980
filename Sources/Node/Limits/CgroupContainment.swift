/// A job's cgroup as the monitor thread sees it: killed with the program, and polled for the
/// CPU-time limit, which no kernel interface enforces by itself over a whole cgroup.
struct CgroupContainment: SandboxContainment {
    /// How often the CPU time is read while a CPU-time limit is set.
    static let cpuCheckInterval = Duration.milliseconds(20)

    let cgroup: JobCgroup
    /// The CPU-time limit in microseconds; nil for none.
    let cpuTimeLimitMicroseconds: UInt64?

    init(_ cgroup: JobCgroup, cpuTime: Duration?) {
        self.cgroup = cgroup
        cpuTimeLimitMicroseconds = cpuTime.map { JobLimits.milliseconds($0) * 1000 }
    }

    var checkInterval: Duration? { cpuTimeLimitMicroseconds == nil ? nil : Self.cpuCheckInterval }

    func check() -> SandboxLimit? {
        guard let limit = cpuTimeLimitMicroseconds, let used = cgroup.cpuTimeMicroseconds() else { return nil }
        return used >= limit ? .cpuTime : nil
    }

    func killAll() {
        cgroup.killAll()
    }
}
