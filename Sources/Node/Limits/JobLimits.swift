import HangarShared

/// A job's limits as the process runtime enforces them: the spec's values, with the runtime's
/// defaults where a value is 0 (the scheduler normally fills them in already).
public struct JobLimits: Sendable, Equatable {
    /// Wall-clock limit.
    public var timeout: Duration
    /// CPU-time limit over all of the sandbox's processes; nil for none.
    public var cpuTime: Duration?
    /// Memory (and, where the kernel accounts it, memory plus swap) for the whole sandbox.
    public var memoryBytes: UInt64
    /// Processes and threads in the sandbox, bubblewrap's own included.
    public var pids: UInt32
    /// Bytes kept per output stream; more gets the sandbox killed.
    public var outputBytes: Int
    /// Largest file the program may write (`RLIMIT_FSIZE`), and the size of the `/tmp` tmpfs.
    public var fileSizeBytes: UInt64
    /// Open descriptors per process (`RLIMIT_NOFILE`).
    public var openFiles: UInt32
    /// CPU bandwidth: 1000 is one core.
    public var cpuMillis: UInt32

    // Defaults, the same as the scheduler's `LimitPolicy`.

    /// Wall-clock limit for a 0 `timeoutMs`.
    public static let defaultTimeout = Duration.seconds(10)
    /// Memory limit for a 0 `memoryBytes`.
    public static let defaultMemoryBytes: UInt64 = 256 << 20
    /// Pids limit for a 0 `pids`.
    public static let defaultPids: UInt32 = 128
    /// Per-stream output cap for a 0 `outputBytes`.
    public static let defaultOutputBytes = 1 << 20
    /// File-size limit and `/tmp` size for a 0 `fileSizeBytes`.
    public static let defaultFileSizeBytes: UInt64 = 64 << 20
    /// Open-files limit for a 0 `openFiles`.
    public static let defaultOpenFiles: UInt32 = 256
    /// CPU bandwidth for a 0 `cpuMillis`: one core.
    public static let defaultCPUMillis: UInt32 = 1000

    /// The limits of `limits`, defaults filled in.
    public init(_ limits: Hangar_V1_Limits) {
        timeout = limits.timeoutMs > 0 ? .milliseconds(Int64(limits.timeoutMs)) : Self.defaultTimeout
        cpuTime = limits.cpuTimeMs > 0 ? .milliseconds(Int64(limits.cpuTimeMs)) : nil
        memoryBytes = limits.memoryBytes > 0 ? limits.memoryBytes : Self.defaultMemoryBytes
        pids = limits.pids > 0 ? limits.pids : Self.defaultPids
        outputBytes = limits.outputBytes > 0 ? Int(clamping: limits.outputBytes) : Self.defaultOutputBytes
        fileSizeBytes = limits.fileSizeBytes > 0 ? limits.fileSizeBytes : Self.defaultFileSizeBytes
        openFiles = limits.openFiles > 0 ? limits.openFiles : Self.defaultOpenFiles
        cpuMillis = limits.cpuMillis > 0 ? limits.cpuMillis : Self.defaultCPUMillis
    }

    /// Whole milliseconds of `duration`, for messages.
    static func milliseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    /// "128 MiB" for whole mebibytes, else the byte count.
    static func describeBytes(_ bytes: UInt64) -> String {
        bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes) bytes"
    }
}
