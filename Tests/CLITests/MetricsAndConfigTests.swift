import Foundation
import HangarTestSupport
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `/metrics` of a live `hangar dev --metrics-port 0`, and daemon config files.
@Suite("hangar metrics and config", .serialized)
struct MetricsAndConfigTests {
    @Test("/metrics parses as Prometheus text and the jobs counter moves when jobs run")
    func metrics() async throws {
        try await withCLICluster(nodes: 2, extra: ["--metrics-port", "0", "--pool", "process:host=1:1"]) { cluster in
            let url = try #require(metricsURL(in: cluster.log), "no metrics URL in the banner:\n\(cluster.log)")
            let before = try parsePrometheus(try await fetch(url))
            let series = #"hangar_jobs_finished_total{tenant="acme",status="SUCCEEDED"}"#
            #expect(before.samples[series] == nil)
            #expect(before.samples[#"hangar_node_slots_total{node_id="dev-node-1"}"#] == 8)

            for _ in 0..<3 {
                let run = try await cluster.hangar(["run", "--tenant", "acme", "--runtime", "null", "--", "x"])
                #expect(run.status == 0, "\(run.stderr)")
            }
            let after = try parsePrometheus(try await fetch(url))
            #expect(after.samples[series] == 3)
            #expect(after.samples[#"hangar_jobs_accepted_total{tenant="acme"}"#] == 3)
            #expect(after.types["hangar_jobs_finished_total"] == "counter")
            #expect(after.types["hangar_placement_latency_seconds"] == "histogram")
            #expect((after.samples["hangar_placement_latency_seconds_count"] ?? 0) >= 3)
            #expect(after.samples["hangar_queue_depth"] == 0)
            #expect(after.samples[#"hangar_node_up{node_id="dev-node-2"}"#] == 1)
            // The cluster's gauges: no leader election in `hangar dev`, each stream with a leader.
            #expect(after.samples["hangar_scheduler_term"] == 0)
            #expect(after.samples[#"hangar_stream_has_leader{stream="HANGAR_SUBMISSIONS"}"#] == 1)
            #expect(after.samples[#"hangar_node_scheduler_term_seen{node_id="dev-node-1"}"#] == 0)
            // Warm pools: each node's process:host pool (max 1) is in its gauges.
            let pools = after.samples.filter {
                $0.key.hasPrefix("hangar_pool_max{") && $0.key.contains(#"runtime="process""#)
                    && $0.key.contains(#"template="host""#)
            }
            #expect(pools.count == 2 && pools.values.allSatisfy { $0 == 1 }, "\(pools)")
        }
    }

    @Test("the submit's W3C traceparent reaches the scheduler and the node, and JSON logs carry it")
    func traceContext() async throws {
        try await withCLICluster(nodes: 1, extra: ["--log-level", "debug", "--log-format", "json"]) { cluster in
            let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
            let run = try await cluster.hangar(
                ["run", "--runtime", "null", "--traceparent", "00-\(traceID)-00f067aa0ba902b7-01", "--", "x"]
            )
            #expect(run.status == 0, "\(run.stderr)")
            let lines = cluster.log.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            let traced = lines.filter { $0["trace.id"] as? String == traceID }
            let scheduler = try #require(
                traced.first { $0["label"] as? String == "hangar.scheduler" },
                "\(cluster.log)"
            )
            let node = try #require(traced.first { $0["label"] as? String == "hangar.node" }, "\(cluster.log)")
            #expect(scheduler["job.id"] as? String != nil)
            #expect(node["job.id"] as? String == scheduler["job.id"] as? String)
            #expect(node["attempt"] as? String == "1")
            #expect(node["node.id"] as? String == "dev-node-1")

            let bad = try await cluster.hangar(["run", "--traceparent", "00-zz-11-01", "--", "x"])
            #expect(bad.status == 1)
            #expect(bad.stderr.contains("--traceparent"))
        }
    }

    @Test("a bad config file stops the daemon at start with the key named")
    func badConfig() async throws {
        let folder = try makeTemporaryDirectory("hangar-cli-config")
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("scheduler.yaml")
        let db = folder.appendingPathComponent("db.sqlite").path

        try "db: \(db)\nqueue_timout: 5\n".write(to: file, atomically: true, encoding: .utf8)
        let unknown = try await runHangar(["scheduler", "--config", file.path], timeout: .seconds(30))
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("unknown key 'queue_timout'"), "\(unknown.stderr)")

        try "db: \(db)\nnode_ttl: soon\n".write(to: file, atomically: true, encoding: .utf8)
        let mistyped = try await runHangar(["scheduler", "--config", file.path], timeout: .seconds(30))
        #expect(mistyped.status == 1)
        #expect(mistyped.stderr.contains("'node_ttl' must be a number"), "\(mistyped.stderr)")

        try "db: \(db)\nnode_ttl: 0.5\n".write(to: file, atomically: true, encoding: .utf8)
        let outOfRange = try await runHangar(["scheduler", "--config", file.path], timeout: .seconds(30))
        #expect(outOfRange.status == 1)
        #expect(outOfRange.stderr.contains("node_ttl"), "\(outOfRange.stderr)")

        let node = folder.appendingPathComponent("node.yaml")
        try "slots: many\n".write(to: node, atomically: true, encoding: .utf8)
        let badNode = try await runHangar(["node", "agent", "--config", node.path], timeout: .seconds(30))
        #expect(badNode.status == 1)
        #expect(badNode.stderr.contains("'slots' must be a whole number"), "\(badNode.stderr)")

        // The environment overrides the file, and is checked too.
        try "db: \(db)\n".write(to: file, atomically: true, encoding: .utf8)
        let badEnvironment = try await runHangar(
            ["scheduler", "--config", file.path],
            environment: ["HANGAR_SCHEDULER_QUEUE_TIMEOUT": "later"],
            timeout: .seconds(30)
        )
        #expect(badEnvironment.status == 1)
        #expect(badEnvironment.stderr.contains("HANGAR_SCHEDULER_QUEUE_TIMEOUT"), "\(badEnvironment.stderr)")
    }

    @Test("a config file's settings reach the running scheduler: its NATS URL and metrics port")
    func goodConfig() async throws {
        try await withNATSServer { server in
            let folder = try makeTemporaryDirectory("hangar-cli-config")
            defer { try? FileManager.default.removeItem(at: folder) }
            let file = folder.appendingPathComponent("scheduler.yaml")
            let db = folder.appendingPathComponent("db.sqlite").path
            try "nats: \(server.url)\ndb: \(db)\nmetrics_port: 0\nmetrics_address: 127.0.0.1\nlog_format: json\n"
                .write(to: file, atomically: true, encoding: .utf8)
            let log = folder.appendingPathComponent("log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let process = try hangarProcess(["scheduler", "--config", file.path], directory: folder)
            process.standardOutput = try FileHandle(forWritingTo: log)
            process.standardError = try FileHandle(forWritingTo: log)
            try process.run()
            defer {
                process.interrupt()
                process.waitUntilExit()
            }
            let deadline = ContinuousClock.now + .seconds(20)
            var url: URL?
            while url == nil, ContinuousClock.now < deadline, process.isRunning {
                url = metricsURL(in: (try? String(contentsOf: log, encoding: .utf8)) ?? "")
                try await Task.sleep(for: .milliseconds(100))
            }
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            let found = try #require(url, "the scheduler did not log its metrics URL:\n\(text)")
            #expect(found.host == "127.0.0.1")
            // JSON log lines, as the file asked.
            let line = try #require(text.split(separator: "\n").first { $0.contains("metrics on") })
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["label"] as? String == "hangar.scheduler")
            let metrics = try parsePrometheus(try await fetch(found))
            #expect(metrics.samples["hangar_queue_depth"] == 0)
        }
    }
}

/// The first `http://.../metrics` in `text`.
func metricsURL(in text: String) -> URL? {
    guard let range = text.range(of: #"http://[0-9.]+:[0-9]+/metrics"#, options: .regularExpression) else { return nil }
    return URL(string: String(text[range]))
}

func fetch(_ url: URL) async throws -> String {
    var request = URLRequest(url: url)
    request.timeoutInterval = 10
    let (data, response) = try await URLSession.shared.data(for: request)
    let status = (response as? HTTPURLResponse)?.statusCode ?? 0
    guard status == 200 else { throw CLITestError("GET \(url) answered \(status)") }
    return String(decoding: data, as: UTF8.self)
}

/// Prometheus text exposition: every sample by its series (`name{labels}`), and `# TYPE` lines.
/// Throws on a line that is neither a comment nor `series value`.
func parsePrometheus(_ text: String) throws -> (samples: [String: Double], types: [String: String]) {
    var samples: [String: Double] = [:]
    var types: [String: String] = [:]
    let sample = #/^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$/#
    for line in text.split(separator: "\n") {
        if line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            guard parts.count == 4 else { throw CLITestError("bad TYPE line: \(line)") }
            types[String(parts[2])] = String(parts[3])
            continue
        }
        if line.hasPrefix("#") { continue }
        guard let match = try sample.wholeMatch(in: String(line)), let value = Double(match.3) else {
            throw CLITestError("not Prometheus text: \(line)")
        }
        samples[String(match.1)] = value
    }
    return (samples, types)
}
