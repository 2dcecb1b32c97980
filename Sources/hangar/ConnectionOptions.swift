import ArgumentParser
import Foundation
import HangarNATS
import HangarShared
import Logging

/// How a command reaches NATS: flag > environment (HANGAR_URL, HANGAR_CREDS, HANGAR_TENANT) >
/// the URL `hangar dev` saved in its state folder > nats://127.0.0.1:4222. Credentials: `--creds` >
/// HANGAR_CREDS > the file `hangar dev` wrote for this command's principal in STATE/auth/creds/.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("nats"), help: "NATS server URL(s), comma-separated. Env: HANGAR_URL.")
    var url: String?

    @Option(help: "Credentials file (from `hangar tenant add`, or a NATS .creds file). Env: HANGAR_CREDS.")
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

    /// Connects as `principal`: the credentials given, or those `hangar dev` wrote for it.
    func connect(
        name: String,
        logger: Logger,
        sendAsap: Bool = true,
        as principal: Principal = .operator(AuthDefaults.operatorName)
    ) async throws -> NATSConnection {
        var options = NATSConnectionOptions(servers: servers, name: name, sendAsap: sendAsap, logger: logger)
        let given = creds ?? ProcessInfo.processInfo.environment["HANGAR_CREDS"].flatMap { $0.isEmpty ? nil : $0 }
        let devFile = AuthDirectory(path: URL(fileURLWithPath: state).appendingPathComponent("auth").path)
            .credentialsPath(for: principal)
        if let file = given ?? (FileManager.default.fileExists(atPath: devFile) ? devFile : nil) {
            try applyCredentials(file, to: &options)
        }
        do {
            return try await NATSConnection(options: options)
        } catch let error as NATSError where error.kind == .authenticationFailed {
            throw CLIError("NATS at \(servers.joined(separator: ",")) refused the credentials: \(error)")
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

/// Names `hangar dev` uses for the principals it creates.
enum AuthDefaults {
    /// The operator whose credentials `hangar dev` writes (admin commands use them by default).
    static let operatorName = "admin"
}

/// Sets the login of `file`: a hangar credentials file (JSON, from `hangar tenant add`) or a NATS
/// `.creds` file (JWT and NKey seed).
func applyCredentials(_ file: String, to options: inout NATSConnectionOptions) throws {
    let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: file)).read(upToCount: 64)) ?? nil
    if let head, String(decoding: head, as: UTF8.self).contains("-----BEGIN NATS USER JWT") {
        options.credentialsFile = file
        return
    }
    let credentials: NATSCredentials
    do {
        credentials = try NATSCredentials.load(path: file)
    } catch {
        throw CLIError("\(error)")
    }
    options.user = credentials.user
    options.password = credentials.password
    options.inboxPrefix = credentials.inboxPrefix
}
