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
            ("process", "py", "template 'py' is not on this node (it has no template store)"),
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

    @Test(
        "warm sandboxes: a create like the one before is served by a ready sandbox whose python context runs; others start cold; stop ends them"
    )
    func warmSandboxes() async throws {
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()), warmSandboxes: 1)
        func start(_ configure: (inout Hangar_V1_SandboxStart) -> Void = { _ in }) async throws -> String {
            var start = Hangar_V1_SandboxStart()
            start.sandboxID = "warm-test-\(uniqueTag())"
            start.tenant = "acme"
            start.runtime = "process"
            start.limits.memoryBytes = 200 << 20
            configure(&start)
            try await host.start(start) { _ in Issue.record("a sandbox died") }
            return start.sandboxID
        }
        func waitForReady() async throws -> ProcessSandbox {
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                if let ready = host.warm?.readySandboxes.first as? ProcessSandbox { return ready }
                try await Task.sleep(for: .milliseconds(20))
            }
            throw DeadlinePassed()
        }
        // The first plain create teaches the pool its limits and starts cold.
        let first = try await start()
        #expect(host.warmCounts?.served == 0 && host.warmCounts?.missed == 1)
        let warm = try await waitForReady()
        // The next one gets that very sandbox, its default python context already running.
        let second = try await start()
        #expect(host.warmCounts?.served == 1, "\(String(describing: host.warmCounts))")
        let target = try #require(host.dataTarget(second, tenant: "acme"))
        #expect(target.agent === warm.agent)
        let contexts = await target.code.list()
        #expect(contexts.map(\.language) == ["python"] && contexts.first?.alive == true, "\(contexts)")
        let cells = try await runCells(target, ["6 * 7"])
        #expect(mainValues(cells[0]) == ["42"], "\(cells)")
        #expect(await target.code.list().count == 1)  // the cell ran in the prepared context
        // Its limits are the create's: the cgroup holds 200 MiB.
        let memory =
            warm.cgroupDirectories.compactMap {
                try? String(contentsOfFile: $0 + "/memory.limit_in_bytes", encoding: .utf8)
            }
            + warm.cgroupDirectories.compactMap { try? String(contentsOfFile: $0 + "/memory.max", encoding: .utf8) }
        #expect(
            memory.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.contains(String(200 << 20)),
            "\(memory)"
        )
        // A create with an environment of its own starts cold; so does one with other limits.
        let next = try await waitForReady()
        let withEnv = try await start { $0.env = ["A": "1"] }
        #expect(host.dataTarget(withEnv, tenant: "acme")?.agent !== next.agent)
        #expect(host.warmCounts?.served == 1)
        // A create with a network (as the E2B SDKs ask for by default) makes the pool switch to
        // that profile: the next such create gets a ready sandbox that already has its network.
        func allowAll(_ start: inout Hangar_V1_SandboxStart) {
            start.network.mode = .networkAllowlist
            start.network.allow = ["0.0.0.0/0"]
            start.grants.allowNet = ["0.0.0.0/0"]
        }
        let networked = try await start(allowAll)
        #expect(host.warmCounts?.served == 1)
        let ready = try await waitForReady()
        #expect(ready.networkNamespace != nil)
        let networkedWarm = try await start(allowAll)
        #expect(host.warmCounts?.served == 2, "\(String(describing: host.warmCounts))")
        #expect(host.dataTarget(networkedWarm, tenant: "acme")?.agent === ready.agent)
        // Stopping the host ends what is ready: its agent is gone and its cgroup removed.
        for id in [first, second, withEnv, networked, networkedWarm] { await host.kill(id, reason: "test over") }
        _ = try await waitForReady()
        let pooled = host.warm?.readySandboxes.compactMap { $0 as? ProcessSandbox } ?? []
        #expect(pooled.count == 1)
        await host.stop()
        for sandbox in pooled {
            #expect(sandbox.agent.goneReason != nil)
            for directory in sandbox.cgroupDirectories { #expect(!FileManager.default.fileExists(atPath: directory)) }
        }
        #expect(host.warm?.readySandboxes.isEmpty == true)
    }

    @Test(
        "warm sandboxes of container and gvisor: each runtime has a pool of its own; a plain create after the first is served by a ready sandbox of its runtime; stop ends them",
        .enabled(if: geteuid() == 0 && access("/usr/sbin/runc", X_OK) == 0 && access("/usr/bin/runsc", X_OK) == 0)
    )
    func warmContainerSandboxes() async throws {
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()), warmSandboxes: 1)
        func start(_ runtime: String) async throws -> String {
            var start = Hangar_V1_SandboxStart()
            start.sandboxID = "warm-\(runtime)-\(uniqueTag())"
            start.tenant = "acme"
            start.runtime = runtime
            start.limits.memoryBytes = 256 << 20
            try await host.start(start) { _ in Issue.record("a sandbox died") }
            return start.sandboxID
        }
        func waitForReady(_ runtime: String) async throws -> any StatefulSandbox {
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                if let ready = host.warmPools[runtime]?.readySandboxes.first { return ready }
                try await Task.sleep(for: .milliseconds(20))
            }
            throw DeadlinePassed()
        }
        var started: [String] = []
        defer { for id in started { Task { await host.kill(id, reason: "test over") } } }
        for runtime in ["container", "gvisor"] {
            started.append(try await start(runtime))  // cold: teaches the runtime's pool
            #expect(host.warmCounts(runtime)?.served == 0 && host.warmCounts(runtime)?.missed == 1)
            let warm = try await waitForReady(runtime)
            #expect(warm is ContainerSandbox)
            let served = try await start(runtime)
            started.append(served)
            #expect(host.warmCounts(runtime)?.served == 1, "\(String(describing: host.warmCounts(runtime)))")
            let target = try #require(host.dataTarget(served, tenant: "acme"))
            #expect(target.agent === warm.agent, "the create got the \(runtime) pool's sandbox")
            let uname = try await execute(warm, ["uname", "-r"], within: .seconds(30))
            #expect((text(uname.stdout) == "4.4.0\n") == (runtime == "gvisor"), "\(text(uname.stdout))")
            let cells = try await runCells(target, ["6 * 7"])
            #expect(mainValues(cells[0]) == ["42"], "\(cells)")
        }
        #expect(host.warmCounts("process")?.served == 0, "the process pool served none of them")
        for id in started { await host.kill(id, reason: "test over") }
        started = []
        let pooled = ["container", "gvisor"].compactMap { host.warmPools[$0]?.readySandboxes.first }
        await host.stop()
        for sandbox in pooled { #expect(sandbox.agent.goneReason != nil) }
        let list = await listContainers(GVisorRuntime().engine)
        #expect(!list.output.contains("warm-"), "\(list.output)")
    }
}
