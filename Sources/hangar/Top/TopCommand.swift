import ArgumentParser
import Foundation
import HangarNATS
import HangarShared

struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "A live dashboard of nodes, tenants and the cluster; q quits.",
        discussion: """
            Per node: status, runtimes, slots, CPU and memory bars (used █ / reserved ▒ / free ·), warm
            pools. Per tenant: running, queued, share of the cluster against its fair share, rejections.
            Cluster: jobs/s, latency p50/p99, queue depth, placement failures; the NATS streams and,
            with a leader lease, every scheduler (term, store log position, standby lag). Refreshes every second;
            q (or Ctrl-C) quits. When stdout is not a terminal it prints plain frames; --once prints one.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Flag(help: "Print one frame as plain text and exit.")
    var once = false
    @Option(help: "Seconds between refreshes.")
    var interval: Double = 1

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be 0.1...3600 seconds") }
    }

    func run() async throws {
        try await connection.withConnection(name: "hangar-cli-top", logger: cliLogger()) { nats in
            try await show(nats)
        }
    }

    /// One frame (`--once`, JSON, not a terminal) or the full-screen view until `q`, from `nats`.
    private func show(_ nats: NATSConnection) async throws {
        let interactive =
            !once && !output.isJSON && Terminal.isTerminal(STDOUT_FILENO)
            && Terminal.isTerminal(STDIN_FILENO)
        if !interactive {
            return try await plain(nats)
        }
        let screen = try TerminalScreen(refresh: .milliseconds(Int64(interval * 1000)))
        defer { screen.restore() }
        var stats: Hangar_V1_ClusterStats?
        var cluster: Hangar_V1_ClusterStatusReply?
        var problem: String?
        func redraw() {
            let (columns, rows) = Terminal.size() ?? (100, 40)
            let renderer = TopRenderer(width: columns, style: .stdout, unicode: true)
            var lines =
                stats.map { renderer.render($0, cluster: cluster) } ?? ["hangar top: waiting for the scheduler..."]
            if let problem { lines += ["", Style.stdout.red("hangar: \(problem)")] }
            lines += ["", Style.stdout.dim("q quit")]
            screen.draw(lines, columns: columns, rows: rows)
        }
        func refresh() async {
            do {
                stats = try await fetchStats(nats)
                cluster = try? await fetchCluster(nats)
                problem = nil
            } catch {
                problem = "\(error)"
            }
        }
        await refresh()
        redraw()
        loop: for await event in screen.events {
            switch event {
            case .key(let key) where key == UInt8(ascii: "q") || key == UInt8(ascii: "Q") || key == 3 || key == 4:
                break loop
            case .interrupted:
                break loop
            case .resize:
                redraw()
            case .tick:
                await refresh()
                redraw()
            case .key:
                continue
            }
        }
    }

    /// `--once`, `-o json`, or stdout not a terminal: frames as plain text (no escapes), one per
    /// interval until interrupted, or one with --once.
    private func plain(_ nats: NATSConnection) async throws {
        while true {
            let stats = try await fetchStats(nats)
            let cluster = try? await fetchCluster(nats)
            if output.isJSON {
                try printJSON(stats)
            } else {
                let renderer = TopRenderer(width: Int.max, style: .plain, unicode: false)
                print(renderer.render(stats, cluster: cluster).joined(separator: "\n"))
            }
            fflush(nil)
            if once { return }
            print("")
            try await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
        }
    }

    /// The NATS side (`hangar cluster status`); nil from a scheduler that does not answer it.
    private func fetchCluster(_ nats: NATSConnection) async throws -> Hangar_V1_ClusterStatusReply {
        let answer = try await adminRequest(nats, "cluster", Hangar_V1_ClusterStatusRequest())
        return try Hangar_V1_ClusterStatusReply(serializedBytes: answer.payload)
    }

    private func fetchStats(_ nats: NATSConnection) async throws -> Hangar_V1_ClusterStats {
        let answer = try await adminRequest(nats, "stats", Hangar_V1_StatsRequest())
        do {
            return try Hangar_V1_ClusterStats(serializedBytes: answer.payload)
        } catch {
            throw CLIError("the scheduler's answer to stats is not a hangar.v1.ClusterStats: \(error)")
        }
    }
}
