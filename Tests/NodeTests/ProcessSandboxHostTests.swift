import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Synchronization
import Testing

@testable import HangarNode

/// The node's host of stateful process sandboxes, with real bubblewrap and the real agent.
@Suite("Process sandbox host, real bubblewrap", .enabled(if: geteuid() == 0))
struct ProcessSandboxHostTests {
    @Test("other runtimes and templates are refused, naming them; the start's limits are the sandbox's")
    func refusals() async throws {
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()))
        for (runtime, template, message) in [
            (
                "microvm", "",
                "runtime 'microvm' has no stateful sandboxes on this node; use "
                    + host.availableRuntimes.sorted().joined(separator: ", ")
            ),
            ("process", "py", "template 'py' has no stateful sandboxes on this node; use 'host'"),
        ] {
            var start = Hangar_V1_SandboxStart()
            start.sandboxID = "refused-\(uniqueTag())"
            start.tenant = "acme"
            start.runtime = runtime
            start.template = template
            do {
                try await host.start(start) { _ in Issue.record("a refused sandbox died") }
                Issue.record("\(runtime)/\(template) was not refused")
            } catch {
                #expect(error.message == message)
            }
        }
        #expect(host.sandboxIDs.isEmpty)
        var limits = Hangar_V1_Limits()
        limits.memoryBytes = 96 << 20
        limits.pids = 48
        let resolved = ProcessSandboxHost.limits(limits)
        #expect(resolved.memoryBytes == 96 << 20 && resolved.pids == 48)
        #expect(resolved.cpuMillis == SandboxLimits().cpuMillis && resolved.diskBytes == SandboxLimits().diskBytes)
    }

    @Test("a sandbox whose agent goes away is reported once through died, forgotten and cleaned up")
    func diedIsReported() async throws {
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()))
        var start = Hangar_V1_SandboxStart()
        start.sandboxID = "died-\(uniqueTag())"
        start.tenant = "acme"
        start.runtime = "process"
        let deaths = Mutex<[String]>([])
        try await host.start(start) { message in deaths.withLock { $0.append(message) } }
        #expect(host.sandboxIDs == [start.sandboxID])
        #expect(host.dataTarget(start.sandboxID, tenant: "other") == nil)
        let target = try #require(host.dataTarget(start.sandboxID, tenant: "acme"))
        // The channel going away is what the host watches: the agent takes the hang-up as the end.
        target.agent.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while deaths.withLock({ $0.isEmpty }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(deaths.withLock { $0.count } == 1)
        #expect(deaths.withLock { $0.first?.hasPrefix("the sandbox's agent went away") } == true)
        #expect(host.sandboxIDs.isEmpty)
        await host.kill(start.sandboxID, reason: "already gone")  // a no-op
        #expect(deaths.withLock { $0.count } == 1)
    }
}
