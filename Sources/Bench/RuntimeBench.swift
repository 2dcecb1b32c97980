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
        // The node's own sandbox, run by bwrap alone: what is left between this and the `process`
        // row is the node's work around the sandbox (cgroup, rlimit shim, user switch, monitoring,
        // usage, clean-up).
        let sandboxSpec = spec
        let sandboxOnly = try await measure(count) {
            let invocation = try ProcessRuntime().bubblewrapInvocation(for: sandboxSpec)
            defer { for fd in invocation.files { close(fd) } }
            try spawnAndWait("/usr/bin/bwrap", invocation.arguments, files: invocation.files)
        }
        var rows = [
            row("bare `python3 -c pass` (posix_spawn + wait)", count, bare, bare),
            row("raw `bwrap --unshare-all --ro-bind / / …`", count, rawBwrap, bare),
            row("raw `bwrap` with the node's own sandbox arguments (binds, seccomp, tmpfs)", count, sandboxOnly, bare),
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
        // The node's own bundles, run by the tool alone: what is left between these and the runtime
        // rows is the node's work around the container (cgroup set-up, bundle writing, user
        // namespace, output capture, clean-up).
        var ownBundle: [String: Sample] = [:]
        let container = ContainerRuntime()
        let runcBundle = try container.writeBundle(for: spec, id: "hangar-bench-own-runc")
        defer { try? FileManager.default.removeItem(atPath: runcBundle) }
        ownBundle["container"] = try await measure(count) {
            try spawnAndWait(
                "/usr/sbin/runc",
                ["run", "--bundle", runcBundle, "hangar-bench-own-\(UInt32.random(in: 0...UInt32.max))"]
            )
        }
        rows.append(
            row(
                "raw `runc run` of the node's own bundle (seccomp, masks, user namespace)",
                count,
                ownBundle["container"]!,
                bare
            )
        )
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/runsc") {
            let gvisorBundle = try GVisorRuntime().writeBundle(for: spec, id: "hangar-bench-own-runsc")
            defer { try? FileManager.default.removeItem(atPath: gvisorBundle) }
            ownBundle["gvisor"] = try await measure(count) {
                try spawnAndWait(
                    "/usr/bin/runsc",
                    [
                        "--platform=ptrace", "--network=none", "--rootless=false", "--oci-seccomp", "run", "--bundle",
                        gvisorBundle,
                        "hangar-bench-own-\(UInt32.random(in: 0...UInt32.max))",
                    ]
                )
            }
            rows.append(
                row("raw `runsc --oci-seccomp run` of the node's own bundle", count, ownBundle["gvisor"]!, bare)
            )
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
            if let own = runtime.name == "process" ? sandboxOnly : ownBundle[runtime.name] {
                let added = (seconds(sample.median) / max(1e-9, seconds(own.median)) - 1) * 100
                overheads.append(
                    "| \(runtime.name), vs the tool running the node's own sandbox | \(ms(own.median)) | "
                        + "\(ms(sample.median)) | " + String(format: "%+.0f%%", added) + " |"
                )
            }
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
            ## Runtimes (`swift run -c release hangar-bench runtimes\(quick ? " --quick" : "")`)

            `/usr/bin/python3 -c pass` through each runtime's `run` (sandbox set-up, limits, run, clean-up),
            no scheduler. Baseline: the bare command in the same run.

            | what | n | median | p99 | ratio to bare (median) |
            |---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            What the node adds over the raw tool alone (medians; the goal is ≤ +10%). Two baselines per
            runtime: the tool running the node's own sandbox (same binds or bundle, seccomp, masks, user
            namespace: what is left is the node's work around it — cgroup set-up, rlimit shim and user
            switch, monitoring, usage, clean-up), and the tool on a minimal sandbox (what the hardening
            itself costs on top).

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
