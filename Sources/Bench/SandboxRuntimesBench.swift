import Foundation
import HangarShared

/// Step 5 of `hangar-bench sandboxes`: the other runtimes' stateful sandboxes (issue 16 asks for
/// `gvisor` and `microvm` to be measured and reported beside `process` and `container`), each
/// through the same cluster and client as steps 1 to 3: create → ready (cold, each killed after),
/// exec `/bin/true` round trip and write then read 1 MiB in one sandbox of the runtime.
extension SandboxBench {
    /// One runtime's figures.
    struct RuntimeFigures {
        var runtime: String
        var create: Percentiles
        /// Plain creates served by the node's warm pool of the runtime.
        var warmCreate: Percentiles
        var exec: Percentiles
        var files: Percentiles
    }

    /// Step 5 for each of `runtimes` the node offers (the others are named in `skipped`, with why):
    /// `creates` creates, `execs` execs and `files` 1 MiB writes and reads each.
    static func measureRuntimes(
        _ cluster: BenchCluster,
        runtimes: [String],
        creates: Int,
        execs: Int,
        files: Int
    ) async throws -> (figures: [RuntimeFigures], skipped: [String]) {
        var figures: [RuntimeFigures] = []
        var skipped: [String] = []
        var generator = SystemRandomNumberGenerator()
        let content = Data((0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        for runtime in runtimes {
            guard cluster.host.availableRuntimes.contains(runtime) else {
                skipped.append("`\(runtime)`: this node cannot hold its sandboxes here")
                continue
            }
            // The first create waits for the runtime's probe (microvm boots a trial VM first); it
            // is also the warm-up, and its sandbox serves the exec and file rounds.
            let step = "step 5 (\(runtime))"
            let sandbox: Hangar_V1_SandboxInfo
            do {
                sandbox = try await cluster.firstSandbox(within: .seconds(120), env: Self.cold, runtime: runtime)
            } catch {
                throw BenchError("\(step): \(error)")
            }
            for _ in 0..<3 { try await cluster.execTrue(sandbox) }
            var execTimes: [Duration] = []
            for index in 0..<execs {
                let start = ContinuousClock.now
                do {
                    try await cluster.execTrue(sandbox)
                } catch {
                    throw BenchError("\(step), exec /bin/true \(index + 1) of \(execs): \(error)")
                }
                execTimes.append(start.duration(to: .now))
            }
            var fileTimes: [Duration] = []
            for index in 0..<files {
                let path = "/home/user/bench.bin"  // rewritten each round: the disk limit is a tmpfs
                let start = ContinuousClock.now
                let read: Data
                do {
                    try await cluster.write(sandbox, path: path, content)
                    read = try await cluster.read(sandbox, path: path)
                } catch {
                    throw BenchError("\(step), write + read 1 MiB, round \(index + 1) of \(files): \(error)")
                }
                fileTimes.append(start.duration(to: .now))
                guard read == content else { throw BenchError("\(step): read back other bytes than written") }
            }
            try await cluster.kill(sandbox.id)
            try await cluster.waitUntilNodeHoldsNone(within: .seconds(60))
            var createTimes: [Duration] = []
            for index in 0..<creates {
                let start = ContinuousClock.now
                let info: Hangar_V1_SandboxInfo
                do {
                    info = try await cluster.create(env: Self.cold, runtime: runtime)
                } catch {
                    throw BenchError("\(step), create \(index + 1) of \(creates): \(error)")
                }
                createTimes.append(start.duration(to: .now))
                try await cluster.kill(info.id)
                try await cluster.waitUntilNodeHoldsNone(within: .seconds(60))
            }
            let warmTimes = try await warmCreates(cluster, runtime: runtime, runs: creates, step: step)
            figures.append(
                RuntimeFigures(
                    runtime: runtime,
                    create: Percentiles(createTimes),
                    warmCreate: Percentiles(warmTimes),
                    exec: Percentiles(execTimes),
                    files: Percentiles(fileTimes)
                )
            )
        }
        return (figures, skipped)
    }

    /// `runs` plain creates of `runtime` served by the node's warm pool of it (`--sandbox-pool 1`),
    /// after one that teaches the pool (cold, untimed); each waits until the pool holds a ready
    /// sandbox again, and is killed after (untimed). Fails unless the pool served every one.
    private static func warmCreates(
        _ cluster: BenchCluster,
        runtime: String,
        runs: Int,
        step: String
    ) async throws -> [Duration] {
        let teacher = try await cluster.create(runtime: runtime)
        try await cluster.kill(teacher.id)
        let servedBefore = cluster.host.warmCounts(runtime)?.served ?? 0
        var times: [Duration] = []
        for index in 0..<runs {
            let deadline = ContinuousClock.now + .seconds(120)
            while (cluster.host.warmCounts(runtime)?.ready ?? 0) == 0 {
                guard ContinuousClock.now < deadline else {
                    throw BenchError("\(step): no warm sandbox within 120 s (warm create \(index + 1) of \(runs))")
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            let start = ContinuousClock.now
            let info = try await cluster.create(runtime: runtime)
            times.append(start.duration(to: .now))
            try await cluster.kill(info.id)
        }
        try await cluster.waitUntilNodeHoldsNone(within: .seconds(60))
        let served = (cluster.host.warmCounts(runtime)?.served ?? 0) - servedBefore
        guard served == UInt64(runs) else {
            throw BenchError("\(step): the \(runtime) pool served \(served) of \(runs) plain creates")
        }
        return times
    }

    /// Step 5's table: each runtime's p50 and p99, and its p50 against `process`'s of this run.
    static func runtimesTable(
        _ figures: [RuntimeFigures],
        skipped: [String],
        process: (create: Percentiles, warmCreate: Percentiles?, exec: Percentiles, files: Percentiles)
    ) -> String {
        guard !figures.isEmpty || !skipped.isEmpty else { return "" }
        var table = """
            Step 5, the other runtimes (same cluster and client; cold creates carry an `env`, warm ones \
            are plain creates served by the node's pool of the runtime, `--sandbox-pool 1`; each killed \
            after; exec and 1 MiB in one sandbox of the runtime; the ratio is its p50 over `process`'s \
            of steps 1 to 3c; issue 16's create goal, p50 ≤ 25 ms from a warm pool, is for `process` and \
            `container`):

            | runtime | create → ready, cold p50 / p99 (n) | × process | create → ready, warm p50 / p99 (n) | × process | exec `/bin/true` p50 / p99 (n) | × process | write then read 1 MiB p50 / p99 (n) | × process |
            |---|---|---|---|---|---|---|---|---|

            """
        func cell(_ sample: Percentiles) -> String { "\(ms(sample.p50)) / \(ms(sample.p99)) (\(sample.count))" }
        for entry in figures {
            table +=
                "| `\(entry.runtime)` | \(cell(entry.create)) | \(ratio(entry.create.p50, process.create.p50)) "
                + "| \(cell(entry.warmCreate)) | \(process.warmCreate.map { ratio(entry.warmCreate.p50, $0.p50) } ?? "–") "
                + "| \(cell(entry.exec)) | \(ratio(entry.exec.p50, process.exec.p50)) "
                + "| \(cell(entry.files)) | \(ratio(entry.files.p50, process.files.p50)) |\n"
        }
        if !skipped.isEmpty { table += "\nNot measured: " + skipped.joined(separator: "; ") + ".\n" }
        return table
    }
}
