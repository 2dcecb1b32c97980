import ArgumentParser
import Foundation
import HangarShared

struct NodeStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "List the nodes and their capacity, or show one node (an id or a unique prefix of one)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "A node id or a unique prefix of one; omit to list every node.")
    var id: String?

    func run() async throws {
        let reply = try await adminQuery(
            "nodes",
            Hangar_V1_NodesRequest(),
            as: Hangar_V1_NodesReply.self,
            connection: connection
        )
        if let id {
            let node = try resolveNode(id, in: reply.nodes)
            if output.isJSON {
                try printJSON(node)
            } else {
                print(nodeDetail(node, style: .stdout))
            }
            return
        }
        if output.isJSON {
            try printJSON(reply)
            return
        }
        print(nodeTable(reply.nodes, wide: output.isWide, style: .stdout))
        if reply.nodes.isEmpty { printError("no node has reported yet") }
        for line in unavailableRuntimes(reply.nodes) { printError(line) }
    }
}

/// Why each runtime a node offers is unavailable, as the node's probe said:
/// `microvm unavailable on dev-node-1, dev-node-2: <reason>` (nodes with the same reason together).
func unavailableRuntimes(_ nodes: [Hangar_V1_NodeInfo]) -> [String] {
    var groups: [(runtime: String, reason: String, nodes: [String])] = []
    for node in nodes {
        for runtime in node.lastHeartbeat.runtimes where !runtime.available {
            let reason = runtime.detail.isEmpty ? "no reason given" : runtime.detail
            if let index = groups.firstIndex(where: { $0.runtime == runtime.name && $0.reason == reason }) {
                groups[index].nodes.append(node.lastHeartbeat.nodeID)
            } else {
                groups.append((runtime.name, reason, [node.lastHeartbeat.nodeID]))
            }
        }
    }
    return groups.map { "\($0.runtime) unavailable on \($0.nodes.joined(separator: ", ")): \($0.reason)" }
}

/// The node whose id is `prefix` or the only one that starts with it.
func resolveNode(_ prefix: String, in nodes: [Hangar_V1_NodeInfo]) throws -> Hangar_V1_NodeInfo {
    if let exact = nodes.first(where: { $0.lastHeartbeat.nodeID == prefix }) { return exact }
    let matches = nodes.filter { $0.lastHeartbeat.nodeID.hasPrefix(prefix) }
    switch matches.count {
    case 1: return matches[0]
    case 0:
        throw CLIError(
            "no node matches '\(prefix)' (known: \(nodes.map(\.lastHeartbeat.nodeID).joined(separator: ", ")))"
        )
    default:
        throw CLIError(
            "'\(prefix)' matches several nodes: \(matches.map(\.lastHeartbeat.nodeID).joined(separator: ", "))"
        )
    }
}

/// The node's state as operators read it: ready, draining, down, with `,ineligible`.
func nodeStateText(_ node: Hangar_V1_NodeInfo) -> String {
    var state: String
    switch node.state {
    case .up: state = "ready"
    case .draining: state = "draining"
    case .down: state = "down"
    default: state = "unknown"
    }
    if !node.eligible { state += ",ineligible" }
    return state
}

func gibibytes(_ bytes: UInt64) -> String { String(format: "%.1f", Double(bytes) / 1_073_741_824) }
func cores(_ millis: UInt64) -> String { String(format: "%.1f", Double(millis) / 1000) }

func nodeTable(_ nodes: [Hangar_V1_NodeInfo], wide: Bool, style: Style) -> String {
    var header = [
        "NODE", "HOST", "STATE", "SLOTS USED/RESV/TOTAL", "CPU RESV/ALLOC", "MEMORY RESV/TOTAL", "RUNTIMES",
        "POOLS READY/WARMING/MAX", "SANDBOXES", "SEEN",
    ]
    if wide { header += ["CPU USED", "MEMORY USED", "TEMPLATES", "LABELS", "VERSION", "NATS SERVER"] }
    var rows = [header]
    for node in nodes {
        let heartbeat = node.lastHeartbeat
        let capacity = heartbeat.capacity
        var state = nodeStateText(node)
        if node.drainDeadlineMs > 0 {
            state += "(deadline \(max(0, node.drainDeadlineMs - unixMilliseconds()) / 1000)s)"
        }
        var row = [
            heartbeat.nodeID.terminalSafe,
            heartbeat.host.isEmpty ? "-" : heartbeat.host.terminalSafe,
            style.state(state),
            "\(capacity.slotsUsed)/\(node.slotsReserved)/\(capacity.slotsTotal)",
            "\(cores(UInt64(node.cpuMillisReserved)))/\(cores(node.cpuMillisAllocatable)) cores",
            "\(gibibytes(node.memoryBytesReserved))/\(gibibytes(capacity.memoryBytes)) GiB",
            heartbeat.runtimes.map { $0.available ? $0.name : "\($0.name)(unavailable)" }.joined(separator: ",")
                .terminalSafe,
            poolSummary(heartbeat).terminalSafe,
            String(heartbeat.sandboxes.count),
            String(format: "%.1fs ago", Double(node.lastSeenMsAgo) / 1000),
        ]
        if wide {
            row += [
                "\(cores(UInt64(capacity.cpuMillisUsed)))/\(cores(UInt64(capacity.cpuMillis))) cores",
                "\(gibibytes(capacity.memoryBytesUsed)) GiB",
                heartbeat.templates.isEmpty ? "-" : heartbeat.templates.joined(separator: ",").terminalSafe,
                heartbeat.labels.isEmpty
                    ? "-"
                    : heartbeat.labels.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }
                        .joined(separator: ",").terminalSafe,
                heartbeat.version.isEmpty ? "-" : heartbeat.version.terminalSafe,
                heartbeat.natsServer.isEmpty ? "-" : heartbeat.natsServer.terminalSafe,
            ]
        }
        rows.append(row)
    }
    return formatTable(rows, style: style)
}

func nodeDetail(_ node: Hangar_V1_NodeInfo, style: Style) -> String {
    let heartbeat = node.lastHeartbeat
    let capacity = heartbeat.capacity
    var lines: [(String, String)] = [
        ("node", heartbeat.nodeID),
        ("host", heartbeat.host.isEmpty ? "-" : heartbeat.host),
        ("nats server", heartbeat.natsServer.isEmpty ? "-" : heartbeat.natsServer),
        ("state", style.state(nodeStateText(node))),
        ("eligible", node.eligible ? "yes" : "no"),
        ("draining", node.draining ? "yes" : "no"),
        ("seen", String(format: "%.1f s ago", Double(node.lastSeenMsAgo) / 1000)),
        ("slots", "\(capacity.slotsUsed) used, \(node.slotsReserved) reserved, \(capacity.slotsTotal) total"),
        (
            "cpu",
            "\(cores(UInt64(capacity.cpuMillisUsed))) used, \(cores(UInt64(node.cpuMillisReserved))) reserved, "
                + "\(cores(node.cpuMillisAllocatable)) allocatable (\(cores(UInt64(capacity.cpuMillis))) physical) cores"
        ),
        (
            "memory",
            "\(gibibytes(capacity.memoryBytesUsed)) used, \(gibibytes(node.memoryBytesReserved)) reserved, "
                + "\(gibibytes(capacity.memoryBytes)) total GiB"
        ),
        ("templates", heartbeat.templates.isEmpty ? "-" : heartbeat.templates.joined(separator: ", ")),
        (
            "labels",
            heartbeat.labels.isEmpty
                ? "-" : heartbeat.labels.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: ", ")
        ),
        ("version", heartbeat.version.isEmpty ? "-" : heartbeat.version),
        ("incarnation", heartbeat.incarnation),
    ]
    if node.drainDeadlineMs > 0 {
        lines.append(("drain deadline", "in \(max(0, node.drainDeadlineMs - unixMilliseconds()) / 1000) s"))
    }
    for runtime in heartbeat.runtimes {
        let detail = runtime.detail.isEmpty ? "" : " (\(runtime.detail))"
        lines.append(("runtime \(runtime.name)", (runtime.available ? "available" : "unavailable") + detail))
    }
    lines.append(("running jobs", heartbeat.runningJobs.isEmpty ? "-" : heartbeat.runningJobs.joined(separator: ", ")))
    lines.append(("sandboxes", heartbeat.sandboxes.isEmpty ? "-" : heartbeat.sandboxes.joined(separator: ", ")))
    lines.append(("sandboxes by tenant", sandboxTenants(node)))
    let width = lines.map(\.0.count).max() ?? 0
    // Every value but the state (colored, and escaped by `Style`) came from the node: escaped.
    return lines.map {
        $0.0.terminalSafe.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
            + ($0.0 == "state" ? $0.1 : $0.1.terminalSafe)
    }.joined(
        separator: "\n"
    )
}

/// `a=2, b=1`: the node's live sandboxes per tenant as the scheduler placed them; `-` for none.
func sandboxTenants(_ node: Hangar_V1_NodeInfo) -> String {
    node.sandboxesByTenant.isEmpty
        ? "-" : node.sandboxesByTenant.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: ", ")
}
