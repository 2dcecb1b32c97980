import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging
import Synchronization

/// Control-plane throughput with the null runtime (also for profiling the dispatch path with
/// `perf record`):
///
///     hangar-bench throughput [--quick] [--jobs N] [--clients C] [--nodes K] [--client-process]
///                             [--batch B] [--batch-only] [--rounds R] [--json] [--nats-servers 1|3]
///                             [--store-log [--standby]]
///
/// Runs the raw NATS request/reply baseline and then N null jobs (50,000; 20,000 with `--quick`)
/// from C concurrent clients against a scheduler and K nodes, all in this process over a real
/// nats-server, and prints a BENCHMARKS.md section: rates, latency percentiles, ratios to the raw
/// rate. `--client-process` runs the job clients in a child process instead, so this process's CPU
/// is the scheduler's and the nodes' alone. `--batch B` adds a run where each client sends its jobs
/// B at a time as one `SubmitBatchRequest`; `--batch-only` skips the one-job-per-request run.
/// `--rounds R` measures everything R times, interleaved (baseline, jobs, baseline, jobs, ...), and
/// reports each row's median round, with every round's rate: on a shared machine one run can be
/// 15% off the next. `--json` prints one JSON object instead of the Markdown section, for
/// `scripts/bench-compare`: `{"rounds": [{"baseline": 38853.1, "one-per-request": 4890.2,
/// "batch-50": 12464.0}, ...]}`, every round's rate per second of each row. `--nats-servers 3` runs
/// it on a cluster of three nats-servers with every stream R3 (each acknowledged message on two
/// servers at least), every connection given all three URLs. `--store-log` makes the scheduler's
/// store a replicated log as with `--leader-lease` (every store transaction appended to
/// `HANGAR_LOG`, as many copies as the other streams, before it is applied); `--standby` adds a
/// standby's store in this process that follows the log, and reports how far behind the leader's
/// store it was (sampled every 10 ms while jobs run).
enum ThroughputBench {
    struct Options {
        var jobs = 50_000
        var clients = 64
        var nodes = 2
        var clientProcess = false
        var batch = 0
        var batchOnly = false
        var rounds = 1
        var json = false
        var natsServers = 1
        var storeLog = false
        var standby = false

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
                case "--rounds": rounds = try value()
                case "--quick": jobs = 20_000
                case "--json": json = true
                case "--store-log": storeLog = true
                case "--standby": standby = true
                case "--nats-servers":
                    natsServers = try value()
                    guard natsServers == 1 || natsServers == 3 else {
                        throw BenchError("--nats-servers must be 1 or 3")
                    }
                default:
                    throw BenchError(
                        "unknown argument \(argument) (--quick, --jobs N, --clients C, --nodes K, --client-process, --batch B, --batch-only, --rounds R, --json, --nats-servers 1|3, --store-log, --standby)"
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
        let natsFolder = directory.appendingPathComponent("nats")
        let server = options.natsServers == 1 ? try await LocalNATSServer(directory: natsFolder) : nil
        let cluster =
            options.natsServers == 1
            ? nil : try await LocalNATSCluster(size: options.natsServers, directory: natsFolder)
        let urls = server.map { [$0.url] } ?? cluster!.urls
        defer {
            server?.stop()
            cluster?.stop()
        }
        // HANGAR_BENCH_SEND_ASAP=0: let libnats' flusher batch writes (as in the walking-skeleton run).
        let sendAsap = ProcessInfo.processInfo.environment["HANGAR_BENCH_SEND_ASAP"] != "0"
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(
                options: NATSConnectionOptions(servers: urls, name: name, sendAsap: sendAsap, logger: logger)
            )
        }
        let client = try await connect("client")
        let payload = try Bench.makeNullRequest().serializedData()

        let echoConnection = try await connect("echo")
        let echo = try echoConnection.subscribe("bench.echo")
        let echoTask = Task {
            for await message in echo { try? echoConnection.reply(to: message, payload: message.payload) }
        }
        defer {
            echoTask.cancel()
            echo.unsubscribe()
        }
        try await echoConnection.flush()

        let schedulerConnection = try await connect("scheduler")
        let scheduler = try benchScheduler(
            in: directory,
            nats: schedulerConnection,
            logger: logger,
            streamReplicas: options.natsServers
        )
        if options.storeLog {
            let log = try JetStreamStoreLog(nats: schedulerConnection)
            try await log.ensure(replicas: options.natsServers)
            try await scheduler.store.lead(
                log,
                term: 1,
                holder: "bench",
                maxEntryBytes: schedulerConnection.maxPayload - 16 * 1024
            ) { error in fatalError("\(error)") }
        }
        let lag = LagSampler()
        var standbyTasks: [Task<Void, Never>] = []
        if options.standby {
            guard options.storeLog else { throw BenchError("--standby needs --store-log") }
            let log = try JetStreamStoreLog(nats: try await connect("standby"))
            let standbyStore = try Store(path: directory.appendingPathComponent("standby.sqlite").path)
            let applied = lag.standbyPosition
            let standbyLogger = logger
            let follower = Task { await standbyStore.follow(log, logger: standbyLogger) { applied.set($0) } }
            // Sampled only while the log grows (under load), not while idle between rows.
            let sampler = Task {
                var previous: UInt64 = 0
                while !Task.isCancelled {
                    let leading = scheduler.store.leadingLogPosition ?? 0
                    let standing = applied.value
                    if leading != previous { lag.record(leading > standing ? leading - standing : 0) }
                    previous = leading
                    try? await Task.sleep(for: .milliseconds(10))
                }
            }
            standbyTasks = [follower, sampler]
        }
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
        try await waitUntilServing(client)
        var clientCPU = ""
        // rounds[r][i]: row i of round r; the rows are the same in every round.
        var rounds: [[(String, Int, Timed)]] = []
        for _ in 0..<options.rounds {
            let raw = try await concurrently(options.jobs, clients: options.clients) {
                _ = try await client.request("bench.echo", payload: payload, timeout: .seconds(10))
            }
            var rows: [(String, Int, Timed)] = [
                ("baseline: raw NATS request/reply (echo responder)", options.jobs, raw)
            ]
            if options.clientProcess {
                let cpuBefore = processCPUSeconds()
                let child = try await runClientProcess(
                    url: urls.joined(separator: ","),
                    jobs: options.jobs,
                    clients: options.clients
                )
                let cpu = (processCPUSeconds() - cpuBefore) / Double(options.jobs) * 1e6
                rows.append(
                    (
                        "null jobs, one per request (wait mode)", options.jobs,
                        Timed(seconds: child.seconds, cpuMicrosPerCall: cpu)
                    )
                )
                clientCPU =
                    " The job clients ran in a child process (\(Int(child.cpuMicrosPerCall)) µs of CPU there per job)."
            } else if !options.batchOnly || options.batch == 0 {
                rows.append(
                    (
                        "null jobs, one per request (wait mode)", options.jobs,
                        try await submitNullJobs(client, jobs: options.jobs, clients: options.clients)
                    )
                )
            }
            if options.batch > 0 {
                rows.append(
                    (
                        "null jobs, \(options.batch) per request (`SubmitBatchRequest`, wait mode)", options.jobs,
                        try await submitBatches(
                            client,
                            jobs: options.jobs,
                            clients: options.clients,
                            batch: options.batch
                        )
                    )
                )
            }
            rounds.append(rows)
        }
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        for task in standbyTasks { task.cancel() }
        for task in standbyTasks { await task.value }
        let statistics = scheduler.store.commitStatistics
        let lagSamples = lag.samples.sorted()
        func lagPercentile(_ fraction: Double) -> UInt64 {
            lagSamples.isEmpty ? 0 : lagSamples[min(lagSamples.count - 1, Int(Double(lagSamples.count) * fraction))]
        }
        // Each row's median round (by rate); the ratio compares the medians.
        func rate(_ entry: (String, Int, Timed)) -> Double { Double(entry.1) / entry.2.seconds }
        if options.json {
            func key(_ what: String) -> String {
                if what.hasPrefix("baseline") { return "baseline" }
                return what.contains("one per request") ? "one-per-request" : "batch-\(options.batch)"
            }
            var object: [String: Any] = [
                "rounds": rounds.map { rows in Dictionary(uniqueKeysWithValues: rows.map { (key($0.0), rate($0)) }) }
            ]
            if options.standby {
                object["standby-lag"] = [
                    "p50": lagPercentile(0.5), "p99": lagPercentile(0.99), "max": lagSamples.last ?? 0,
                ]
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            return String(decoding: data, as: UTF8.self)
        }
        let medians = rounds[0].indices.map { index in
            rounds.map { $0[index] }.sorted { rate($0) < rate($1) }[rounds.count / 2]
        }
        let rawRate = rate(medians[0])
        var table = """
            | what | jobs | per second | latency p50 | latency p99 | vs raw request rate | CPU of this process per job |
            |---|---|---|---|---|---|---|

            """
        for (what, count, timed) in medians {
            let rate = Double(count) / timed.seconds
            table +=
                "| \(what) | \(count) | \(Int(rate)) | \(timed.percentile(0.5)) | \(timed.percentile(0.99)) | "
                + "\(String(format: "%.0f", rate / rawRate * 100))% | \(Int(timed.cpuMicrosPerCall)) µs |\n"
        }
        var roundsNote = ""
        if rounds.count > 1 {
            roundsNote =
                "\nEach row is the median of \(rounds.count) interleaved rounds; every round's rate per second:\n"
            for index in medians.indices {
                let rates = rounds.map { "\(Int(rate($0[index])))" }.joined(separator: ", ")
                let ratios =
                    index == 0
                    ? ""
                    : " ("
                        + rounds.map { String(format: "%.0f%%", rate($0[index]) / rate($0[0]) * 100) }
                        .joined(separator: ", ") + " of that round's raw rate)"
                roundsNote += "- \(medians[index].0): \(rates)\(ratios)\n"
            }
        }
        let standbyNote =
            options.standby
            ? "\nStandby lag (store log entries a following standby store was behind the leader's, sampled every 10 ms while the log grew, \(lagSamples.count) samples): p50 \(lagPercentile(0.5)), p99 \(lagPercentile(0.99)), max \(lagSamples.last ?? 0); the leader appended \(scheduler.store.leadingLogPosition ?? 0) entries."
            : ""
        return """
            ## Control-plane throughput (`swift run -c release hangar-bench throughput \(arguments.joined(separator: " "))`)

            Submit → admitted into the intake stream → committed to SQLite → placed → run by the null runtime → result \
            through the results stream → committed → reply, for every job. One scheduler and \(options.nodes) nodes \
            (128 slots each) in this process, over \(options.natsServers == 1 ? "a real nats-server" : "a cluster of \(options.natsServers) real nats-servers (streams R\(options.natsServers))") on loopback (JetStream on, file storage); \
            \(options.storeLog ? "every store transaction first appended to the replicated store log; " : "")\
            SQLite in WAL mode, each acceptance and result batch synced (FULL) before its stream messages are \
            acknowledged. \(options.clients) concurrent clients on one connection. Baseline: raw NATS request/reply \
            through the same binding to an echo responder, the same number of requests and clients, same run. \
            Latency is per request (a batch request's answer comes when all its jobs are done).\(clientCPU)

            \(table)\(roundsNote)
            Store: \(statistics.operations) writes in \(statistics.transactions) transactions.\(standbyNote)

            """
    }

    /// Waits (up to 30 s) until a null job succeeds: the nodes have sent their first heartbeats and
    /// the streams exist (on a cluster, creating an R3 stream takes a moment).
    static func waitUntilServing(_ client: NATSConnection) async throws {
        let payload = try Bench.makeNullRequest().serializedData()
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let answer = try? await client.request(
                Subjects.submit(tenant: "bench"),
                payload: payload,
                timeout: .seconds(5)
            ), let reply = try? Hangar_V1_SubmitReply(serializedBytes: answer.payload),
                case .result(let result) = reply.outcome, result.status == .succeeded
            {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw BenchError("no null job succeeded within 30 s")
    }

    /// N null jobs in wait mode from C concurrent clients over one connection.
    static func submitNullJobs(
        _ client: NATSConnection,
        jobs: Int,
        clients: Int
    ) async throws -> Timed {
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
    ) async throws -> Timed {
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
        var perJob = timed
        perJob.seconds = timed.seconds * Double(jobs) / Double(sends * batch)
        perJob.cpuMicrosPerCall = timed.cpuMicrosPerCall / Double(batch)
        return perJob
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
            options: NATSConnectionOptions(
                servers: arguments[0].split(separator: ",").map(String.init),
                name: "bench-client",
                logger: logger
            )
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

    /// What `concurrently` measured: wall time, this process's CPU per call, and each call's latency.
    struct Timed {
        var seconds: Double
        var cpuMicrosPerCall: Double
        var latencies: [Duration] = []

        /// The `fraction` percentile of the calls' latencies, in milliseconds ("–" without any).
        func percentile(_ fraction: Double) -> String {
            guard !latencies.isEmpty else { return "–" }
            let sorted = latencies.sorted()
            let value = sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
            return String(format: "%.2f ms", hangar_bench.seconds(value) * 1000)
        }
    }

    /// Runs `count` calls of `body` from `clients` concurrent tasks, timing each.
    static func concurrently(
        _ count: Int,
        clients: Int,
        _ body: @escaping @Sendable () async throws -> Void
    ) async throws -> Timed {
        let started = ContinuousClock.now
        let cpuBefore = processCPUSeconds()
        let latencies = try await withThrowingTaskGroup(of: [Duration].self) { group in
            for clientIndex in 0..<clients {
                group.addTask {
                    var latencies: [Duration] = []
                    for _ in stride(from: clientIndex, to: count, by: clients) {
                        let start = ContinuousClock.now
                        try await body()
                        latencies.append(start.duration(to: .now))
                    }
                    return latencies
                }
            }
            var all: [Duration] = []
            for try await some in group { all += some }
            return all
        }
        let cpu = processCPUSeconds() - cpuBefore
        return Timed(
            seconds: seconds(started.duration(to: .now)),
            cpuMicrosPerCall: cpu / Double(count) * 1e6,
            latencies: latencies
        )
    }
}

/// Standby lag samples, from the sampling task.
final class LagSampler: Sendable {
    private let values = Mutex<[UInt64]>([])
    /// The standby store's position, from its follower.
    let standbyPosition = Position()

    final class Position: Sendable {
        private let position = Mutex<UInt64>(0)
        var value: UInt64 { position.withLock { $0 } }
        func set(_ value: UInt64) { position.withLock { $0 = value } }
    }

    func record(_ value: UInt64) { values.withLock { $0.append(value) } }

    var samples: [UInt64] { values.withLock { $0 } }
}
