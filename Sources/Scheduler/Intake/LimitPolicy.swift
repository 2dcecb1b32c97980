/// Defaults and maxima for the limits a tenant may ask for. A request above a maximum is rejected
/// with a reason, never silently clamped; a zero (unset) limit gets the default.
public struct LimitPolicy: Sendable, Equatable {
    public struct Bound<Value: Sendable & Equatable & Comparable>: Sendable, Equatable {
        public var defaultValue: Value
        public var maximum: Value

        public init(_ defaultValue: Value, max maximum: Value) {
            self.defaultValue = defaultValue
            self.maximum = maximum
        }
    }

    public var timeoutMilliseconds = Bound<UInt32>(10_000, max: 300_000)
    public var cpuTimeMilliseconds = Bound<UInt32>(0, max: 600_000)  // 0: no CPU-time limit beyond the timeout
    public var memoryBytes = Bound<UInt64>(256 << 20, max: 8 << 30)
    public var pids = Bound<UInt32>(128, max: 4096)
    public var outputBytes = Bound<UInt64>(1 << 20, max: 4 << 20)
    public var fileSizeBytes = Bound<UInt64>(64 << 20, max: 1 << 30)
    public var openFiles = Bound<UInt32>(256, max: 4096)
    public var cpuMillis = Bound<UInt32>(1000, max: 16_000)

    public init() {}
}

/// Size limits on the request itself, so one message cannot exhaust the scheduler.
public struct RequestBounds: Sendable, Equatable {
    public var maxArgs = 4096
    public var maxArgvBytes = 256 << 10
    public var maxCodeBytes = 100 << 10
    public var maxStdinBytes = 4 << 20
    public var maxEnvEntries = 256
    public var maxEnvValueBytes = 32 << 10
    public var maxFiles = 256
    public var maxFilesBytes = 4 << 20
    public var maxLabels = 32
    public var maxRequestIDBytes = 128

    public init() {}
}
