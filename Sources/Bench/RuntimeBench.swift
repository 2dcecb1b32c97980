import Foundation
import HangarNode
import HangarShared

/// Each runtime alone (no scheduler, no NATS): `/usr/bin/python3 -c pass` through `Runtime.run`,
/// against the bare command and a minimal raw `bwrap` in the same run.
enum RuntimeBench {
    static func run(quick: Bool) async throws -> String {
        let count = quick ? 10 : 40
        var spec = Hangar_V1_JobSpec()
        spec.argv = ["/usr/bin/python3", "-c", "pass"]
        spec.limits.timeoutMs = 30_000
        spec.limits.outputBytes = 1 << 20
        spec.limits.memoryBytes = 256 << 20
        spec.limits.pids = 128
        spec.limits.openFiles = 256
        spec.limits.fileSizeBytes = 64 << 20
        spec.limits.cpuMillis = 1000

        let bare = try await measure(count) { try spawnAndWait("/usr/bin/python3", ["-c", "pass"]) }
        let rawBwrap = try await measure(count) {
            try spawnAndWait(
                "/usr/bin/bwrap",
                [
                    "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                    "/usr/bin/python3", "-c", "pass",
                ]
            )
        }
        var rows = [
            row("bare `python3 -c pass` (posix_spawn + wait)", count, bare, bare),
            row("raw `bwrap --unshare-all --ro-bind / / …`", count, rawBwrap, bare),
        ]
        let runtimes: [(String, any Runtime)] = [
            ("`process` (bubblewrap + cgroup + seccomp)", ProcessRuntime()),
            ("`container` (runc)", ContainerRuntime()),
            ("`gvisor` (runsc, ptrace)", GVisorRuntime()),
        ]
        for (label, runtime) in runtimes {
            let probe = await runtime.probe()
            guard probe.available else {
                rows.append("| \(label) | – | unavailable: \(probe.detail) | | |")
                continue
            }
            let jobSpec = spec
            let sample = try await measure(count) {
                let outcome = await runtime.run(jobSpec, jobID: "bench\(UInt32.random(in: 0...UInt32.max))")
                guard outcome.status == .succeeded else {
                    throw BenchError("\(runtime.name): \(outcome.status) \(outcome.message)")
                }
            }
            rows.append(row(label, count, sample, bare))
        }
        return """
            ## Runtimes (`swift run -c release hangar-bench runtimes`)

            `/usr/bin/python3 -c pass` through each runtime's `run` (sandbox set-up, limits, run, clean-up),
            no scheduler. Baseline: the bare command in the same run.

            | what | n | median | p99 | ratio to bare (median) |
            |---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            """
    }

    static func row(_ label: String, _ count: Int, _ sample: Sample, _ baseline: Sample) -> String {
        "| \(label) | \(count) | \(ms(sample.median)) | \(ms(sample.p99)) | \(ratio(sample.median, baseline.median)) |"
    }
}
