import ArgumentParser
import HangarClient
import HangarShared

// `hangar sandbox` speaks to the cluster only through the client library (HangarClient): its
// connection, subjects, timeouts, lifecycle watching and errors are the library's. What the CLI
// adds is presentation; where it prints the wire answer (--output json), it uses the library's
// package-level calls that return it.

extension ConnectionOptions {
    /// Runs `body` with a client of the tenant (`--tenant`, HANGAR_TENANT, the context's, else
    /// default) on a connection of its own, closed afterwards. A ``HangarClientError`` it throws
    /// reaches `hangar`'s main, which prints its message and exits 1.
    func withHangar<T>(
        _ owner: SandboxTenantOptions,
        name: String,
        _ body: (HangarClient.Hangar) async throws -> T
    ) async throws -> T {
        let tenant = try tenant(owner.tenant)
        guard Subjects.isValidToken(tenant) else {
            throw ValidationError("--tenant must be 1-64 characters of A-Z a-z 0-9 _ -, got '\(tenant)'")
        }
        return try await withConnection(name: name, logger: cliLogger(), as: .tenant(tenant)) { nats in
            try await body(try HangarClient.Hangar(connection: nats, tenant: tenant))
        }
    }

    /// Runs `body` with the tenant's running sandbox `id` (the scheduler names its node, which
    /// takes the data plane); a sandbox that is not running is an error saying how it ended.
    func withSandbox<T>(
        _ id: String,
        _ owner: SandboxTenantOptions,
        name: String,
        _ body: (Sandbox) async throws -> T
    ) async throws -> T {
        try await withHangar(owner, name: name) { hangar in
            try await body(try await hangar.sandbox(id))
        }
    }
}

/// How long a stream of a command with no timeout of its own may last: as long as its sandbox.
let untilTheSandboxEnds = Duration.seconds(365 * 24 * 3600)
