import Foundation
import HangarNode
import HangarShared

/// `hangar-bench grants [--quick]`: the cost of path grants on a cold `process` job (issue 20's goal:
/// 10 grants at most 5% slower than none). `/bin/true` through `ProcessRuntime.run`, with no grants
/// and with 10 (5 read-only, 5 read-write folders, one deny inside each of two), interleaved job by
/// job so that the machine's drift hits both alike; medians and their ratio. The runtime is a
/// node's (its ledger open, so a grant set's view lingers between jobs, ``GrantViews``); a third
/// row runs the granted job in a runtime without a running node, whose view is made for each job,
/// and a fourth in one that can make no view (its view folder cannot be made), so that each granted
/// path is a bind of its own, as before views.
enum GrantBench {
    /// `/bin/true` without grants and with the 10 grants (their folders made under `base`).
    static func jobs(base: String, runtime: String) throws -> (plain: Hangar_V1_JobSpec, granted: Hangar_V1_JobSpec) {
        var plain = Hangar_V1_JobSpec()
        plain.runtime = runtime
        plain.argv = ["/bin/true"]
        plain.limits.timeoutMs = 30_000
        var granted = plain
        for index in 0..<5 {
            for kind in ["r", "w"] {
                let path = "\(base)/\(kind)\(index)"
                try FileManager.default.createDirectory(atPath: path + "/inner", withIntermediateDirectories: true)
                if kind == "r" { granted.grants.allowRead.append(path) } else { granted.grants.allowWrite.append(path) }
            }
        }
        granted.grants.denyRead = ["\(base)/r0/inner"]
        granted.grants.denyWrite = ["\(base)/w0/inner"]
        return (plain, granted)
    }

    static func run(quick: Bool) async throws -> String {
        let count = quick ? 40 : 200
        let base = "/var/tmp/hangar-bench-grants-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let (plain, granted) = try jobs(base: base, runtime: "process")
        let ledgerDirectory = "/var/tmp/hangar-bench-ledger-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: ledgerDirectory) }
        let ledger = SandboxLedger(directory: ledgerDirectory)
        try ledger.open()
        let resources = NodeResources(users: SandboxUsers.standard(), ledger: ledger)
        let runtime = ProcessRuntime(resources: resources)
        let standalone = ProcessRuntime()
        let pathByPath = ProcessRuntime(
            resources: NodeResources(users: SandboxUsers.standard(), grantViewRoot: "/dev/null/no-grant-views")
        )
        var without: [Duration] = []
        var with: [Duration] = []
        var madeEachTime: [Duration] = []
        var binds: [Duration] = []
        for round in 0..<count {
            // Rotate which goes first, so none always follows another.
            let order: [(Hangar_V1_JobSpec, ProcessRuntime, Int)] = [
                (plain, runtime, 0), (granted, runtime, 1), (granted, standalone, 2), (granted, pathByPath, 3),
            ]
            for index in 0..<order.count {
                let (spec, runner, row) = order[(index + round) % order.count]
                let start = ContinuousClock.now
                let outcome = await runner.run(spec, jobID: "benchgrants\(UInt32.random(in: 0...UInt32.max))")
                let elapsed = start.duration(to: .now)
                guard outcome.status == .succeeded else {
                    throw BenchError("process: \(outcome.status) \(outcome.message)")
                }
                switch row {
                case 0: without.append(elapsed)
                case 1: with.append(elapsed)
                case 2: madeEachTime.append(elapsed)
                default: binds.append(elapsed)
                }
            }
        }
        resources.grantViews.drain()
        ledger.close()
        without.sort()
        with.sort()
        madeEachTime.sort()
        let ratio = seconds(with[count / 2]) / max(1e-9, seconds(without[count / 2]))
        let madeRatio = seconds(madeEachTime[count / 2]) / max(1e-9, seconds(without[count / 2]))
        binds.sort()
        let bindsRatio = seconds(binds[count / 2]) / max(1e-9, seconds(without[count / 2]))
        return """
            ## Grants (`swift run -c release hangar-bench grants\(quick ? " --quick" : "")`)

            A cold `process` job (`/bin/true` through `ProcessRuntime.run`: sandbox set-up, cgroup, run,
            clean-up) with no grants and with 10 (5 read-only and 5 read-write host folders, a deny inside
            two of them), \(count) of each, interleaved. Baseline: the same job without grants, same run.
            The grants are bound as one prepared view (`GrantViews`): made once per grant set while the
            node runs (second row), for each job (third), or not at all, a bind per path (fourth).

            | what | n | median | p90 | ratio to no grants (median) |
            |---|---|---|---|---|
            | no grants | \(count) | \(ms(without[count / 2])) | \(ms(without[count * 9 / 10])) | 1.00 |
            | 10 grants (a node: the grant set's view made once) | \(count) | \(ms(with[count / 2])) | \(ms(with[count * 9 / 10])) | \(String(format: "%.3f", ratio)) |
            | 10 grants, the view made for each job (no running node) | \(count) | \(ms(madeEachTime[count / 2])) | \(ms(madeEachTime[count * 9 / 10])) | \(String(format: "%.3f", madeRatio)) |
            | 10 grants, a bind per path (no view, as before views) | \(count) | \(ms(binds[count / 2])) | \(ms(binds[count * 9 / 10])) | \(String(format: "%.3f", bindsRatio)) |
            """
    }

    /// `hangar-bench grants-microvm [--quick]`: the same two jobs on a cold `microvm` (a boot per
    /// job, no warm pool), the granted one with its virtiofs share (a `virtiofsd` in its user
    /// namespace per VM, the grant set's view made once), interleaved; medians and their ratio.
    static func runMicroVM(quick: Bool) async throws -> String {
        let count = quick ? 4 : 12
        let base = "/var/tmp/hangar-bench-grants-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let (plain, granted) = try jobs(base: base, runtime: "microvm")
        let ledgerDirectory = "/var/tmp/hangar-bench-ledger-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: ledgerDirectory) }
        let ledger = SandboxLedger(directory: ledgerDirectory)
        try ledger.open()
        let resources = NodeResources(users: SandboxUsers.standard(), ledger: ledger)
        let runtime = MicroVMRuntime(resources: resources)
        var anonymous = MicroVMConfiguration()
        anonymous.anonymousRAM = true
        let before = MicroVMRuntime(configuration: anonymous, resources: resources)
        let probe = await runtime.probe()
        guard probe.available else { throw BenchError("microvm: \(probe.detail)") }
        guard await before.probe().available else { throw BenchError("microvm with anonymous RAM is unavailable") }
        var rows: [[Duration]] = [[], [], []]
        for round in 0..<count {
            for index in 0..<3 {
                let row = (index + round) % 3
                let (spec, runner) = [(plain, runtime), (granted, runtime), (plain, before)][row]
                let start = ContinuousClock.now
                let outcome = await runner.run(spec, jobID: "benchvm\(round)-\(row)")
                let elapsed = start.duration(to: .now)
                guard outcome.status == .succeeded else {
                    throw BenchError("microvm: \(outcome.status) \(outcome.message)")
                }
                rows[row].append(elapsed)
            }
        }
        resources.grantViews.drain()
        ledger.close()
        let (without, with, anonymousRows) = (rows[0].sorted(), rows[1].sorted(), rows[2].sorted())
        let ratio = seconds(with[count / 2]) / max(1e-9, seconds(without[count / 2]))
        let anonymousRatio = seconds(anonymousRows[count / 2]) / max(1e-9, seconds(without[count / 2]))
        return """
            ## Grants on microvm (`swift run -c release hangar-bench grants-microvm\(quick ? " --quick" : "")`)

            A cold `microvm` job (`/bin/true`: qemu boots the guest, the agent runs the job, the VM is
            killed) with no grants and with the same 10 grants, \(count) of each, interleaved; and the
            job without grants in VMs whose RAM is qemu's default anonymous memory. The granted
            VM also gets a `virtiofsd` of its own (in its user namespace), modern virtio-mmio, the
            vhost-user device and the guest's virtiofs mounts.
            \(probe.detail)

            | what | n | median | p90 | ratio to no grants (median) |
            |---|---|---|---|---|
            | no grants | \(count) | \(ms(without[count / 2])) | \(ms(without[count * 9 / 10])) | 1.00 |
            | 10 grants (virtiofs share) | \(count) | \(ms(with[count / 2])) | \(ms(with[count * 9 / 10])) | \(String(format: "%.3f", ratio)) |
            | no grants, qemu's anonymous RAM (`anonymousRAM`, as before) | \(count) | \(ms(anonymousRows[count / 2])) | \(ms(anonymousRows[count * 9 / 10])) | \(String(format: "%.3f", anonymousRatio)) |
            """
    }

}
