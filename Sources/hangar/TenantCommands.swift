import ArgumentParser
import Foundation
import HangarGateway
import HangarShared

struct TenantListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List tenants: configured ones and those with jobs since the scheduler started."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let stats = try await clusterStatsQuery(connection: connection)
        if output.isJSON {
            var reply = Hangar_V1_ClusterStats()
            reply.tenants = stats.tenants
            try printJSON(reply)
            return
        }
        var header = ["TENANT", "WEIGHT", "RUNNING", "QUEUED", "SHARE", "FAIR SHARE", "REJECTED"]
        if output.isWide { header += ["ACCEPTED", "FINISHED", "MAX CONCURRENT", "RATE/BURST", "RUNTIMES"] }
        var rows = [header]
        for tenant in stats.tenants {
            var row = [
                tenant.name.terminalSafe + (tenant.configured ? "" : "*"),
                formatNumber(tenant.weight),
                String(tenant.running),
                String(tenant.queued),
                percent(tenant.dominantShare),
                tenant.fairShare > 0 ? percent(tenant.fairShare) : "-",
                String(tenant.rejected),
            ]
            if output.isWide {
                row += [
                    String(tenant.accepted), String(tenant.finished), String(tenant.maxConcurrent),
                    "\(formatNumber(tenant.rate))/\(formatNumber(tenant.burst))",
                    tenant.runtimes.isEmpty ? "all" : tenant.runtimes.joined(separator: ",").terminalSafe,
                ]
            }
            rows.append(row)
        }
        print(formatTable(rows, style: .stdout))
        if stats.tenants.contains(where: { !$0.configured }) {
            printError("* not in the tenants file: the defaults apply")
        }
        if stats.tenants.isEmpty { printError("no tenants configured and no jobs yet") }
    }
}

struct TenantShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one tenant: its policy (weight, quotas, rate, allowed runtimes) and current usage."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The tenant name.")
    var name: String

    func run() async throws {
        let stats = try await clusterStatsQuery(connection: connection)
        guard let tenant = stats.tenants.first(where: { $0.name == name }) else {
            printError(
                "no tenant '\(name)': not in the tenants file and no jobs since the scheduler started"
                    + " (known: \(stats.tenants.map(\.name).joined(separator: ", ")))"
            )
            throw ExitCode(1)
        }
        if output.isJSON {
            try printJSON(tenant)
            return
        }
        let lines: [(String, String)] = [
            ("tenant", tenant.name),
            ("configured", tenant.configured ? "yes (tenants file)" : "no (the defaults apply)"),
            ("weight", formatNumber(tenant.weight)),
            ("running", "\(tenant.running) of max \(tenant.maxConcurrent)"),
            ("queued", "\(tenant.queued) of max \(tenant.maxQueued)"),
            ("share", "\(percent(tenant.dominantShare)) of the cluster (dominant resource)"),
            ("fair share", tenant.fairShare > 0 ? percent(tenant.fairShare) : "- (idle)"),
            ("cpu", "\(cores(UInt64(tenant.cpuMillisUsed))) of max \(cores(tenant.maxCpuMillis)) cores"),
            ("memory", "\(gibibytes(tenant.memoryBytesUsed)) of max \(gibibytes(tenant.maxMemoryBytes)) GiB"),
            ("rate", "\(formatNumber(tenant.rate))/s, burst \(formatNumber(tenant.burst))"),
            ("runtimes", tenant.runtimes.isEmpty ? "all" : tenant.runtimes.joined(separator: ", ")),
            ("templates", tenant.templates.isEmpty ? "all" : tenant.templates.joined(separator: ", ")),
            ("accepted", String(tenant.accepted)),
            ("finished", String(tenant.finished)),
            ("rejected", String(tenant.rejected)),
        ]
        let width = lines.map(\.0.count).max() ?? 0
        print(
            lines.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1.terminalSafe }.joined(
                separator: "\n"
            )
        )
    }
}

func clusterStatsQuery(connection: ConnectionOptions) async throws -> Hangar_V1_ClusterStats {
    try await adminQuery("stats", Hangar_V1_StatsRequest(), as: Hangar_V1_ClusterStats.self, connection: connection)
}

func percent(_ fraction: Double) -> String { String(format: "%.0f%%", fraction * 100) }

/// 3 for 3.0, 2.5 for 2.5.
func formatNumber(_ value: Double) -> String {
    value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(format: "%.2f", value)
}

/// `hangar tenant api-key`: the E2B gateway's API keys, kept by the scheduler.
struct TenantAPIKeyGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api-key",
        abstract: "E2B gateway API keys: create, ls, revoke (the scheduler keeps only their SHA-256).",
        discussion: """
            A key is e2b_ + 40 hex digits, printed once when created; the scheduler stores its SHA-256 and the
            tenant. Its id (the first 12 hex digits of the hash) is what `ls` shows and `revoke` takes. Gateways
            cache a valid key for up to 10 s, so a revoked key may work that much longer on a gateway.
            Creations, revocations and failed lookups are in the audit trail (`hangar audit`).
            """,
        subcommands: [TenantAPIKeyCreateCommand.self, TenantAPIKeyListCommand.self, TenantAPIKeyRevokeCommand.self]
    )
}

struct TenantAPIKeyCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create an API key for a tenant and print it (once)."
    )

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The tenant.")
    var tenant: String

    func validate() throws {
        guard Subjects.isValidToken(tenant) else {
            throw ValidationError("the tenant must be 1-64 characters of A-Z a-z 0-9 _ -")
        }
    }

    func run() async throws { try await createAPIKey(tenant: tenant, connection: connection) }
}

struct TenantAPIKeyListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List API keys (ids, never the keys): one tenant's, or every tenant's."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Flag(help: "Include revoked keys.")
    var all = false
    @Argument(help: "The tenant (default: every tenant).")
    var tenant: String?

    func run() async throws {
        var request = Hangar_V1_APIKeyListRequest()
        request.tenant = tenant ?? ""
        request.includeRevoked = all
        let reply = try await adminQuery(
            "apikey-list",
            request,
            as: Hangar_V1_APIKeyListReply.self,
            connection: connection
        )
        guard reply.message.isEmpty else {
            printError(reply.message)
            throw ExitCode(1)
        }
        if output.isJSON {
            try printJSON(reply)
            return
        }
        var rows = [["ID", "TENANT", "CREATED", "CREATED BY", "REVOKED"]]
        for key in reply.keys {
            rows.append([
                key.keyID, key.tenant, apiKeyTime(key.createdAtMs), key.createdBy.terminalSafe,
                key.revokedAtMs == 0 ? "-" : "\(apiKeyTime(key.revokedAtMs)) by \(key.revokedBy.terminalSafe)",
            ])
        }
        print(formatTable(rows, style: .stdout))
        if reply.keys.isEmpty { printError("no API keys" + (tenant.map { " for tenant \($0)" } ?? "")) }
    }
}

struct TenantAPIKeyRevokeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke",
        abstract: "Revoke an API key by its id (gateways may accept it for up to 10 s more)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The key's id (from `hangar tenant api-key ls`), or the key itself.")
    var key: String

    func run() async throws {
        var request = Hangar_V1_APIKeyRevokeRequest()
        request.keyID = key.hasPrefix(GatewayAPIKey.prefix) ? GatewayAPIKey.id(of: key) : key.lowercased()
        request.actor = operatorName()
        let reply = try await adminQuery(
            "apikey-revoke",
            request,
            as: Hangar_V1_APIKeyAdminReply.self,
            connection: connection
        )
        if output.isJSON {
            try printJSON(reply)
        } else if reply.ok {
            print(reply.message.terminalSafe)
        }
        if !reply.ok {
            printError(reply.message)
            throw ExitCode(1)
        }
    }
}

/// Makes a key, has the scheduler store its hash for `tenant`, and prints the key.
func createAPIKey(tenant: String, connection: ConnectionOptions) async throws {
    let key = GatewayAPIKey.generate()
    var request = Hangar_V1_APIKeyCreateRequest()
    request.tenant = tenant
    request.keySha256 = GatewayAPIKey.sha256(key)
    request.actor = operatorName()
    let reply = try await adminQuery(
        "apikey-create",
        request,
        as: Hangar_V1_APIKeyAdminReply.self,
        connection: connection
    )
    guard reply.ok else {
        printError("could not create an API key: \(reply.message)")
        throw ExitCode(1)
    }
    print("API key \(reply.key.keyID) for tenant \(tenant) (shown once; the scheduler keeps only its hash):")
    print(key)
}

private func apiKeyTime(_ milliseconds: Int64) -> String {
    Date(timeIntervalSince1970: Double(milliseconds) / 1000).formatted(Date.ISO8601FormatStyle())
}
