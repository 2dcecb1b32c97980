import Foundation
import Yams

/// A daemon's settings from its config file (YAML, `--config FILE`) and environment: a value comes
/// from the flag, else `HANGAR_<DAEMON>_<KEY>` (the key upper-cased), else the file, else the
/// default. Unknown keys and values of the wrong type are errors naming the key.
struct DaemonConfigFile {
    /// The keys a daemon accepts, each with what it must be.
    enum Kind { case string, number, integer, boolean, strings, map }

    let path: String?
    let environmentPrefix: String
    private let values: [String: Any]
    private let kinds: [String: Kind]
    private let environment: [String: String]

    /// Reads `path` (nil: no file, only the environment) and checks every key against `kinds`.
    init(
        path: String?,
        environmentPrefix: String,
        kinds: [String: Kind],
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws {
        self.path = path
        self.environmentPrefix = environmentPrefix
        self.kinds = kinds
        self.environment = environment
        guard let path else {
            values = [:]
            return
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw CLIError("config file \(path) cannot be read: \(error.localizedDescription)")
        }
        let loaded: Any?
        do {
            loaded = try Yams.load(yaml: text)
        } catch {
            throw CLIError("config file \(path) is not valid YAML: \(error)")
        }
        guard let loaded else {
            values = [:]
            return
        }
        guard let map = loaded as? [String: Any] else {
            throw CLIError(
                "config file \(path) must be a mapping of keys (known: \(kinds.keys.sorted().joined(separator: ", ")))"
            )
        }
        for (key, value) in map {
            guard let kind = kinds[key] else {
                throw CLIError(
                    "config file \(path): unknown key '\(key)' (known: \(kinds.keys.sorted().joined(separator: ", ")))"
                )
            }
            try Self.check(value, kind, "config file \(path): key '\(key)'")
        }
        values = map
    }

    /// The environment variable of `key`: `HANGAR_SCHEDULER_QUEUE_TIMEOUT` for `queue_timeout`.
    func environmentName(_ key: String) -> String { environmentPrefix + key.uppercased() }

    func string(_ key: String) -> String? {
        if let value = environment[environmentName(key)], !value.isEmpty { return value }
        return values[key].map { "\($0)" }
    }

    func number(_ key: String) throws -> Double? {
        if let value = environment[environmentName(key)], !value.isEmpty {
            guard let number = Double(value), number.isFinite else {
                throw CLIError("\(environmentName(key)) must be a number, got '\(value)'")
            }
            return number
        }
        return (values[key] as? Double) ?? (values[key] as? Int).map(Double.init)
    }

    func integer(_ key: String) throws -> Int? {
        if let value = environment[environmentName(key)], !value.isEmpty {
            guard let number = Int(value) else {
                throw CLIError("\(environmentName(key)) must be a whole number, got '\(value)'")
            }
            return number
        }
        return values[key] as? Int
    }

    /// A yes/no: `true` or `false` in the file and in the environment.
    func boolean(_ key: String) throws -> Bool? {
        if let value = environment[environmentName(key)], !value.isEmpty {
            switch value.lowercased() {
            case "true": return true
            case "false": return false
            default: throw CLIError("\(environmentName(key)) must be true or false, got '\(value)'")
            }
        }
        return values[key] as? Bool
    }

    /// A list: YAML sequence in the file, comma-separated in the environment.
    func strings(_ key: String) -> [String]? {
        if let value = environment[environmentName(key)], !value.isEmpty {
            return value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        if let list = values[key] as? [Any] { return list.map { "\($0)" } }
        return (values[key] as? String)?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    }

    /// A map: YAML mapping in the file, `k=v,k=v` in the environment.
    func map(_ key: String) throws -> [String: String]? {
        if let value = environment[environmentName(key)], !value.isEmpty {
            var result: [String: String] = [:]
            for pair in value.split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2, !parts[0].isEmpty else {
                    throw CLIError("\(environmentName(key)) must be KEY=VALUE,KEY=VALUE, got '\(value)'")
                }
                result[String(parts[0])] = String(parts[1])
            }
            return result
        }
        return (values[key] as? [String: Any])?.mapValues { "\($0)" }
    }

    private static func check(_ value: Any, _ kind: Kind, _ what: String) throws {
        switch kind {
        case .string:
            guard value is String || value is Int || value is Double else { throw CLIError("\(what) must be a string") }
        case .number:
            guard let number = (value as? Double) ?? (value as? Int).map(Double.init), number.isFinite else {
                throw CLIError("\(what) must be a number, got '\(value)'")
            }
        case .boolean:
            guard value is Bool else { throw CLIError("\(what) must be true or false, got '\(value)'") }
        case .integer:
            guard value is Int else { throw CLIError("\(what) must be a whole number, got '\(value)'") }
        case .strings:
            guard value is String || (value as? [Any])?.allSatisfy({ $0 is String }) == true else {
                throw CLIError("\(what) must be a list of strings")
            }
        case .map:
            guard let map = value as? [String: Any], map.values.allSatisfy({ !($0 is [Any]) && !($0 is [String: Any]) })
            else {
                throw CLIError("\(what) must be a mapping of KEY: VALUE")
            }
        }
    }
}
