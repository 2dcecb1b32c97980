import Foundation
import HangarNode
import HangarShared
import Logging
import Testing

// Part of the serialized WarmPoolTests suite: its container case counts `hangar-warm-host-*`
// cgroups, which gVisor's warm sandboxes are named like.
extension WarmPoolTests {
    @Test("a gVisor pool serves a job warm over the container's stdin, exactly as a fresh sandbox would")
    func gvisor() async throws {
        let directories = OCIKind.gvisor.directories
        let runtime = GVisorRuntime(directories: directories)
        let probe = await runtime.probe()
        try #require(probe.available, "\(probe.detail)")
        let pools = WarmPools(
            specs: [WarmPoolSpec(runtime: "gvisor", template: "host", min: 1, max: 1)],
            runtimes: [runtime],
            logger: Logger(label: "test")
        )
        let running = Task { await pools.run(available: ["gvisor"]) }
        let status = { pools.status().first { $0.runtime == "gvisor" } }
        #expect(await eventually(within: .seconds(60)) { status()?.ready == 1 }, "\(pools.status())")
        // stdin with a line that looks like shell and ends without a newline: the job must get
        // exactly these bytes, after the script the waiting shell read.
        var spec = job(["/usr/bin/python3", "-c", WarmPoolTests.inspect]) {
            $0.stdin = Data("from-stdin\nexit 3\nno newline".utf8)
            $0.env = ["FOO": "it's\nmultiline"]
        }
        spec.runtime = "gvisor"
        let sandbox = try #require(pools.take(spec))
        #expect(status()?.servedWarm == 1)
        let outcome = await sandbox.run(spec, jobID: "warm-g-\(uniqueTag())")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(
            text(outcome.stdout)
                == "out\nfrom-stdin\nexit 3\nno newlineit's\nmultiline\nfds -\nenv FOO,HOME,LC_CTYPE,PATH\n",
            "\(text(outcome.stdout))"
        )
        #expect(text(outcome.stderr) == "err\n")
        // The same job in a fresh sandbox prints the same.
        let cold = await runtime.run(spec, jobID: "cold-g-\(uniqueTag())")
        #expect(cold.stdout == outcome.stdout, "\(text(cold.stdout))")
        // A warm job keeps its own wall clock.
        #expect(await eventually(within: .seconds(60)) { status()?.ready == 1 })
        let slow = job(["/bin/sleep", "30"]) {
            $0.runtime = "gvisor"
            $0.limits.timeoutMs = 500
        }
        let slowSandbox = try #require(pools.take(slow))
        let slowOutcome = await slowSandbox.run(slow, jobID: "warm-g-slow-\(uniqueTag())")
        #expect(slowOutcome.status == .timedOut, "\(slowOutcome.message)")

        running.cancel()
        await running.value
        #expect(status()?.ready == 0)
        // Bounded: once, under load from parallel suites, a runsc sandbox's bundle and state were
        // still there right after the drain and gone a moment later.
        func leftovers() -> [String] {
            [directories.bundles, directories.state].flatMap {
                ((try? FileManager.default.contentsOfDirectory(atPath: $0)) ?? []).filter {
                    $0.hasPrefix("hangar-warm-host-")
                }
            }
        }
        #expect(await eventually(within: .seconds(10)) { leftovers().isEmpty }, "\(leftovers())")
    }
}
