import Foundation
import HangarShared

/// The tenants file (YAML), with defaults for tenants it does not list:
///
/// ```yaml
/// defaults:                # every key optional; these are the built-in defaults
///   weight: 1
///   max_concurrent: 256
///   max_cpu_millis: 1000000
///   max_memory_bytes: 1099511627776
///   rate: 1000             # submissions per second (token bucket)
///   burst: 2000
///   max_queued: 10000
///   bytes_rate: 8388608    # request bytes per second (token bucket), 8 MiB/s
///   bytes_burst: 33554432  # 32 MiB; a request larger than this is refused LIMIT_EXCEEDED
///   max_queued_bytes: 67108864   # bytes of accepted requests not yet finished, 64 MiB
///   runtimes: [process, null]   # omit for all
///   templates: [host]           # omit for all
///   priority: {min: 0, max: 9}
///   max_live_sandboxes: 20        # stateful sandboxes live at once
///   max_sandbox_timeout_ms: 3600000     # the longest timeout a sandbox may ask for, 1 h
///   max_sandbox_lifetime_ms: 86400000   # the longest a sandbox may live, 24 h
///   limits:                # per request: default and maximum
///     timeout_ms: {default: 10000, max: 300000}
///   grants:                # the most a job may be granted (replaces the default as a whole)
///     allow_read: [/srv/datasets]
///     allow_write: [/srv/scratch]
///     allow_net: ["0.0.0.0/0", "*.pypi.org:443"]
///     deny_net: ["10.0.0.0/8"]   # denies are added to every job's grants
///   sandbox_default_grants:      # what a sandbox create that names no grants or network gets
///     allow_net: ["0.0.0.0/0"]   # (default: nothing, no network)
/// tenants:
///   acme: {weight: 3, rate: 50, burst: 100}
/// ```
public struct TenantDirectory: Sendable, Equatable {
    public var defaults = TenantPolicy()
    public var tenants: [String: TenantPolicy] = [:]

    public init() {}

    /// The policy of `tenant`: its own entry, else the defaults.
    public func policy(for tenant: String) -> TenantPolicy {
        tenants[tenant] ?? defaults
    }

    /// Parses a tenants file. Every unknown key, wrong type or bad value is an error naming it;
    /// hostile YAML (aliases expanding to millions of nodes, deep nesting, numbers out of range,
    /// non-scalar keys) is an error too, never a crash (see `BoundedYAML`).
    public static func parse(yaml text: String) throws(TenantConfigError) -> TenantDirectory {
        let root = try BoundedYAML.load(text)
        var directory = TenantDirectory()
        guard let root, !(root is NSNull) else { return directory }
        guard let top = root as? [String: Any] else {
            throw TenantConfigError("the file must be a mapping with 'defaults' and 'tenants'")
        }
        for key in top.keys where key != "defaults" && key != "tenants" {
            throw TenantConfigError("unknown key '\(key)' (expected 'defaults' or 'tenants')")
        }
        if let defaults = top["defaults"] {
            directory.defaults = try apply(defaults, to: TenantPolicy(), path: "defaults")
        }
        if let tenants = top["tenants"] {
            guard let map = tenants as? [String: Any] else { throw TenantConfigError("'tenants' must be a mapping") }
            for (name, settings) in map {
                guard isValidTenantName(name) else {
                    throw TenantConfigError("tenants.\(name): a tenant name is 1-64 characters of A-Z a-z 0-9 _ -")
                }
                let given: Any = settings is NSNull ? [String: Any]() : settings
                directory.tenants[name] = try apply(given, to: directory.defaults, path: "tenants.\(name)")
            }
        }
        return directory
    }

    /// Loads and parses the file at `path`.
    public static func load(path: String) throws(TenantConfigError) -> TenantDirectory {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw TenantConfigError("cannot read \(path): \(error.localizedDescription)")
        }
        do {
            return try parse(yaml: text)
        } catch {
            throw TenantConfigError("\(path): \(error.description)")
        }
    }

    private static func isValidTenantName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy {
                ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D
                    || $0 == 0x5F
            }
    }

    private static func apply(
        _ value: Any,
        to base: TenantPolicy,
        path: String
    ) throws(TenantConfigError) -> TenantPolicy {
        guard let map = value as? [String: Any] else { throw TenantConfigError("\(path) must be a mapping") }
        var policy = base
        for (key, raw) in map {
            let at = "\(path).\(key)"
            switch key {
            case "weight":
                policy.weight = try number(raw, at)
                guard policy.weight > 0 else { throw TenantConfigError("\(at) must be above 0") }
            case "max_concurrent": policy.maxConcurrent = try count(raw, at)
            case "max_cpu_millis": policy.maxCPUMillis = UInt64(try count(raw, at))
            case "max_memory_bytes": policy.maxMemoryBytes = UInt64(try count(raw, at))
            case "rate": policy.rate = try number(raw, at)
            case "burst":
                policy.burst = try number(raw, at)
                guard policy.burst >= 1 else { throw TenantConfigError("\(at) must be at least 1") }
            case "max_queued": policy.maxQueued = try count(raw, at)
            case "bytes_rate":
                policy.bytesRate = try number(raw, at)
                guard policy.bytesRate > 0 else { throw TenantConfigError("\(at) must be above 0") }
            case "bytes_burst":
                policy.bytesBurst = try number(raw, at)
                guard policy.bytesBurst >= 1 else { throw TenantConfigError("\(at) must be at least 1") }
            case "max_queued_bytes": policy.maxQueuedBytes = try count(raw, at)
            case "runtimes": policy.runtimes = Set(try strings(raw, at))
            case "templates": policy.templates = Set(try strings(raw, at))
            case "priority":
                guard let range = raw as? [String: Any] else {
                    throw TenantConfigError("\(at) must be {min: N, max: N}")
                }
                for extra in range.keys where extra != "min" && extra != "max" {
                    throw TenantConfigError("unknown key '\(at).\(extra)'")
                }
                var low = Int(policy.priorities.lowerBound)
                var high = Int(policy.priorities.upperBound)
                if let value = range["min"] { low = try count(value, "\(at).min") }
                if let value = range["max"] { high = try count(value, "\(at).max") }
                guard low <= high, high <= 9 else { throw TenantConfigError("\(at) must satisfy 0 <= min <= max <= 9") }
                policy.priorities = Int32(low)...Int32(high)
            case "max_live_sandboxes": policy.maxLiveSandboxes = try count(raw, at)
            case "max_sandbox_timeout_ms":
                policy.maxSandboxTimeout = .milliseconds(try count(raw, at))
                guard policy.maxSandboxTimeout > .zero else { throw TenantConfigError("\(at) must be above 0") }
            case "max_sandbox_lifetime_ms":
                policy.maxSandboxLifetime = .milliseconds(try count(raw, at))
                guard policy.maxSandboxLifetime > .zero else { throw TenantConfigError("\(at) must be above 0") }
            case "limits":
                policy.limits = try limits(raw, base: policy.limits, at)
            case "grants":
                policy.grants = try grants(raw, at)
            case "sandbox_default_grants":
                policy.sandboxDefaultGrants = try grants(raw, at)
            default:
                throw TenantConfigError("unknown key '\(at)'")
            }
        }
        return policy
    }

    private static func limits(_ raw: Any, base: LimitPolicy, _ path: String) throws(TenantConfigError) -> LimitPolicy {
        guard let map = raw as? [String: Any] else { throw TenantConfigError("\(path) must be a mapping") }
        var limits = base
        for (key, value) in map {
            let at = "\(path).\(key)"
            guard let bound = value as? [String: Any] else {
                throw TenantConfigError("\(at) must be {default: N, max: N}")
            }
            for extra in bound.keys where extra != "default" && extra != "max" {
                throw TenantConfigError("unknown key '\(at).\(extra)'")
            }
            func pair<V: FixedWidthInteger & Sendable>(
                _ current: LimitPolicy.Bound<V>
            ) throws(TenantConfigError) -> LimitPolicy.Bound<V> {
                var result = current
                if let value = bound["default"] { result.defaultValue = V(clamping: try count(value, "\(at).default")) }
                if let value = bound["max"] { result.maximum = V(clamping: try count(value, "\(at).max")) }
                guard result.defaultValue <= result.maximum else {
                    throw TenantConfigError("\(at): default \(result.defaultValue) is above max \(result.maximum)")
                }
                return result
            }
            switch key {
            case "timeout_ms": limits.timeoutMilliseconds = try pair(limits.timeoutMilliseconds)
            case "cpu_time_ms": limits.cpuTimeMilliseconds = try pair(limits.cpuTimeMilliseconds)
            case "memory_bytes": limits.memoryBytes = try pair(limits.memoryBytes)
            case "pids": limits.pids = try pair(limits.pids)
            case "output_bytes": limits.outputBytes = try pair(limits.outputBytes)
            case "file_size_bytes": limits.fileSizeBytes = try pair(limits.fileSizeBytes)
            case "open_files": limits.openFiles = try pair(limits.openFiles)
            case "cpu_millis": limits.cpuMillis = try pair(limits.cpuMillis)
            default: throw TenantConfigError("unknown key '\(at)'")
            }
        }
        return limits
    }

    private static func number(_ raw: Any, _ at: String) throws(TenantConfigError) -> Double {
        var value: Double?
        if let integer = raw as? Int { value = Double(integer) }
        if let double = raw as? Double { value = double }
        guard let value, value.isFinite, value >= 0, value <= 1e9 else {
            throw TenantConfigError("\(at) must be a finite number between 0 and 1e9")
        }
        return value
    }

    private static func grants(_ raw: Any, _ path: String) throws(TenantConfigError) -> GrantSet {
        guard let map = raw as? [String: Any] else { throw TenantConfigError("\(path) must be a mapping") }
        var message = Hangar_V1_Grants()
        for (key, value) in map {
            let list = try strings(value, "\(path).\(key)")
            switch key {
            case "allow_read": message.allowRead = list
            case "allow_write": message.allowWrite = list
            case "allow_net": message.allowNet = list
            case "deny_read": message.denyRead = list
            case "deny_write": message.denyWrite = list
            case "deny_net": message.denyNet = list
            default: throw TenantConfigError("unknown key '\(path).\(key)'")
            }
        }
        do {
            return try GrantSet(message)
        } catch {
            let field = error.field.replacingOccurrences(of: "grants.", with: "")
            throw TenantConfigError("\(path).\(field): \(error.message)")
        }
    }

    private static func count(_ raw: Any, _ at: String) throws(TenantConfigError) -> Int {
        guard let value = raw as? Int, value >= 0 else { throw TenantConfigError("\(at) must be a whole number >= 0") }
        return value
    }

    private static func strings(_ raw: Any, _ at: String) throws(TenantConfigError) -> [String] {
        guard let list = raw as? [Any], let names = list as? [String] else {
            throw TenantConfigError("\(at) must be a list of names")
        }
        return names
    }
}

/// A tenants file that cannot be used, with the key at fault.
public struct TenantConfigError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
