import ArgumentParser
import Foundation
import HangarNATS
import HangarShared
import Logging

/// How a command reaches NATS: flag > environment (HANGAR_URL, HANGAR_CREDS) > the URL a running
/// `hangar dev` saved in its state folder > the context file > nats://127.0.0.1:4222. Credentials:
/// `--creds` > HANGAR_CREDS > the context file > the file `hangar dev` wrote for this command's
/// principal in STATE/auth/creds/.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("nats"), help: "NATS server URL(s), comma-separated. Env: HANGAR_URL.")
    var url: String?

    @Option(help: "Credentials file (from `hangar tenant add`, or a NATS .creds file). Env: HANGAR_CREDS.")
    var creds: String?

    @Option(
        name: .customLong("tls-ca"),
        help:
            "CA certificates (PEM) that sign the NATS servers' TLS certificates; the connection is then TLS. Env: HANGAR_TLS_CA."
    )
    var tlsCA: String?

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
                if !url.isEmpty { return url.split(separator: ",").map(String.init) }
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

    /// The CA file for TLS: flag > HANGAR_TLS_CA > none.
    var tlsCAFile: String? {
        if let tlsCA { return tlsCA }
        if let ca = ProcessInfo.processInfo.environment["HANGAR_TLS_CA"], !ca.isEmpty { return ca }
        return nil
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

    /// Connects as `principal`: the credentials given, or those `hangar dev` wrote for it. A failure
    /// names the servers, the credentials file used (and where it came from) and why: the server
    /// refused the login (authorization violation), nothing listens there, or another error.
    func connect(
        name: String,
        logger: Logger,
        sendAsap: Bool = true,
        as principal: Principal = .operator(AuthDefaults.operatorName)
    ) async throws -> NATSConnection {
        let servers = try self.servers
        var options = NATSConnectionOptions(servers: servers, name: name, sendAsap: sendAsap, logger: logger)
        options.tlsCAFile = tlsCAFile
        let login = try credentials(for: principal)
        if let login { try applyCredentials(login.file, to: &options) }
        let using = login.map { "credentials \($0.file) (\($0.source))" } ?? "no credentials"
        logger.info(
            "connecting to NATS",
            metadata: ["nats.servers": "\(servers.joined(separator: ","))", "nats.credentials": "\(using)"]
        )
        do {
            return try await NATSConnection(options: options)
        } catch let error as NATSError {
            throw CLIError(connectFailure(error, servers: servers, using: using))
        }
    }

    /// Connects as ``connect(name:logger:sendAsap:as:)`` does, runs `body` with the connection and
    /// closes it before returning or rethrowing what `body` threw: a command's connection is closed
    /// when the command ends, not later by a task of its own.
    func withConnection<T>(
        name: String,
        logger: Logger,
        sendAsap: Bool = true,
        as principal: Principal = .operator(AuthDefaults.operatorName),
        _ body: (NATSConnection) async throws -> T
    ) async throws -> T {
        let nats = try await connect(name: name, logger: logger, sendAsap: sendAsap, as: principal)
        let result: T
        do {
            result = try await body(nats)
        } catch {
            await nats.close()
            throw error
        }
        await nats.close()
        return result
    }

    /// The credentials file for `principal` and where it was found: `--creds`, HANGAR_CREDS, the
    /// context file, else the file `hangar dev` wrote in STATE/auth/creds/ if there is one.
    func credentials(for principal: Principal) throws -> (file: String, source: String)? {
        if let creds { return (creds, "--creds") }
        if let creds = ProcessInfo.processInfo.environment["HANGAR_CREDS"], !creds.isEmpty {
            return (creds, "HANGAR_CREDS")
        }
        if let creds = try loadContext().creds { return (creds, "the context file") }
        let devFile = AuthDirectory(path: URL(fileURLWithPath: state).appendingPathComponent("auth").path)
            .credentialsPath(for: principal)
        guard FileManager.default.fileExists(atPath: devFile) else { return nil }
        return (devFile, "written by `hangar dev` in --state \(state)")
    }
}

/// Why a connection to `servers` failed, in words a user can act on.
func connectFailure(_ error: NATSError, servers: [String], using: String) -> String {
    let at = servers.joined(separator: ",")
    switch error.connectFailure {
    case .authorization:
        return
            "NATS at \(at) did not accept the login with \(using): authorization violation (unknown user or wrong key; "
            + "use the credentials of this server, e.g. --creds FILE): \(error)"
    case .nothingListening:
        return "cannot reach NATS at \(at) (tried with \(using)): nothing is listening there. "
            + "Is `hangar dev` running? \(error)"
    case .other:
        return "cannot connect to NATS at \(at) with \(using): \(error)"
    }
}

/// A command-line failure with a message for the user.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

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
    options.logIn(with: credentials)
}
