import Foundation
import HangarNode
import HangarShared
import Synchronization
import Testing

/// A runtime whose probe does not answer until the test opens its gate (as the microvm probe takes
/// seconds to boot a VM).
final class GatedRuntime: Runtime {
    let name = "gated"
    let open = Atomic<Bool>(false)

    func probe() async -> RuntimeProbe {
        let end = ContinuousClock.now + .seconds(60)
        while !open.load(ordering: .sequentiallyConsistent) && ContinuousClock.now < end {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return RuntimeProbe(available: true, detail: "gate opened")
    }

    func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        RunOutcome(status: .succeeded)
    }
}

@Suite("Node start-up: runtime probes do not hold back heartbeats")
struct NodeProbeTests {
    @Test("a node whose probe is still running reports its other runtimes, and the slow one once probed")
    func slowProbe() async throws {
        let gated = GatedRuntime()
        // start() waits (15 s at most) until the scheduler hears from the node: with probes run
        // before the first heartbeat, it would wait for the gate and fail.
        let cluster = try await TestCluster.start(nodes: 1, runtimes: [NullRuntime(), gated], waitForProbes: false)
        try await TemplatePoolTests.stopping(cluster) {
            let first = try #require(try await TemplatePoolTests.heartbeat(cluster, "node-1"))
            #expect(first.runtimes.map(\.name) == ["null"], "\(first.runtimes)")
            gated.open.store(true, ordering: .sequentiallyConsistent)
            let end = ContinuousClock.now + .seconds(15)
            var names: [String] = []
            while ContinuousClock.now < end {
                let heartbeat = try await TemplatePoolTests.heartbeat(cluster, "node-1")
                names = heartbeat?.runtimes.filter(\.available).map(\.name) ?? []
                if names.contains("gated") { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(names == ["gated", "null"])
        }
    }
}
