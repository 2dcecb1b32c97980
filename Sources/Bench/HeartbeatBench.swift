import Foundation
import HangarNATS
import HangarScheduler
import HangarShared
import Logging

/// Heartbeat ingestion: a child process publishes heartbeats of N simulated nodes at 1 Hz through a
/// real nats-server; this process runs the scheduler alone and measures its own CPU time.
enum HeartbeatBench {
    static func run(nodes: Int, seconds: Int) async throws -> String {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-hb-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        let databasePath = directory.appendingPathComponent("hangar.sqlite").path
        let connection = try await NATSConnection(
            options: NATSConnectionOptions(servers: [server.url], name: "scheduler", logger: logger)
        )
        let scheduler = Scheduler(
            config: SchedulerConfig(databasePath: databasePath),
            nats: connection,
            store: try Store(path: databasePath),
            logger: logger
        )
        let serving = Task { try await scheduler.run() }
        try await Task.sleep(for: .milliseconds(500))

        let publisher = Process()
        publisher.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        publisher.arguments = ["publish-heartbeats", server.url, String(nodes), String(seconds + 2)]
        try publisher.run()
        try await Task.sleep(for: .seconds(2))  // every node has joined
        let cpuBefore = processCPUSeconds()
        let wallBefore = ContinuousClock.now
        try await Task.sleep(for: .seconds(seconds))
        let cpu = processCPUSeconds() - cpuBefore
        let wall = benchSeconds(wallBefore.duration(to: .now))
        while publisher.isRunning { try await Task.sleep(for: .milliseconds(50)) }

        let client = try await NATSConnection(
            options: NATSConnectionOptions(servers: [server.url], name: "client", logger: logger)
        )
        let answer = try await client.request(
            Subjects.admin("nodes"),
            payload: try Hangar_V1_NodesRequest().serializedData(),
            timeout: .seconds(10)
        )
        let known = try Hangar_V1_NodesReply(serializedBytes: answer.payload).nodes.count
        serving.cancel()
        _ = try? await serving.value
        return """
            ## Heartbeat ingestion (`swift run -c release hangar-bench heartbeats\(seconds < 10 ? " --quick" : "")`)

            \(nodes) simulated nodes report once a second (a child process publishes them through a real
            nats-server on loopback); the scheduler runs alone in this process, which measures its own CPU.

            | nodes | heartbeats/s | scheduler CPU | nodes known to the scheduler |
            |---|---|---|---|
            | \(nodes) | \(nodes) | \(String(format: "%.1f", cpu / wall * 100))% of one core | \(known) |

            """
    }

    /// The child: publishes `nodes` heartbeats per second, spread over the second, for `seconds`.
    static func publish(url: String, nodes: Int, seconds: Int) async throws {
        let connection = try await NATSConnection(
            options: NATSConnectionOptions(servers: [url], name: "heartbeats", sendAsap: false)
        )
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.capacity.cpuMillis = 32_000
        heartbeat.capacity.memoryBytes = 64 << 30
        heartbeat.capacity.slotsTotal = 16
        var runtime = Hangar_V1_RuntimeAvailability()
        runtime.name = "process"
        runtime.available = true
        heartbeat.runtimes = [runtime]
        heartbeat.templates = ["host"]
        heartbeat.health = .healthy
        let payloads = try (0..<nodes).map { index -> (String, Data) in
            var copy = heartbeat
            copy.nodeID = "sim-\(index)"
            copy.incarnation = "sim-\(index)"
            return (Subjects.heartbeat(node: "sim-\(index)"), try copy.serializedData())
        }
        let slices = 100
        let perSlice = (nodes + slices - 1) / slices
        let start = ContinuousClock.now
        for second in 0..<seconds {
            for slice in 0..<slices {
                let lower = slice * perSlice
                let upper = min(nodes, lower + perSlice)
                if lower < upper {
                    for index in lower..<upper { try connection.publish(payloads[index].0, payload: payloads[index].1) }
                }
                let next = start + .seconds(second) + .milliseconds(10 * (slice + 1))
                try await Task.sleep(until: next, clock: .continuous)
            }
        }
        try await connection.flush()
        await connection.close()
    }
}

/// User + system CPU seconds of this process so far.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
        + Double(usage.ru_stime.tv_usec) / 1e6
}

func benchSeconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}
