import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging

/// Null-job throughput alone, for profiling the dispatch path (`perf record`, callgrind) without the
/// latency and sandbox phases of the walking-skeleton benchmark:
///
///     hangar-bench throughput [--jobs N] [--clients C] [--nodes K] [--client-process] [--batch B] [--batch-only]
///
/// Runs the raw NATS request/reply baseline and then N null jobs from C concurrent clients against
/// a scheduler and K nodes, all in this process over a real nats-server, and prints both rates.
/// `--client-process` runs the job clients in a child process instead, so this process's CPU is
/// the scheduler's and the nodes' alone. `--batch B` adds a run where each client sends its jobs
/// B at a time as one `SubmitBatchRequest` (reported on its own line); `--batch-only` skips the
/// one-job-per-request run.
enum ThroughputBench {
    struct Options {
        var jobs = 5000
        var clients = 64
        var nodes = 2
        var clientProcess = false
        var batch = 0
        var batchOnly = false

        init(_ arguments: [String]) throws {
            var iterator = arguments.makeIterator()
            while let argument = iterator.next() {
                func value() throws -> Int {
                    guard let text = iterator.next(), let number = Int(text), number > 0 else {
                        throw BenchError("\(argument) needs a positive number")
                    }
                    return number
                }
                switch argument {
                case "--jobs": jobs = try value()
                case "--clients": clients = try value()
                case "--nodes": nodes = try value()
                case "--client-process": clientProcess = true
                case "--batch": batch = try value()
                case "--batch-only": batchOnly = true
                default:
                    throw BenchError(
                        "unknown argument \(argument) (--jobs N, --clients C, --nodes K, --client-process, --batch B, --batch-only)"
                    )
                }
            }
        }
    }

    static func run(_ arguments: [String]) async throws -> String {
        let options = try Options(arguments)
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-tp-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        // HANGAR_BENCH_SEND_ASAP=0: let libnats' flusher batch writes (as in the walking-skeleton run).
        let sendAsap = ProcessInfo.processInfo.environment["HANGAR_BENCH_SEND_ASAP"] != "0"
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(
                options: NATSConnectionOptions(servers: [server.url], name: name, sendAsap: sendAsap, logger: logger)
            )
        }
        let client = try await connect("client")
        let payload = try Bench.makeNullRequest().serializedData()

        let echoConnection = try await connect("echo")
        let echo = try echoConnection.subscribe("bench.echo")
        let echoTask = Task {
            for await message in echo { try? echoConnection.reply(to: message, payload: message.payload) }
        }
        try await echoConnection.flush()
        let raw = try await concurrently(options.jobs, clients: options.clients) {
            _ = try await client.request("bench.echo", payload: payload, timeout: .seconds(10))
        }
        echoTask.cancel()
        echo.unsubscribe()

        let scheduler = try benchScheduler(in: directory, nats: try await connect("scheduler"), logger: logger)
        var tasks = [Task { try await scheduler.run() }]
        for index in 1...options.nodes {
            let agent = NodeAgent(
                config: NodeConfig(nodeID: "bench-\(index)", slots: 128),
                nats: try await connect("node-\(index)"),
                runtimes: [NullRuntime()],
                logger: logger
            )
            tasks.append(Task { try await agent.run() })
        }
        try await Task.sleep(for: .milliseconds(1500))  // first heartbeats
        let jobs: (seconds: Double, cpuMicrosPerCall: Double)
        var clientCPU = ""
        if options.clientProcess {
            let cpuBefore = processCPUSeconds()
            let child = try await runClientProcess(url: server.url, jobs: options.jobs, clients: options.clients)
            jobs = (child.seconds, (processCPUSeconds() - cpuBefore) / Double(options.jobs) * 1e6)
            clientCPU = ", clients in a child process (\(Int(child.cpuMicrosPerCall)) µs CPU there each)"
        } else if options.batchOnly && options.batch > 0 {
            jobs = (.infinity, 0)
        } else {
            jobs = try await submitNullJobs(client, jobs: options.jobs, clients: options.clients)
        }
        var batchLine = ""
        if options.batch > 0 {
            let batched = try await submitBatches(
                client,
                jobs: options.jobs,
                clients: options.clients,
                batch: options.batch
            )
            let rate = Double(options.jobs) / batched.seconds
            batchLine =
                "\nnull jobs in batches of \(options.batch) (wait mode): \(Int(rate)) jobs/s, "
                + "\(String(format: "%.0f", rate / (Double(options.jobs) / raw.seconds) * 100))% of raw, "
                + "\(Int(batched.cpuMicrosPerCall)) µs CPU of this process each"
        }
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        let statistics = scheduler.store.commitStatistics
        let rawRate = Double(options.jobs) / raw.seconds
        let jobRate = Double(options.jobs) / jobs.seconds
        return """
            throughput: \(options.jobs) requests/jobs, \(options.clients) clients, \(options.nodes) nodes
            raw NATS request/reply: \(Int(rawRate)) requests/s, \(Int(raw.cpuMicrosPerCall)) µs CPU of this process each
            null jobs (wait mode): \(Int(jobRate)) jobs/s, \(String(format: "%.0f", jobRate / rawRate * 100))% of raw, \(Int(jobs.cpuMicrosPerCall)) µs CPU of this process each\(clientCPU)\(batchLine)
            store: \(statistics.operations) writes in \(statistics.transactions) transactions
            """
    }

    /// N null jobs in wait mode from C concurrent clients over one connection.
    static func submitNullJobs(
        _ client: NATSConnection,
        jobs: Int,
        clients: Int
    ) async throws -> (seconds: Double, cpuMicrosPerCall: Double) {
        let subject = Subjects.submit(tenant: "bench")
        let payload = try Bench.makeNullRequest().serializedData()
        return try await concurrently(jobs, clients: clients) {
            let answer = try await client.request(subject, payload: payload, timeout: .seconds(60))
            let reply = try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
            guard case .result(let result) = reply.outcome, result.status == .succeeded else {
                throw BenchError("a job did not succeed: \(reply)")
            }
        }
    }

    /// N null jobs in wait mode, `batch` per `SubmitBatchRequest`, from C concurrent clients.
    static func submitBatches(
        _ client: NATSConnection,
        jobs: Int,
        clients: Int,
        batch: Int
    ) async throws -> (seconds: Double, cpuMicrosPerCall: Double) {
        let subject = Subjects.submit(tenant: "bench")
        var request = Hangar_V1_SubmitBatchRequest()
        request.requests = Array(repeating: Bench.makeNullRequest(), count: batch)
        let payload = try request.serializedData()
        let sends = jobs / batch
        let timed = try await concurrently(sends, clients: clients) {
            let answer = try await client.request(
                subject,
                payload: payload,
                headers: [SubmitBatch.header: SubmitBatch.value],
                timeout: .seconds(60)
            )
            let reply = try Hangar_V1_SubmitBatchReply(serializedBytes: answer.payload)
            guard reply.replies.count == batch,
                reply.replies.allSatisfy({
                    if case .result(let result) = $0.outcome { return result.status == .succeeded }
                    return false
                })
            else {
                throw BenchError("a batch did not succeed: \(reply.replies.prefix(3))")
            }
        }
        return (timed.seconds * Double(jobs) / Double(sends * batch), timed.cpuMicrosPerCall / Double(batch))
    }

    /// The child of `--client-process`: `hangar-bench throughput-client URL JOBS CLIENTS` prints
    /// "<seconds> <µs CPU per job>".
    static func clientMain(_ arguments: [String]) async throws {
        guard arguments.count == 3, let jobs = Int(arguments[1]), let clients = Int(arguments[2]) else {
            throw BenchError("usage: hangar-bench throughput-client URL JOBS CLIENTS")
        }
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let client = try await NATSConnection(
            options: NATSConnectionOptions(servers: [arguments[0]], name: "bench-client", logger: logger)
        )
        let result = try await submitNullJobs(client, jobs: jobs, clients: clients)
        print(result.seconds, result.cpuMicrosPerCall)
    }

    private static func runClientProcess(
        url: String,
        jobs: Int,
        clients: Int
    ) async throws -> (seconds: Double, cpuMicrosPerCall: Double) {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["throughput-client", url, String(jobs), String(clients)]
        let output = Pipe()
        child.standardOutput = output
        try child.run()
        while child.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let fields = text.split(whereSeparator: \.isWhitespace).compactMap { Double($0) }
        guard child.terminationStatus == 0, fields.count == 2 else {
            throw BenchError("the client process failed (status \(child.terminationStatus)): \(text)")
        }
        return (fields[0], fields[1])
    }

    /// Runs `count` calls of `body` from `clients` concurrent tasks; returns the seconds taken.
    static func concurrently(
        _ count: Int,
        clients: Int,
        _ body: @escaping @Sendable () async throws -> Void
    ) async throws -> (seconds: Double, cpuMicrosPerCall: Double) {
        let started = ContinuousClock.now
        let cpuBefore = processCPUSeconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for clientIndex in 0..<clients {
                group.addTask {
                    for _ in stride(from: clientIndex, to: count, by: clients) { try await body() }
                }
            }
            try await group.waitForAll()
        }
        let cpu = processCPUSeconds() - cpuBefore
        return (seconds(started.duration(to: .now)), cpu / Double(count) * 1e6)
    }
}
