extension Hangar_V1_Result {
    /// The exit code `hangar run` ends with: the job's own code when it ran to an exit; 124 when it
    /// timed out (as `timeout(1)`); 128+N when killed by signal N; 2 when it could not be placed (no
    /// capacity at admission, or EXPIRED in the queue); 1 for every other failure.
    public var cliExitCode: Int32 {
        switch status {
        case .succeeded, .failed:
            if signal != 0 { return 128 + signal }
            return exitCode
        case .timedOut: return 124
        case .oomKilled: return 137
        case .rejected: return rejected.reason == .noCapacity ? 2 : 1
        case .expired: return 2
        default: return 1
        }
    }
}
