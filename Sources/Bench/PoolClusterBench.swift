import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging

/// `python3 -c pass` submitted in wait mode through a real nats-server, the scheduler and one node,
/// cold (node without pools) and warm (a `RUNTIME:host=2:2` pool), against the bare command in the
/// same run. Before each warm job the benchmark waits, untimed, for a ready sandbox the scheduler
/// has heard of.
enum PoolClusterBench {
    static func rows(runtime: any Runtime, count: Int, bare: Sample) async throws -> [String] {
        var rows: [String] = []
        for warm in [false, true] {
            let sample = try await measure(runtime: runtime, warm: warm, count: count)
            rows.append(
                "| `\(runtime.name)` \(warm ? "warm" : "cold"), `python3 -c pass` submit → result (scheduler + node) | \(count) | \(ms(sample.median)) | \(ms(sample.p99)) | \(ratio(sample.median, bare.median)) | |"
            )
        }
        return rows
    }

    static func measure(runtime: any Runtime, warm: Bool, count: Int) async throws -> Sample {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-bench-\(UUID().uuidString)"
        )
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name, logger: logger))
        }
        let scheduler = try benchScheduler(in: directory, nats: try await connect("scheduler"), logger: logger)
        var nodeConfig = NodeConfig(nodeID: "bench-node", slots: 8)
        nodeConfig.heartbeatInterval = .milliseconds(100)
        if warm { nodeConfig.pools = [WarmPoolSpec(runtime: runtime.name, template: "host", min: 2, max: 2)] }
        let agent = NodeAgent(config: nodeConfig, nats: try await connect("node"), runtimes: [runtime], logger: logger)
        let tasks = [Task { try await scheduler.run() }, Task { try await agent.run() }]
        defer { for task in tasks { task.cancel() } }
        let client = try await connect("client")
        try await Task.sleep(for: .milliseconds(1500))
        var request = Hangar_V1_SubmitRequest()
        request.argv = ["/usr/bin/python3", "-c", "pass"]
        request.runtime = runtime.name
        request.wait = true
        let payload = try request.serializedData()
        var durations: [Duration] = []
        for _ in 0..<count {
            if let pools = agent.pools {
                let deadline = ContinuousClock.now + .seconds(30)
                while pools.status().first.map({ $0.ready < 2 }) ?? true, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(5))
                }
                try await Task.sleep(for: .milliseconds(150))  // a heartbeat carries it to the scheduler
            }
            let start = ContinuousClock.now
            let answer = try await client.request(
                Subjects.submit(tenant: "bench"),
                payload: payload,
                timeout: .seconds(60)
            )
            durations.append(.now - start)
            let reply = try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
            guard case .result(let result) = reply.outcome, result.status == .succeeded else {
                throw BenchError("a job did not succeed: \(reply)")
            }
        }
        if let pools = agent.pools, let pool = pools.status().first, pool.servedWarm < UInt64(count) {
            throw BenchError("only \(pool.servedWarm) of \(count) jobs were served warm: \(pool)")
        }
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        await client.close()
        durations.sort()
        return Sample(median: durations[count / 2], p99: durations[min(count - 1, Int(Double(count) * 0.99))])
    }
}
