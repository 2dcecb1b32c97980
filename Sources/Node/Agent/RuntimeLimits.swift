import Foundation
import HangarShared

/// The tenant-facing limits one runtime of this node accepts: a default for each limit a job leaves
/// at 0, and a maximum (0 = none). A job above a maximum is refused with the limit named, never
/// silently clamped. The maxima go into every heartbeat, so the scheduler does not place a job on a
/// node that would refuse it, and rejects at once a job no node accepts.
public struct RuntimeLimits: Sendable, Equatable {
    public var defaults: Hangar_V1_Limits
    public var maximum: Hangar_V1_Limits

    public init(defaults: Hangar_V1_Limits, maximum: Hangar_V1_Limits) {
        self.defaults = defaults
        self.maximum = maximum
    }

    /// The limits fields by their protobuf names, for configuration and messages.
    public static let fields: [(name: String, keyPath: WritableKeyPath<Hangar_V1_Limits, UInt64> & Sendable)] = [
        ("timeout_ms", \.timeoutMs64), ("cpu_time_ms", \.cpuTimeMs64), ("memory_bytes", \.memoryBytes),
        ("pids", \.pids64), ("output_bytes", \.outputBytes), ("file_size_bytes", \.fileSizeBytes),
        ("open_files", \.openFiles64), ("cpu_millis", \.cpuMillis64),
    ]

    /// What a node offers unless configured otherwise: the runtimes' built-in defaults, and maxima
    /// of one hour, the machine's memory and cores, 4,096 pids, 64 MiB of output per stream, 4 GiB
    /// files and 65,536 open files.
    public static func standard(
        memoryBytes: UInt64 = ProcessInfo.processInfo.physicalMemory,
        cores: Int = ProcessInfo.processInfo.activeProcessorCount
    ) -> RuntimeLimits {
        var defaults = Hangar_V1_Limits()
        defaults.timeoutMs = 10_000
        defaults.memoryBytes = 256 << 20
        defaults.pids = 128
        defaults.outputBytes = 1 << 20
        defaults.fileSizeBytes = 64 << 20
        defaults.openFiles = 256
        defaults.cpuMillis = 1000
        var maximum = Hangar_V1_Limits()
        maximum.timeoutMs = 3_600_000
        maximum.memoryBytes = memoryBytes
        maximum.pids = 4096
        maximum.outputBytes = 64 << 20
        maximum.fileSizeBytes = 4 << 30
        maximum.openFiles = 65_536
        maximum.cpuMillis = UInt32(clamping: cores * 1000)
        return RuntimeLimits(defaults: defaults, maximum: maximum)
    }

    /// The job's limits with defaults filled in, or the first limit above its maximum.
    public func resolve(_ asked: Hangar_V1_Limits) -> Result<Hangar_V1_Limits, LimitAboveMaximum> {
        var limits = asked
        for field in Self.fields {
            if limits[keyPath: field.keyPath] == 0 { limits[keyPath: field.keyPath] = defaults[keyPath: field.keyPath] }
            let ceiling = maximum[keyPath: field.keyPath]
            let value = limits[keyPath: field.keyPath]
            if ceiling > 0 && value > ceiling {
                return .failure(LimitAboveMaximum(field: field.name, value: value, maximum: ceiling))
            }
        }
        return .success(limits)
    }

    /// Sets `runtime.field=value` in `table` (starting from ``standard()``), for `--limit-default`
    /// and `--limit-max`. Throws a message naming what is wrong.
    public static func apply(
        _ setting: String,
        maximum: Bool,
        to table: inout [String: RuntimeLimits]
    ) throws(RuntimeLimitsError) {
        let parts = setting.split(separator: "=", maxSplits: 1).map(String.init)
        let key = parts.first?.split(separator: ".", maxSplits: 1).map(String.init) ?? []
        guard parts.count == 2, key.count == 2, !key[0].isEmpty else {
            throw RuntimeLimitsError("'\(setting)' is not RUNTIME.LIMIT=VALUE (e.g. process.memory_bytes=1073741824)")
        }
        guard let field = fields.first(where: { $0.name == key[1] }) else {
            throw RuntimeLimitsError(
                "unknown limit '\(key[1])' in '\(setting)'; known: \(fields.map(\.name).joined(separator: ", "))"
            )
        }
        guard let value = UInt64(parts[1]) else {
            throw RuntimeLimitsError("'\(parts[1])' in '\(setting)' is not a whole number")
        }
        var limits = table[key[0]] ?? .standard()
        if maximum {
            limits.maximum[keyPath: field.keyPath] = value
            guard limits.maximum[keyPath: field.keyPath] == value else { throw tooLarge(setting) }
        } else {
            limits.defaults[keyPath: field.keyPath] = value
            guard limits.defaults[keyPath: field.keyPath] == value else { throw tooLarge(setting) }
        }
        table[key[0]] = limits
    }
}

private func tooLarge(_ setting: String) -> RuntimeLimitsError {
    RuntimeLimitsError("the value in '\(setting)' is too large for that limit (at most \(UInt32.max))")
}

/// A job asks for more than this node allows in its runtime.
public struct LimitAboveMaximum: Error, Sendable, Equatable, CustomStringConvertible {
    public var field: String
    public var value: UInt64
    public var maximum: UInt64

    public var description: String {
        "limits.\(field) is \(value); this node allows at most \(maximum) in this runtime"
    }
}

/// A `--limit-default`/`--limit-max` setting that cannot be used.
public struct RuntimeLimitsError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

extension Hangar_V1_Limits {
    /// The 32-bit fields widened, so that every limit can be handled through one key path type.
    var timeoutMs64: UInt64 {
        get { UInt64(timeoutMs) }
        set { timeoutMs = UInt32(clamping: newValue) }
    }
    var cpuTimeMs64: UInt64 {
        get { UInt64(cpuTimeMs) }
        set { cpuTimeMs = UInt32(clamping: newValue) }
    }
    var pids64: UInt64 {
        get { UInt64(pids) }
        set { pids = UInt32(clamping: newValue) }
    }
    var openFiles64: UInt64 {
        get { UInt64(openFiles) }
        set { openFiles = UInt32(clamping: newValue) }
    }
    var cpuMillis64: UInt64 {
        get { UInt64(cpuMillis) }
        set { cpuMillis = UInt32(clamping: newValue) }
    }
}
