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
    static func run(quick: Bool) async throws -> String {
        let count = quick ? 40 : 200
        let base = "/var/tmp/hangar-bench-grants-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        var plain = Hangar_V1_JobSpec()
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

}
