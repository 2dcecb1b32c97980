import ArgumentParser
import Foundation
import HangarNATS
import Logging

/// How a command reaches NATS: flag > environment (HANGAR_URL, HANGAR_CREDS) > the URL a running
/// `hangar dev` saved in its state folder > the context file > nats://127.0.0.1:4222.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("nats"), help: "NATS server URL(s), comma-separated. Env: HANGAR_URL.")
    var url: String?

    @Option(help: "NATS credentials file. Env: HANGAR_CREDS.")
    var creds: String?

    @Option(help: "Folder where `hangar dev` keeps its state (and the URL of its NATS server).")
    var state: String = ".hangar"

    @Option(
        help: "Context file (YAML: url, creds, tenant). Env: HANGAR_CONTEXT. Default: ~/.config/hangar/context.yaml."
    )
    var context: String?

    var servers: [String] {
        get throws {
            let environment = ProcessInfo.processInfo.environment
            if let url { return url.split(separator: ",").map(String.init) }
            if let url = environment["HANGAR_URL"], !url.isEmpty { return url.split(separator: ",").map(String.init) }
            let saved = URL(fileURLWithPath: state).appendingPathComponent("url")
            if let text = try? String(contentsOf: saved, encoding: .utf8) {
                let url = text.trimmingCharacters(in: .whitespacesAndNewlines)
                if !url.isEmpty { return [url] }
            }
            if let url = try loadContext().url { return url.split(separator: ",").map(String.init) }
            return ["nats://127.0.0.1:4222"]
        }
    }

    /// The credentials file: flag > HANGAR_CREDS > context file > none.
    var credentialsFile: String? {
        get throws {
            if let creds { return creds }
            if let creds = ProcessInfo.processInfo.environment["HANGAR_CREDS"], !creds.isEmpty { return creds }
            return try loadContext().creds
        }
    }

    /// The tenant: `flag` > HANGAR_TENANT > context file > `default`.
    func tenant(_ flag: String?) throws -> String {
        if let flag { return flag }
        if let tenant = ProcessInfo.processInfo.environment["HANGAR_TENANT"], !tenant.isEmpty { return tenant }
        return try loadContext().tenant ?? "default"
    }

    func loadContext() throws -> ClientContext {
        let environment = ProcessInfo.processInfo.environment
        if let path = context ?? environment["HANGAR_CONTEXT"].flatMap({ $0.isEmpty ? nil : $0 }) {
            return try ClientContext.load(path: path, required: true)
        }
        return try ClientContext.load(path: ClientContext.defaultPath(environment), required: false)
    }

    func connect(name: String, logger: Logger, sendAsap: Bool = true) async throws -> NATSConnection {
        let servers = try self.servers
        var options = NATSConnectionOptions(servers: servers, name: name, sendAsap: sendAsap, logger: logger)
        options.credentialsFile = try credentialsFile
        do {
            return try await NATSConnection(options: options)
        } catch {
            throw CLIError("cannot reach NATS at \(servers.joined(separator: ",")): \(error). Is `hangar dev` running?")
        }
    }
}

/// A command-line failure with a message for the user.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
