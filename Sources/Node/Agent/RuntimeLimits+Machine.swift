extension RuntimeLimits {
    /// ``standard(memoryBytes:cores:)`` for this machine, computed once: `ProcessInfo` reads the
    /// cgroup files on every call of `activeProcessorCount`, and every assignment needs the limits.
    public static let machineStandard = RuntimeLimits.standard()
}
