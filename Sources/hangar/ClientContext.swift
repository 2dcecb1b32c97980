import Foundation
import Yams

/// The CLI's saved connection settings (`~/.config/hangar/context.yaml`), below flags and environment:
///
/// ```yaml
/// url: nats://10.0.0.5:4222   # NATS server URL(s), comma-separated
/// creds: /etc/hangar/ops.creds
/// tenant: acme
/// ```
struct ClientContext: Equatable {
    var url: String?
    var creds: String?
    var tenant: String?

    static let keys = ["url", "creds", "tenant"]

    /// `$XDG_CONFIG_HOME/hangar/context.yaml`, else `~/.config/hangar/context.yaml`.
    static func defaultPath(_ environment: [String: String]) -> String {
        if let base = environment["XDG_CONFIG_HOME"], !base.isEmpty { return base + "/hangar/context.yaml" }
        return (environment["HOME"] ?? NSHomeDirectory()) + "/.config/hangar/context.yaml"
    }

    /// Reads `path`; a missing file is an empty context unless `required`.
    static func load(path: String, required: Bool) throws -> ClientContext {
        guard FileManager.default.fileExists(atPath: path) else {
            if required { throw CLIError("context file \(path) does not exist") }
            return ClientContext()
        }
        do {
            return try parse(String(contentsOfFile: path, encoding: .utf8))
        } catch let error as CLIError {
            throw CLIError("context file \(path): \(error)")
        } catch {
            throw CLIError("context file \(path): \(error)")
        }
    }

    static func parse(_ text: String) throws -> ClientContext {
        guard let loaded = try Yams.load(yaml: text) else { return ClientContext() }
        guard let map = loaded as? [String: Any] else { throw CLIError("expected a mapping of url, creds, tenant") }
        var context = ClientContext()
        for (key, value) in map {
            guard let text = value as? String else {
                throw CLIError("key '\(key)' must be a string")
            }
            switch key {
            case "url": context.url = text
            case "creds": context.creds = text
            case "tenant": context.tenant = text
            default: throw CLIError("unknown key '\(key)' (known: \(keys.joined(separator: ", ")))")
            }
        }
        return context
    }
}
