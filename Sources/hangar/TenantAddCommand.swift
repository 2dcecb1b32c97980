import ArgumentParser
import Foundation
import HangarShared

/// `hangar tenant add NAME`: creates NAME's credentials and rewrites the server's authorization.
struct TenantAddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Create a tenant's NATS credentials and its stanza in the server's authorization.conf.",
        discussion: """
            Writes AUTH_DIR/creds/tenant-NAME.json (user, password, inbox prefix; mode 0600) and rewrites
            AUTH_DIR/authorization.conf, which nats-server includes. The tenant may publish only on
            hangar.submit.NAME, hangar.cancel.NAME and hangar.job.NAME, and subscribe only to
            hangar.result.NAME.> and _INBOX.t.NAME.>. Give the tenant its file (`hangar run --creds FILE`).
            If nats-server was started by `hangar dev` on this folder it is told to reload at once;
            otherwise run `nats-server --signal reload`. --role creates a node, scheduler or operator login.
            """
    )

    @Argument(help: "The tenant's name: 1-64 characters of A-Z a-z 0-9 _ -.")
    var name: String
    @Option(help: "tenant, node, scheduler or operator.")
    var role: String = "tenant"
    @Option(help: "Authorization folder (creds/ and authorization.conf); `hangar dev` uses STATE/auth.")
    var authDir: String = ".hangar/auth"

    func validate() throws {
        guard Principal.roles.contains(role) else {
            throw ValidationError("--role must be one of \(Principal.roles.joined(separator: ", "))")
        }
        guard Subjects.isValidToken(name) else {
            throw ValidationError("the name must be 1-64 characters of A-Z a-z 0-9 _ -")
        }
    }

    func run() throws {
        guard let principal = Principal(role: role, name: name) else {
            throw ValidationError("invalid role or name")
        }
        let auth = AuthDirectory(path: authDir)
        let (_, created) = try auth.ensure(principal)
        let path = auth.credentialsPath(for: principal)
        if !created {
            print("\(principal.user) already has credentials: \(path)")
            return
        }
        print("credentials: \(path)")
        print("server authorization: \(auth.configPath)")
        if let reloaded = reloadDevServer(auth) {
            print("nats-server (pid \(reloaded)) reloaded its configuration")
        } else {
            print("reload nats-server to apply: nats-server --signal reload")
        }
    }

    /// Sends SIGHUP (reload) to the nats-server `hangar dev` started on this folder, if it runs.
    private func reloadDevServer(_ auth: AuthDirectory) -> Int32? {
        guard let text = try? String(contentsOfFile: auth.pidPath, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
            kill(pid, 0) == 0
        else { return nil }
        return kill(pid, SIGHUP) == 0 ? pid : nil
    }
}
