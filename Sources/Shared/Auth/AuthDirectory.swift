import Foundation

/// A folder holding NATS authorization for Hangar: `creds/<user>.json` per principal and
/// `authorization.conf`, the nats-server `authorization { users = [...] }` block generated from
/// them (included by the server's configuration, e.g. `deploy/nats-server.conf`).
public struct AuthDirectory: Sendable {
    /// The folder.
    public let url: URL

    /// The folder at `path` (created when something is written).
    public init(path: String) {
        url = URL(fileURLWithPath: path).standardizedFileURL
    }

    /// The server configuration fragment.
    public var configPath: String { url.appendingPathComponent("authorization.conf").path }
    /// Where nats-server writes its pid when started by `hangar dev` (so `tenant add` can reload it).
    public var pidPath: String { url.appendingPathComponent("nats-server.pid").path }
    /// A link `hangar dev` puts to its nats-server's log, so that `tenant add` can see the reload
    /// it asked for take effect.
    public var serverLogLinkPath: String { url.appendingPathComponent("nats-server.log").path }
    /// The most nats-servers `hangar dev` runs (`--nats-servers 3`).
    public static let devServersMax = 3
    /// The pid file and log link of `hangar dev`'s nats-server `number` (1...``devServersMax``):
    /// ``pidPath`` and ``serverLogLinkPath`` for the first, `nats-server-N.pid` / `.log` for the others.
    public func devServerFiles(_ number: Int) -> (pid: String, log: String) {
        guard number > 1 else { return (pidPath, serverLogLinkPath) }
        return (
            url.appendingPathComponent("nats-server-\(number).pid").path,
            url.appendingPathComponent("nats-server-\(number).log").path
        )
    }

    /// `creds/<user>.json` in the folder.
    public func credentialsPath(for principal: Principal) -> String {
        url.appendingPathComponent("creds").appendingPathComponent("\(principal.user).json").path
    }

    /// The credentials of `principal`, created (and the configuration rewritten) if it has none
    /// yet. Returns them and whether they are new.
    @discardableResult
    public func ensure(_ principal: Principal) throws -> (NATSCredentials, created: Bool) {
        let path = credentialsPath(for: principal)
        if FileManager.default.fileExists(atPath: path) {
            return (try NATSCredentials.load(path: path), false)
        }
        let credentials = NATSCredentials(principal: principal)
        try credentials.write(path: path)
        try writeConfig()
        return (credentials, true)
    }

    /// Every principal's credentials, sorted by user.
    public func allCredentials() throws -> [NATSCredentials] {
        let folder = url.appendingPathComponent("creds")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return try names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.sorted().map {
            try NATSCredentials.load(path: folder.appendingPathComponent($0).path)
        }
    }

    /// Rewrites `authorization.conf` from the credentials files.
    public func writeConfig() throws {
        let text = Self.render(try allCredentials())
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        let temporary = url.appendingPathComponent(".authorization.conf.tmp")
        FileManager.default.createFile(
            atPath: temporary.path,
            contents: Data(text.utf8),
            attributes: [.posixPermissions: 0o600]
        )
        try replaceFile(configPath, with: temporary.path)
    }

    /// The nats-server accounts for these users: account HANGAR (every component, each user with
    /// its allow-lists; JetStream on) and the system account SYS (the `system` login only, which
    /// receives the server's authentication-failure events). Only public keys go in (passwords for
    /// files of earlier versions); names are NATS tokens, keys base32 and passwords hex (all
    /// checked on load), so nothing needs escaping.
    public static func render(_ users: [NATSCredentials]) -> String {
        func list(_ subjects: [String]) -> String { "[" + subjects.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        func entry(_ credentials: NATSCredentials, _ principal: Principal, indent: String) -> [String] {
            let permissions = principal.permissions
            var lines = ["\(indent){"] + credentials.serverLogin.map { "\(indent)  \($0)" }
            if principal != .system {
                lines.append("\(indent)  permissions: {")
                lines.append("\(indent)    publish: {allow: \(list(permissions.publish))}")
                lines.append("\(indent)    subscribe: {allow: \(list(permissions.subscribe))}")
                if permissions.allowResponses { lines.append("\(indent)    allow_responses: true") }
                lines.append("\(indent)  }")
            }
            lines.append("\(indent)}")
            return lines
        }
        var hangar: [String] = []
        var system: [String] = []
        for credentials in users {
            guard let principal = credentials.principal else { continue }
            if principal == .system {
                system += entry(credentials, principal, indent: "      ")
            } else {
                hangar += entry(credentials, principal, indent: "      ")
            }
        }
        var lines = [
            "# Generated by `hangar tenant add`; do not edit (it is rewritten from creds/*.json).",
            "# Every connection must log in; each user may use only the subjects listed.",
            "accounts {",
            "  HANGAR {",
            "    jetstream: enabled",
            "    users = [",
        ]
        lines += hangar
        lines += ["    ]", "  }", "  SYS {", "    users = ["]
        lines += system
        lines += ["    ]", "  }", "}", "system_account: SYS", ""]
        return lines.joined(separator: "\n")
    }

    /// The nats-server `include` line for `authorization.conf`, relative to the folder of the
    /// configuration file that includes it (nats-server 2.9 resolves includes relative to it and
    /// mangles absolute paths).
    public func includeLine(fromConfigIn folder: URL) -> String {
        let from = folder.standardizedFileURL.pathComponents
        let to = URL(fileURLWithPath: configPath).pathComponents
        var common = 0
        while common < min(from.count, to.count), from[common] == to[common] { common += 1 }
        let relative = Array(repeating: "..", count: from.count - common) + to[common...]
        return "include \"\(relative.joined(separator: "/"))\""
    }

    /// Creates the credentials a local cluster needs (scheduler, nodes, tenants, operators, E2B
    /// gateways) unless they exist, and rewrites `authorization.conf`.
    public func prepareLocalCluster(
        nodes: [String],
        tenants: [String],
        operators: [String],
        gateways: [String] = []
    ) throws {
        var principals: [Principal] = [.scheduler, .system]
        principals += nodes.map(Principal.node) + tenants.map(Principal.tenant) + operators.map(Principal.operator)
        principals += gateways.map(Principal.gateway)
        for principal in principals { try ensure(principal) }
        try writeConfig()
    }
}
