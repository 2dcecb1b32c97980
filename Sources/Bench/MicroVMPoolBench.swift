import Foundation
import HangarNode
import HangarShared

/// Warm microVMs: what refilling a pool costs (a boot vs a restore from the snapshot, each until
/// the agent is ready), and what a job pays cold (a VM booted for it) vs warm (a ready VM taken).
enum MicroVMPoolBench {
    static func run(quick: Bool) async throws -> String {
        let refills = quick ? 5 : 15
        let jobs = quick ? 5 : 15
        var booting = MicroVMConfiguration()
        booting.snapshotRefill = false
        let booted = MicroVMRuntime(configuration: booting)
        let restored = MicroVMRuntime()
        let probe = await restored.probe()
        guard probe.available else { return "## Warm microVMs\n\nunavailable: \(probe.detail)\n" }
        let accelerator = probe.detail.contains("TCG") ? "TCG" : "KVM"

        // Refill: prepareWarm until the VM's agent is ready; the VM is destroyed afterwards.
        let boot = try await refill(booted, count: refills, expect: .booted)
        let firstBegan = ContinuousClock.now
        let first = try await restored.prepareWarm(template: "host", profile: .defaults)
        let firstTime = ContinuousClock.now - firstBegan
        await first.destroy()
        let restore = try await refill(restored, count: refills, expect: .restored)

        // Dispatch: `python3 -c pass` cold (the runtime boots a VM for it) and warm (a restored
        // VM, prepared before the clock starts); and the warm start (hand-over → job with the agent).
        let python = PoolBench.job(["/usr/bin/python3", "-c", "pass"], runtime: "microvm")
        let cold = try await measure(quick ? 3 : 8) {
            let outcome = await booted.run(python, jobID: "bench-vm-cold")
            guard outcome.status == .succeeded else { throw BenchError("microvm cold: \(outcome.message)") }
        }
        var warmTimes: [Duration] = []
        var starts: [Duration] = []
        for index in 0..<jobs {
            let sandbox = try await restored.prepareWarm(template: "host", profile: .defaults)
            let began = ContinuousClock.now
            let outcome = await sandbox.run(python, jobID: "bench-vm-warm-\(index)")
            warmTimes.append(ContinuousClock.now - began)
            guard outcome.status == .succeeded else { throw BenchError("microvm warm: \(outcome.message)") }
            starts.append(.milliseconds(Int64(outcome.startMilliseconds)))
        }
        let warm = summarize(warmTimes)
        let start = summarize(starts)
        return """
            ## Warm microVMs (`swift run -c release hangar-bench microvm-pool\(quick ? " --quick" : "")`)

            \(accelerator), one VM at a time, VMs sized for the default job (256 MiB + the guest's overhead,
            1 vCPU). Refill: `prepareWarm` until the guest agent is ready: a fresh boot, or a restore of
            the snapshot (`-incoming fd:5` from a memory file) plus the SEED round trip. The first refill
            of a restoring pool boots the VM it takes the snapshot from. Jobs: from handing the job over
            until the outcome; warm VMs are prepared before the clock starts. Baseline of the refill rows:
            the boot; of the job rows: the cold job.

            | what | n | median | p99 | ratio to its baseline (median) |
            |---|---|---|---|---|
            | refill by boot | \(refills) | \(ms(boot.median)) | \(ms(boot.p99)) | 1.0 |
            | refill by snapshot restore | \(refills) | \(ms(restore.median)) | \(ms(restore.p99)) | \(ratio2(restore.median, boot.median)) |
            | first refill with snapshots (boot + save + restore) | 1 | \(ms(firstTime)) | – | \(ratio2(firstTime, boot.median)) |
            | `python3 -c pass` cold (VM booted for the job) | \(quick ? 3 : 8) | \(ms(cold.median)) | \(ms(cold.p99)) | 1.0 |
            | `python3 -c pass` warm (restored VM taken) | \(jobs) | \(ms(warm.median)) | \(ms(warm.p99)) | \(ratio2(warm.median, cold.median)) |
            | warm start: hand-over → whole job with the agent (the outcome's `start_ms`, whole ms) | \(jobs) | \(whole(start.median)) | \(whole(start.p99)) | – |

            """
    }

    static func refill(_ runtime: MicroVMRuntime, count: Int, expect: MicroVMWarmSandbox.Origin) async throws -> Sample
    {
        var times: [Duration] = []
        for _ in 0..<count {
            let began = ContinuousClock.now
            let sandbox = try await runtime.prepareWarm(template: "host", profile: .defaults)
            times.append(ContinuousClock.now - began)
            guard let vm = sandbox as? MicroVMWarmSandbox, vm.origin == expect else {
                await sandbox.destroy()
                throw BenchError("a refill was not a \(expect.rawValue) VM (see the log)")
            }
            await sandbox.destroy()
        }
        return summarize(times)
    }

    static func ratio2(_ value: Duration, _ baseline: Duration) -> String {
        String(format: "%.2f", seconds(value) / max(1e-9, seconds(baseline)))
    }

    static func whole(_ duration: Duration) -> String {
        "\(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000) ms"
    }

    static func summarize(_ values: [Duration]) -> Sample {
        let sorted = values.sorted()
        return Sample(
            median: sorted[sorted.count / 2],
            p99: sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]
        )
    }
}
