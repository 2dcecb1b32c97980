import ArgumentParser
import Foundation
import HangarNATS
import Logging

/// How a command reaches NATS: flag > environment (HANGAR_URL, HANGAR_CREDS, HANGAR_TENANT) >
/// the URL `hangar dev` saved in its state folder > nats://127.0.0.1:4222.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("nats"), help: "NATS server URL(s), comma-separated. Env: HANGAR_URL.")
    var url: String?

    @Option(help: "NATS credentials file. Env: HANGAR_CREDS.")
    var creds: String?

    @Option(help: "Folder where `hangar dev` keeps its state (and the URL of its NATS server).")
    var state: String = ".hangar"

    var servers: [String] {
        let environment = ProcessInfo.processInfo.environment
        if let url { return url.split(separator: ",").map(String.init) }
        if let url = environment["HANGAR_URL"], !url.isEmpty { return url.split(separator: ",").map(String.init) }
        let saved = URL(fileURLWithPath: state).appendingPathComponent("url")
        if let text = try? String(contentsOf: saved, encoding: .utf8) {
            let url = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !url.isEmpty { return [url] }
        }
        return ["nats://127.0.0.1:4222"]
    }

    func connect(name: String, logger: Logger, sendAsap: Bool = true) async throws -> NATSConnection {
        var options = NATSConnectionOptions(servers: servers, name: name, sendAsap: sendAsap, logger: logger)
        options.credentialsFile = creds ?? ProcessInfo.processInfo.environment["HANGAR_CREDS"]
        do {
            return try await NATSConnection(options: options)
        } catch {
            throw CLIError("cannot reach NATS at \(servers.joined(separator: ",")): \(error). Is `hangar dev` running?")
        }
    }
}

/// Log level option shared by the daemons.
struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func level() throws -> Logger.Level {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
        return level
    }
}

/// A command-line failure with a message for the user.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
