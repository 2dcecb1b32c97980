import ArgumentParser
import Foundation
import HangarGateway
import HangarShared

/// `hangar tenant add NAME`: creates NAME's credentials and rewrites the server's authorization.
struct TenantAddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Create a tenant's NATS credentials and its stanza in the server's authorization.conf.",
        discussion: """
            Writes AUTH_DIR/creds/tenant-NAME.json (user, password, inbox prefix; mode 0600) and rewrites
            AUTH_DIR/authorization.conf, which nats-server includes. The tenant may publish only on
            hangar.submit.NAME, hangar.cancel.NAME and hangar.job.NAME, and subscribe only to
            hangar.result.NAME.> and _INBOX.t.NAME.>. Give the tenant its file (`hangar run --creds FILE`).
            If nats-server was started by `hangar dev` on this folder it is told to reload at once, and
            the command returns once the server has applied it (the new login works from then on);
            otherwise run `nats-server --signal reload`. --role creates a node, scheduler or operator login.
            --api-key also makes an API key for the E2B gateway (`hangar gateway`): the scheduler stores only
            its SHA-256, and the key is printed once (give it to the tenant as E2B_API_KEY). A tenant that
            has credentials already gets a new key. See `hangar tenant api-key` to list and revoke keys.
            """
    )

    @Argument(help: "The tenant's name: 1-64 characters of A-Z a-z 0-9 _ -.")
    var name: String
    @Option(help: "tenant, node, scheduler or operator.")
    var role: String = "tenant"
    @Option(help: "Authorization folder (creds/ and authorization.conf); `hangar dev` uses STATE/auth.")
    var authDir: String = ".hangar/auth"
    @Flag(help: "Also create an E2B API key for the tenant (stored by the scheduler; printed once).")
    var apiKey = false
    @OptionGroup var connection: ConnectionOptions

    func validate() throws {
        guard Principal.roles.contains(role) else {
            throw ValidationError("--role must be one of \(Principal.roles.joined(separator: ", "))")
        }
        guard Subjects.isValidToken(name) else {
            throw ValidationError("the name must be 1-64 characters of A-Z a-z 0-9 _ -")
        }
        if apiKey && role != "tenant" {
            throw ValidationError("--api-key is for tenants (--role tenant)")
        }
    }

    func run() async throws {
        guard let principal = Principal(role: role, name: name) else {
            throw ValidationError("invalid role or name")
        }
        let auth = AuthDirectory(path: authDir)
        let (_, created) = try auth.ensure(principal)
        let path = auth.credentialsPath(for: principal)
        if !created {
            print("\(principal.user) already has credentials: \(path)")
        } else {
            print("credentials: \(path)")
            print("server authorization: \(auth.configPath)")
            // Every nats-server `hangar dev` runs on this folder (three with --nats-servers 3).
            let servers = (1...AuthDirectory.devServersMax).compactMap { number -> (Int32, String)? in
                let files = auth.devServerFiles(number)
                return devServerPID(files.pid).map { ($0, files.log) }
            }
            if servers.isEmpty {
                print("reload nats-server to apply: nats-server --signal reload")
            }
            for (pid, log) in servers {
                try await DevServerReload(logPath: log, pid: pid).perform()
                print("nats-server (pid \(pid)) reloaded its configuration")
            }
        }
        if apiKey { try await createAPIKey(tenant: name, connection: connection) }
    }

    /// The nats-server `hangar dev` started on this folder, if it runs: the pid file's process, if
    /// it is a nats-server (a stale file may name an unrelated process by now).
    private func devServerPID(_ pidPath: String) -> Int32? {
        guard let text = try? String(contentsOfFile: pidPath, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
            kill(pid, 0) == 0,
            let command = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
            command.hasPrefix("nats-server")
        else { return nil }
        return pid
    }
}

/// Tells a `hangar dev` nats-server to reload (SIGHUP) and waits until its log says the reload is
/// done. The signal alone returns at once, and a login made before the server has applied the new
/// authorization is refused.
struct DevServerReload {
    let logPath: String
    let pid: Int32
    var timeout: Duration = .seconds(10)

    static let done = "Reloaded server configuration"
    static let failed = "Failed to reload server configuration"

    func perform() async throws {
        let before = outcomes()
        guard kill(pid, SIGHUP) == 0 else {
            throw CLIError("could not signal nats-server (pid \(pid)) to reload: errno \(errno)")
        }
        // Without the log (an older `hangar dev`) there is nothing to wait for.
        guard FileManager.default.fileExists(atPath: logPath) else { return }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let now = outcomes()
            if now.failed.count > before.failed.count {
                throw CLIError("nats-server (pid \(pid)) could not reload its configuration: \(now.failed.last!)")
            }
            if now.done > before.done { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw CLIError(
            "nats-server (pid \(pid)) was told to reload but did not report it done within \(timeout); see \(logPath)"
        )
    }

    /// How many reloads the log reports done, and the lines of failed ones.
    private func outcomes() -> (done: Int, failed: [String]) {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        var done = 0
        var failed: [String] = []
        for line in text.split(separator: "\n") {
            if line.contains(Self.done) { done += 1 } else if line.contains(Self.failed) { failed.append(String(line)) }
        }
        return (done, failed)
    }
}
