import Foundation

/// The cost of replication: control-plane throughput on a cluster of three nats-servers with every
/// stream R3 (with and without the replicated store log) against the same benchmark on one server,
/// in the same run:
///
///     hangar-bench cluster-throughput [--jobs N] [--rounds R]
///
/// Each round runs `hangar-bench throughput --jobs N` once on one server and once on the cluster
/// (each with its own nats-server(s), scheduler and nodes, and its own raw request/reply baseline),
/// alternating, and prints a BENCHMARKS.md section with each setup's median rate and the ratio of
/// the medians.
enum ClusterThroughputBench {
    static func run(_ arguments: [String]) async throws -> String {
        var jobs = 10_000
        var rounds = 3
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            guard let text = rest.popFirst(), let value = Int(text), value > 0 else {
                throw BenchError("\(flag) needs a positive number")
            }
            switch flag {
            case "--jobs": jobs = value
            case "--rounds": rounds = value
            default: throw BenchError("unknown argument \(flag) (--jobs N, --rounds R)")
            }
        }
        // Setups: one server; three servers, streams R3; three servers, streams R3 and the
        // replicated store log (as with --leader-lease).
        let setups: [(servers: Int, storeLog: Bool)] = [(1, false), (3, false), (3, true)]
        var rates = [[(baseline: Double, jobs: Double)]](repeating: [], count: setups.count)
        for _ in 0..<rounds {
            for (index, setup) in setups.enumerated() {
                let json = try await ThroughputBench.run(
                    ["--jobs", "\(jobs)", "--nats-servers", "\(setup.servers)", "--json"]
                        + (setup.storeLog ? ["--store-log"] : [])
                )
                guard
                    let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                    let round = (object["rounds"] as? [[String: Double]])?.first,
                    let baseline = round["baseline"], let rate = round["one-per-request"]
                else {
                    throw BenchError("unexpected throughput output: \(json)")
                }
                rates[index].append((baseline, rate))
            }
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let single = median(rates[0].map(\.jobs))
        let replicated = median(rates[1].map(\.jobs))
        let logged = median(rates[2].map(\.jobs))
        func row(_ name: String, _ index: Int) -> String {
            let all = rates[index]
            let jobsMedian = median(all.map(\.jobs))
            let baselineMedian = median(all.map(\.baseline))
            return
                "| \(name) | \(Int(jobsMedian)) | \(all.map { "\(Int($0.jobs))" }.joined(separator: ", ")) | \(Int(baselineMedian)) | \(String(format: "%.0f%%", jobsMedian / baselineMedian * 100)) |"
        }
        return """
            ## Cost of replication (`swift run -c release hangar-bench cluster-throughput \(arguments.joined(separator: " "))`)

            \(jobs) null jobs in wait mode from 64 concurrent clients per round (one scheduler, two nodes, in one \
            process), once on one nats-server with every stream R1 and twice on a cluster of three nats-servers on \
            loopback with every stream R3 (a message is acknowledged once two servers hold it), the second time with \
            every store transaction first appended to the R3 store log, alternating, \
            \(rounds) rounds. Each setup's baseline is raw NATS request/reply on its own bus in the same round.

            | bus | jobs/s (median) | every round | raw request/reply/s (median) | jobs vs raw |
            |---|---|---|---|---|
            \(row("one nats-server, streams R1", 0))
            \(row("three nats-servers, streams R3", 1))
            \(row("three nats-servers, streams R3, store log R3", 2))

            Throughput on the R3 cluster is **\(String(format: "%.0f%%", replicated / single * 100))** of one server's; \
            with the replicated store log too (what `--leader-lease` runs), **\(String(format: "%.0f%%", logged / single * 100))**.

            """
    }
}
