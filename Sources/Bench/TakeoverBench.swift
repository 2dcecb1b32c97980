import Foundation
import HangarNATS

/// How long the standby scheduler takes to lead after the leader is killed:
///
///     hangar-bench takeover [--hangar PATH] [--kills N] [--lease S]
///
/// Two `hangar scheduler --leader-lease S` processes (default 3 s) on one nats-server and one
/// SQLite file; N times (default 20) the leader is killed with SIGKILL, the time until the other
/// logs that it leads is taken, and the killed one is started again as the new standby. Prints a
/// BENCHMARKS.md section with p50 and max. The lease sets the floor: a standby takes over only
/// after it has seen the lease unrenewed for the lease plus a margin (S/3, at least 0.5 s),
/// counted from its last read before the kill.
enum TakeoverBench {
    static func run(_ arguments: [String]) async throws -> String {
        var hangar =
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("hangar").path
        var kills = 20
        var lease = 3.0
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            guard let value = rest.popFirst() else { throw BenchError("\(flag) needs a value") }
            switch flag {
            case "--hangar": hangar = value
            case "--kills": kills = Int(value) ?? 0
            case "--lease": lease = Double(value) ?? 0
            default: throw BenchError("unknown argument \(flag) (--hangar PATH, --kills N, --lease S)")
            }
        }
        guard kills > 0, lease >= 1 else { throw BenchError("--kills must be at least 1 and --lease at least 1") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-takeover-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        // Each scheduler has its own store, a replica of the store log.
        let schedulers = (1...2).map { number in
            Child(
                name: "scheduler s\(number)",
                executable: hangar,
                arguments: [
                    "scheduler", "--nats", server.url, "--db",
                    directory.appendingPathComponent("hangar-s\(number).sqlite").path, "--leader-lease", "\(lease)",
                    "--log-level", "notice",
                ],
                log: directory.appendingPathComponent("s\(number).log")
            )
        }
        defer { for scheduler in schedulers { scheduler.kill9() } }
        try schedulers[0].start()
        try await waitForLeading(schedulers[0], count: 1)
        try schedulers[1].start()
        var leader = 0
        var takeovers: [Duration] = []
        for _ in 0..<kills {
            let standby = 1 - leader
            let before = leadingCount(schedulers[standby])
            // The standby has read the lease at least once (it polls every lease/4 or 0.5 s).
            try await Task.sleep(for: .seconds(1))
            let killed = ContinuousClock.now
            schedulers[leader].kill9()
            try await waitForLeading(schedulers[standby], count: before + 1)
            takeovers.append(killed.duration(to: .now))
            try schedulers[leader].start()
            leader = standby
        }
        let sorted = takeovers.sorted()
        func text(_ duration: Duration) -> String { FaultTest.seconds(duration) }
        return """
            ## Scheduler takeover (`swift run -c release hangar-bench takeover \(arguments.joined(separator: " "))`)

            Two `hangar scheduler --leader-lease \(lease)` processes on one nats-server, each with its own SQLite \
            file (a replica of the store log); the leader killed with SIGKILL \(kills) times, each time measured \
            until the standby logs that it has caught up with the store log as the leader, right before it serves \
            (the killed one comes back as the standby).

            | takeovers | p50 | max | min |
            |---|---|---|---|
            | \(kills) | \(text(sorted[sorted.count / 2])) | \(text(sorted.last!)) | \(text(sorted.first!)) |

            Every takeover: \(takeovers.map(text).joined(separator: ", ")).

            """
    }

    /// How many times `child` has logged that it leads and caught up with the store log.
    static func leadingCount(_ child: Child) -> Int {
        let text = (try? String(contentsOf: child.log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { $0.contains("caught up with the store log") }.count
    }

    /// Waits (up to 30 s, checking every 20 ms) until `child` has logged that it leads `count` times.
    static func waitForLeading(_ child: Child, count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if leadingCount(child) >= count { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw BenchError("\(child.name) did not lead within 30 s; its log: \(child.tail(10))")
    }
}
