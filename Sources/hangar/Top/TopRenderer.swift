import Foundation
import HangarShared

/// Draws one frame of `hangar top` from the scheduler's stats: pure, so `--once` and tests see
/// exactly what the live screen shows.
struct TopRenderer {
    /// Columns available; lines are cut to it on a terminal.
    var width: Int
    var style: Style
    /// Unicode bar characters on a terminal, ASCII otherwise.
    var unicode: Bool

    func render(
        _ stats: Hangar_V1_ClusterStats,
        cluster: Hangar_V1_ClusterStatusReply? = nil,
        now: Date = Date()
    ) -> [String] {
        let up = stats.nodes.filter { $0.state != .down }.count
        let time = ISO8601DateFormatter().string(from: now)
        var lines = [
            style.bold("hangar top") + "  \(stats.nodes.count) nodes (\(up) up), \(stats.tenants.count) tenants, "
                + "uptime \(duration(stats.uptimeMs))  \(style.dim(time))",
            "",
            style.bold("CLUSTER") + "  "
                + [
                    "jobs/s \(String(format: "%.1f", stats.jobsPerSecond))",
                    "latency p50 \(milliseconds(stats.latencyP50Ms)) p99 \(milliseconds(stats.latencyP99Ms))",
                    "queue \(stats.queueDepth)",
                    "running \(stats.running)",
                    "finished \(stats.jobsFinished)",
                    "rejected \(stats.rejected)",
                    "placement failures "
                        + (stats.placementFailures > 0
                            ? style.red(String(stats.placementFailures)) : String(stats.placementFailures)),
                ].joined(separator: "  "),
            "",
        ]
        if let cluster {
            lines += [natsLine(cluster)]
            if let schedulers = schedulerLine(cluster) { lines.append(schedulers) }
            lines.append("")
        }
        lines += nodeLines(stats.nodes)
        lines.append("")
        lines += tenantLines(stats.tenants)
        return lines
    }

    /// `NATS  3 servers known  HANGAR_SUBMISSIONS@n1 ...  scheduler leader term 4`: where each stream
    /// is led (red `none` while one is elected, a count of offline copies), and the scheduler's role.
    private func natsLine(_ cluster: Hangar_V1_ClusterStatusReply) -> String {
        var parts = ["\(cluster.natsServers.count) server\(cluster.natsServers.count == 1 ? "" : "s") known"]
        for stream in cluster.streams {
            let name = stream.name.replacingOccurrences(of: "HANGAR_", with: "").lowercased().terminalSafe
            if !stream.error.isEmpty {
                parts.append("\(name) " + style.red("unavailable"))
                continue
            }
            var text = "\(name) R\(stream.replicas)"
            if stream.replicas > 1 || !stream.leader.isEmpty {
                text += stream.leader.isEmpty ? " " + style.red("no leader") : "@\(stream.leader.terminalSafe)"
            }
            let offline = stream.followers.filter(\.offline).count
            if offline > 0 { text += " " + style.red("\(offline) offline") }
            parts.append(text)
        }
        if let scheduler = cluster.schedulers.first {
            parts.append(
                scheduler.term == 0
                    ? "scheduler \(scheduler.role.terminalSafe)" : "scheduler leader term \(scheduler.term)"
            )
        }
        return style.bold("NATS") + "  " + parts.joined(separator: "  ")
    }

    /// `SCHEDULERS  vm pid 8 leader term 4 log 120  vm pid 9 standby lag 0`: with a leader lease,
    /// every scheduler the answering one hears, its role and how far its store trails in the store
    /// log (yellow past 100 entries, red past 1000). Nil for a single scheduler without a lease.
    private func schedulerLine(_ cluster: Hangar_V1_ClusterStatusReply) -> String? {
        guard let leader = cluster.schedulers.first, !leader.holder.isEmpty else { return nil }
        var parts = [
            "\(leader.id.terminalSafe) \(leader.role.terminalSafe) term \(leader.term) log \(leader.logApplied)"
        ]
        for standby in cluster.schedulers.dropFirst() {
            let lag = cluster.storeLogLag(of: standby) ?? 0
            let lagText = "lag \(lag)"
            parts.append(
                "\(standby.id.terminalSafe) \(standby.role.terminalSafe) "
                    + (lag > 1000 ? style.red(lagText) : lag > 100 ? style.yellow(lagText) : lagText)
            )
        }
        if cluster.schedulers.count == 1 { parts.append(style.yellow("no standby heard")) }
        return style.bold("SCHEDULERS") + "  " + parts.joined(separator: "  ")
    }

    private func nodeLines(_ nodes: [Hangar_V1_NodeInfo]) -> [String] {
        let barWidth = width >= 140 ? 20 : 10
        var rows = [
            [
                "NODE", "HOST", "STATUS", "RUNTIMES", "SLOTS U/R/T", "CPU used/resv/alloc", "MEMORY used/resv/total",
                "POOLS ready/max", "SANDBOXES by tenant",
            ]
        ]
        for node in nodes {
            let heartbeat = node.lastHeartbeat
            let capacity = heartbeat.capacity
            let cpuTotal = Double(node.cpuMillisAllocatable)
            let memoryTotal = Double(capacity.memoryBytes)
            rows.append([
                heartbeat.nodeID.terminalSafe,
                heartbeat.host.isEmpty ? "-" : heartbeat.host.terminalSafe,
                style.state(nodeStateText(node)),
                heartbeat.runtimes.filter(\.available).map(\.name).joined(separator: ",").terminalSafe,
                "\(capacity.slotsUsed)/\(node.slotsReserved)/\(capacity.slotsTotal)",
                bar(Double(capacity.cpuMillisUsed), Double(node.cpuMillisReserved), cpuTotal, width: barWidth) + " "
                    + "\(cores(UInt64(capacity.cpuMillisUsed)))/\(cores(UInt64(node.cpuMillisReserved)))/\(cores(node.cpuMillisAllocatable))",
                bar(Double(capacity.memoryBytesUsed), Double(node.memoryBytesReserved), memoryTotal, width: barWidth)
                    + " "
                    + "\(gibibytes(capacity.memoryBytesUsed))/\(gibibytes(node.memoryBytesReserved))/\(gibibytes(capacity.memoryBytes))G",
                poolText(node).terminalSafe,
                node.lastHeartbeat.sandboxes.isEmpty
                    ? "0" : "\(node.lastHeartbeat.sandboxes.count) (\(sandboxTenants(node)))".terminalSafe,
            ])
        }
        if nodes.isEmpty { rows.append(["(no node has reported yet)", "", "", "", "", "", "", "", ""]) }
        return formatTable(rows, style: style).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    private func tenantLines(_ tenants: [Hangar_V1_TenantStats]) -> [String] {
        var rows = [["TENANT", "RUNNING", "QUEUED", "SHARE", "FAIR SHARE", "WEIGHT", "REJECTED", "FINISHED"]]
        for tenant in tenants {
            let over = tenant.fairShare > 0 && tenant.dominantShare > tenant.fairShare * 1.1
            let share = percent(tenant.dominantShare)
            rows.append([
                tenant.name.terminalSafe,
                String(tenant.running),
                String(tenant.queued),
                over ? style.yellow(share) : share,
                tenant.fairShare > 0 ? percent(tenant.fairShare) : "-",
                formatNumber(tenant.weight),
                tenant.rejected > 0 ? style.red(String(tenant.rejected)) : "0",
                String(tenant.finished),
            ])
        }
        if tenants.isEmpty { rows.append(["(no tenants yet)", "", "", "", "", "", "", ""]) }
        return formatTable(rows, style: style).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    /// Warm pools as `runtime:template ready/max`; a template the node holds without a pool shows
    /// `template -`.
    func poolText(_ node: Hangar_V1_NodeInfo) -> String {
        let pools = node.lastHeartbeat.pools
        let pooled = Set(pools.map(\.template))
        let parts =
            pools.map { "\($0.runtime):\($0.template) \($0.ready)/\($0.max)" }
            + node.lastHeartbeat.templates.filter { !pooled.contains($0) }.map { "\($0) -" }
        return parts.isEmpty ? "-" : parts.joined(separator: ", ")
    }

    /// `[###==....]`: used (#), reserved beyond used (=), free (.), out of `total`.
    func bar(_ used: Double, _ reserved: Double, _ total: Double, width: Int) -> String {
        guard total > 0 else { return "[" + String(repeating: unicode ? "·" : ".", count: width) + "]" }
        let usedCells = min(width, Int((used / total * Double(width)).rounded()))
        let reservedCells = min(
            width - usedCells,
            max(0, Int((reserved / total * Double(width)).rounded()) - usedCells)
        )
        let free = width - usedCells - reservedCells
        let (full, held, empty) = unicode ? ("█", "▒", "·") : ("#", "=", ".")
        let usedText = String(repeating: full, count: usedCells)
        let heldText = String(repeating: held, count: reservedCells)
        let filled =
            used / total > 0.9 || reserved / total > 0.9
            ? style.red(usedText + heldText) : style.green(usedText) + style.cyan(heldText)
        return "[" + filled + style.dim(String(repeating: empty, count: free)) + "]"
    }

    private func milliseconds(_ value: Double) -> String {
        value >= 1000 ? String(format: "%.1f s", value / 1000) : String(format: "%.0f ms", value)
    }

    private func duration(_ milliseconds: Int64) -> String {
        let seconds = milliseconds / 1000
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return "\(seconds / 60)m\(seconds % 60)s" }
        return "\(seconds / 3600)h\(seconds / 60 % 60)m"
    }
}
