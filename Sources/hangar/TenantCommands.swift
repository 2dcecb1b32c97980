import ArgumentParser
import Foundation
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
