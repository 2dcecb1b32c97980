import Foundation
import HangarNode
import HangarShared
import Synchronization

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
        // Raw tools on a minimal bundle (`runc spec` defaults + /usr): what Hangar's node adds on top
        // of runc and runsc is its own bundle, cgroup, limits, output handling and clean-up.
        var raw: [String: Sample] = ["process": rawBwrap]
        let bundle = try RawOCIBundle.make()
        defer { bundle.remove() }
        raw["container"] = try await measure(count) { try bundle.run("/usr/sbin/runc") }
        rows.append(row("raw `runc run` (runc spec defaults + /usr)", count, raw["container"]!, bare))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/runsc") {
            raw["gvisor"] = try await measure(count) {
                try bundle.run("/usr/bin/runsc", flags: ["--platform=ptrace", "--network=none"])
            }
            rows.append(row("raw `runsc run` (ptrace, same bundle)", count, raw["gvisor"]!, bare))
        }
        let runtimes: [(String, any Runtime)] = [
            ("`process` (bubblewrap + cgroup + seccomp)", ProcessRuntime()),
            ("`container` (runc)", ContainerRuntime()),
            ("`gvisor` (runsc, ptrace)", GVisorRuntime()),
        ]
        var overheads: [String] = []
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
            if let tool = raw[runtime.name] {
                let added = (seconds(sample.median) / max(1e-9, seconds(tool.median)) - 1) * 100
                overheads.append(
                    "| \(runtime.name) | \(ms(tool.median)) | \(ms(sample.median)) | "
                        + String(format: "%+.0f%%", added) + " |"
                )
            }
        }
        rows += try await microVMRows(spec, count: quick ? 3 : 10, bare: bare)
        return """
            ## Runtimes (`swift run -c release hangar-bench runtimes`)

            `/usr/bin/python3 -c pass` through each runtime's `run` (sandbox set-up, limits, run, clean-up),
            no scheduler. Baseline: the bare command in the same run.

            | what | n | median | p99 | ratio to bare (median) |
            |---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            What the node adds over the raw tool alone (medians; the goal is ≤ +10%). The node's sandbox
            does more than the raw command: its own cgroup with memory/pids/CPU limits, a seccomp filter,
            rlimits, a non-root uid, output capture with caps, and a clean-up that checks for leftovers.

            | runtime | raw tool | through the node | added |
            |---|---|---|---|
            \(overheads.joined(separator: "\n"))

            """
    }

    /// A fresh VM per job, so few runs: whole jobs, and boot → agent ready (the runtime's
    /// `startMilliseconds`) of the same runs.
    static func microVMRows(_ spec: Hangar_V1_JobSpec, count: Int, bare: Sample) async throws -> [String] {
        let runtime = MicroVMRuntime()
        let probe = await runtime.probe()
        let label = "`microvm` (qemu -M microvm; \(probe.detail.contains("TCG") ? "TCG" : "KVM"))"
        guard probe.available else { return ["| \(label) | – | unavailable: \(probe.detail) | | |"] }
        let ready = Mutex<[Duration]>([])
        let sample = try await measure(count) {
            let outcome = await runtime.run(spec, jobID: "bench-vm")
            guard outcome.status == .succeeded else {
                throw BenchError("microvm: \(outcome.status) \(outcome.message)")
            }
            ready.withLock { $0.append(.milliseconds(Int64(outcome.startMilliseconds))) }
        }
        let boots = ready.withLock { $0.sorted() }
        let readySample = Sample(
            median: boots[boots.count / 2],
            p99: boots[min(boots.count - 1, Int((Double(boots.count) * 0.99).rounded(.up)) - 1)]
        )
        return [
            row(label, count, sample, bare),
            row("`microvm` spawn → guest agent ready (same runs)", count, readySample, bare),
        ]
    }

    static func row(_ label: String, _ count: Int, _ sample: Sample, _ baseline: Sample) -> String {
        "| \(label) | \(count) | \(ms(sample.median)) | \(ms(sample.p99)) | \(ratio(sample.median, baseline.median)) |"
    }
}
