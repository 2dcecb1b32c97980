import Foundation
import HangarNode
import HangarShared
import Logging

/// Warm vs cold at the node (no scheduler): from handing the job to the node's runtime (or taking a
/// warm sandbox from its pool) until the user's code runs, measured by the job itself printing the
/// realtime clock (`date +%s%N`; sandboxes share the host's clock), plus `python3 -c pass` end to
/// end (hand-over to outcome) against the bare command.
enum PoolBench {
    static func run(quick: Bool) async throws -> String {
        let count = quick ? 10 : 40
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let bare = try await measure(count) { try spawnAndWait("/usr/bin/python3", ["-c", "pass"]) }
        var rows: [String] = []
        let candidates: [any Runtime] = [ProcessRuntime(), ContainerRuntime(), GVisorRuntime()]
        for runtime in candidates {
            let probe = await runtime.probe()
            guard probe.available else {
                rows.append("| `\(runtime.name)` | – | unavailable: \(probe.detail) | | | |")
                continue
            }
            let pools = WarmPools(
                specs: [WarmPoolSpec(runtime: runtime.name, template: "host", min: 2, max: 2)],
                runtimes: [runtime],
                logger: logger
            )
            let filling = Task { await pools.run(available: [runtime.name]) }
            defer { filling.cancel() }
            let warmable = runtime is any WarmableRuntime
            let clock = job(["/bin/date", "+%s%N"], runtime: runtime.name)
            let python = job(["/usr/bin/python3", "-c", "pass"], runtime: runtime.name)
            for (label, spec, isClockJob) in [
                ("until code runs", clock, true), ("`python3 -c pass` end to end", python, false),
            ] {
                let cold = try await sample(count, spec, clockJob: isClockJob) { await runtime.run(spec, jobID: $0) }
                rows.append(row("`\(runtime.name)` cold, \(label)", count, cold, bare, isClockJob))
                guard warmable else {
                    rows.append(
                        "| `\(runtime.name)` warm, \(label) | – | no warm sandboxes for this runtime yet | | | |"
                    )
                    continue
                }
                let warm = try await sample(count, spec, clockJob: isClockJob) { jobID in
                    guard let sandbox = pools.take(spec) else { return .error("no warm sandbox ready") }
                    return await sandbox.run(spec, jobID: jobID)
                } before: {
                    try await waitForReady(pools)
                }
                rows.append(row("`\(runtime.name)` warm, \(label)", count, warm, bare, isClockJob))
            }
            filling.cancel()
            await filling.value
            rows += try await PoolClusterBench.rows(runtime: runtime, count: count, bare: bare)
        }
        return """
            ## Warm pools (`swift run -c release hangar-bench pools\(quick ? " --quick" : "")`)

            At the node, no scheduler. "until code runs": from handing the job over (cold: the runtime's
            `run`; warm: taking a ready sandbox from the pool and running it) until the job's own first
            instruction, read by the job printing the realtime clock (`/bin/date +%s%N`). "end to end":
            until the outcome is back; "submit → result": a wait-mode submission through nats-server, the
            scheduler and one node, from request to reply. Baseline: bare `python3 -c pass` in the same
            run. Pools hold 2 sandboxes; each warm iteration first waits (not timed) until both are ready.

            | what | n | median | p99 | ratio to bare python (median) | |
            |---|---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            """
    }

    static func job(_ argv: [String], runtime: String) -> Hangar_V1_JobSpec {
        var spec = Hangar_V1_JobSpec()
        spec.runtime = runtime
        spec.template = "host"
        spec.argv = argv
        spec.limits.timeoutMs = 30_000
        return spec
    }

    /// Times `body` `count` times: until the printed clock (clock jobs) or until it returns.
    static func sample(
        _ count: Int,
        _ spec: Hangar_V1_JobSpec,
        clockJob: Bool,
        _ body: @escaping @Sendable (String) async -> RunOutcome,
        before: @escaping @Sendable () async throws -> Void = {}
    ) async throws -> Sample {
        var durations: [Duration] = []
        for index in 0..<count {
            try await before()
            let startNanos = realtimeNanoseconds()
            let start = ContinuousClock.now
            let outcome = await body("bench-pool-\(index)-\(UInt32.random(in: 0...UInt32.max))")
            let end = ContinuousClock.now
            guard outcome.status == .succeeded else {
                throw BenchError("\(spec.runtime) \(spec.argv[0]): \(outcome.status) \(outcome.message)")
            }
            if clockJob {
                let printed = String(decoding: outcome.stdout, as: UTF8.self).trimmingCharacters(
                    in: .whitespacesAndNewlines
                )
                guard let nanos = Int64(printed) else { throw BenchError("date printed \"\(printed)\"") }
                durations.append(.nanoseconds(nanos - startNanos))
            } else {
                durations.append(end - start)
            }
        }
        durations.sort()
        return Sample(median: durations[count / 2], p99: durations[min(count - 1, Int(Double(count) * 0.99))])
    }

    static func waitForReady(_ pools: WarmPools) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        // Both sandboxes, so no set-up runs alongside the measured job.
        while pools.status().first.map({ $0.ready < 2 }) ?? true {
            guard ContinuousClock.now < deadline else {
                throw BenchError("no warm sandbox within 30 s: \(pools.status().first?.error ?? "")")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    static func realtimeNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    static func row(_ label: String, _ count: Int, _ sample: Sample, _ bare: Sample, _ clockJob: Bool) -> String {
        "| \(label) | \(count) | \(ms(sample.median)) | \(ms(sample.p99)) | \(clockJob ? "–" : ratio(sample.median, bare.median)) | |"
    }
}
