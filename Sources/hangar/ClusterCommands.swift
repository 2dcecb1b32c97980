import ArgumentParser
import Foundation
import HangarShared

struct ClusterGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "The cluster as a whole: NATS servers, where each stream's copies are, schedulers.",
        subcommands: [ClusterStatusCommand.self]
    )
}

struct ClusterStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the NATS servers, each JetStream stream's leader and copies, and the schedulers.",
        discussion: """
            A server is `up` when the streams' leaders hear from it, `offline` when a leader has not heard \
            from it for 5 s (its server is down or cut off), `catching up` while its copy is behind. \
            A stream without a leader takes no publishes until JetStream has elected one (4-9 s after its \
            leader's server died). Nodes: `hangar node status`.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let reply = try await adminQuery(
            "cluster",
            Hangar_V1_ClusterStatusRequest(),
            as: Hangar_V1_ClusterStatusReply.self,
            connection: connection
        )
        if output.isJSON {
            try printJSON(reply)
            return
        }
        print(clusterStatusText(reply, style: .stdout))
    }
}

/// The three tables of `hangar cluster status`: servers, streams, schedulers.
func clusterStatusText(_ reply: Hangar_V1_ClusterStatusReply, style: Style) -> String {
    // Servers by name, from the streams' view of their copies.
    var servers: [String: (led: [String], copies: Int, offline: Int, lagging: Int)] = [:]
    for stream in reply.streams where stream.error.isEmpty {
        if !stream.leader.isEmpty {
            servers[stream.leader, default: ([], 0, 0, 0)].led.append(stream.name)
            servers[stream.leader, default: ([], 0, 0, 0)].copies += 1
        }
        for follower in stream.followers {
            servers[follower.server, default: ([], 0, 0, 0)].copies += 1
            if follower.offline { servers[follower.server]!.offline += 1 }
            if !follower.offline && !follower.current { servers[follower.server]!.lagging += 1 }
        }
    }
    var serverRows = [["SERVER", "STATE", "LEADS", "COPIES"]]
    for (name, server) in servers.sorted(by: { $0.key < $1.key }) {
        let state =
            server.offline > 0 && server.led.isEmpty ? "offline" : server.lagging > 0 ? "catching up" : "up"
        serverRows.append([
            name.isEmpty ? "(this server)" : name.terminalSafe, style.state(state),
            server.led.isEmpty ? "-" : server.led.joined(separator: ","), String(server.copies),
        ])
    }
    var streamRows = [["STREAM", "REPLICAS", "LEADER", "FOLLOWERS", "MESSAGES", "BYTES"]]
    for stream in reply.streams {
        guard stream.error.isEmpty else {
            streamRows.append([stream.name.terminalSafe, "-", "-", stream.error.terminalSafe, "-", "-"])
            continue
        }
        let followers = stream.followers.map { follower in
            let state =
                follower.offline
                ? "offline, seen \(follower.lastSeenMs / 1000)s ago"
                : follower.current ? "current" : "behind \(follower.lag)"
            return "\(follower.server.terminalSafe)(\(state))"
        }
        streamRows.append([
            stream.name.terminalSafe, String(stream.replicas),
            stream.leader.isEmpty
                ? (stream.replicas > 1 ? style.state("none: electing") : "-") : stream.leader.terminalSafe,
            followers.isEmpty ? "-" : followers.joined(separator: " "), String(stream.messages), String(stream.bytes),
        ])
    }
    var schedulerRows = [["SCHEDULER", "ROLE", "TERM", "STORE LOG", "LAG", "CONNECTED TO", "HEARD"]]
    // The first is the scheduler that answered; the others are those it heard announce themselves.
    for (index, scheduler) in reply.schedulers.enumerated() {
        let lag = reply.storeLogLag(of: scheduler)
        schedulerRows.append([
            scheduler.id.terminalSafe, scheduler.role.terminalSafe, String(scheduler.term),
            lag == nil ? "-" : String(scheduler.logApplied), lag.map(String.init) ?? "-",
            scheduler.natsServer.terminalSafe,
            index == 0 ? "answering" : String(format: "%.1f s ago", Double(scheduler.lastSeenMs) / 1000),
        ])
    }
    let serverTable =
        servers.isEmpty
        ? "One nats-server, not clustered: the streams have one copy each (see README, \"Cluster\")."
        : formatTable(serverRows, style: style)
    return [
        "NATS servers known to the scheduler: \(reply.natsServers.joined(separator: ", ").terminalSafe)",
        serverTable,
        "",
        "Streams (the scheduler keeps \(reply.streamReplicas) cop\(reply.streamReplicas == 1 ? "y" : "ies") of each):",
        formatTable(streamRows, style: style),
        "",
        formatTable(schedulerRows, style: style),
    ].joined(separator: "\n")
}

extension Hangar_V1_ClusterStatusReply {
    /// A scheduler's lag behind the answering one (the first): the store log entries that one has
    /// applied and `scheduler` has not yet. Nil when no scheduler uses the store log (no lease).
    func storeLogLag(of scheduler: Hangar_V1_SchedulerStatus) -> UInt64? {
        let leading = schedulers.first?.logApplied ?? 0
        guard scheduler.logApplied > 0 || leading > 0 else { return nil }
        return leading > scheduler.logApplied ? leading - scheduler.logApplied : 0
    }
}
