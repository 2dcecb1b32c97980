import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Synchronization
import Testing

@testable import HangarNode

/// Real runc containers with the real `hangar-sandbox-agent` (built next to the test binary).
@Suite(
    "Stateful container sandbox, real runc",
    .enabled(if: geteuid() == 0 && access("/usr/sbin/runc", X_OK) == 0),
    .serialized
)
struct ContainerSandboxTests {
    static let runtime = ContainerRuntime()

    /// A sandbox for one test, killed at the end and checked to have left nothing: no runc
    /// container, no cgroup directory, no bundle.
    static func withSandbox(
        limits: SandboxLimits = SandboxLimits(),
        grants: Hangar_V1_Grants = Hangar_V1_Grants(),
        engine: OCIEngine = runtime.engine,
        _ body: (ContainerSandbox) async throws -> Void
    ) async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ContainerSandbox.start(
            id: "test-\(uniqueTag())",
            limits: limits,
            grants: grants,
            agentPath: agentPath,
            engine: engine
        )
        let cgroups = sandbox.cgroupDirectories
        do {
            try await body(sandbox)
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
        let list = await listContainers(engine)
        #expect(list.succeeded && !list.output.contains(sandbox.containerID), "\(list.output)")
        for directory in cgroups { #expect(!FileManager.default.fileExists(atPath: directory), "\(directory)") }
        #expect(!FileManager.default.fileExists(atPath: sandbox.bundlePath))
    }

    static func run(
        _ sandbox: ContainerSandbox,
        _ argv: [String],
        _ configure: (inout Hangar_V1_AgentExec) -> Void = { _ in }
    ) async throws -> Collector {
        try await execute(sandbox, argv, configure, within: .seconds(20))
    }

    @Test("echo gives hi and exit 0; commands run as uid 1000 in /home/user, or as root; only loopback")
    func echo() async throws {
        try await Self.withSandbox { sandbox in
            let hello = try await Self.run(sandbox, ["echo", "hi"])
            #expect(text(hello.stdout) == "hi\n")
            #expect(hello.exited?.exitCode == 0)
            let identity = try await Self.run(sandbox, ["sh", "-c", "id -u; pwd; echo $HOME; id -un"])
            #expect(text(identity.stdout) == "1000\n/home/user\n/home/user\nuser\n", "\(text(identity.stderr))")
            let root = try await Self.run(sandbox, ["id", "-u"]) { $0.user = "root" }
            #expect(text(root.stdout) == "0\n")
            for user in ["user", "root"] {
                let status = try await Self.run(sandbox, ["grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"]) {
                    $0.user = user
                }
                #expect(text(status.stdout) == "CapEff:\t0000000000000000\nSeccomp:\t2\n", "as \(user)")
            }
            let links = try await Self.run(sandbox, ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"])
            #expect(text(links.stdout) == "lo\n")
            // The container's root is not the host's: its user namespace maps it elsewhere.
            let map = try await Self.run(sandbox, ["cat", "/proc/self/uid_map"]) { $0.user = "root" }
            let fields = text(map.stdout).split(whereSeparator: \.isWhitespace)
            #expect(fields.count == 3 && fields[0] == "0" && fields[1] != "0", "\(text(map.stdout))")
            // The node's filter keeps commands from making user namespaces of their own.
            let nested = try await Self.run(sandbox, ["unshare", "-U", "true"])
            #expect(nested.exited?.exitCode != 0)
        }
    }

    @Test("the writable layer is bounded by the disk limit, and the agent keeps serving")
    func diskLimit() async throws {
        var limits = SandboxLimits()
        limits.diskBytes = 4 << 20
        try await Self.withSandbox(limits: limits) { sandbox in
            for path in ["/home/user/big", "/tmp/big"] {
                let big = try await Self.run(sandbox, ["sh", "-c", "head -c 8388608 /dev/zero > \(path)"])
                #expect(big.exited?.exitCode != 0, "\(path)")
            }
            let readOnly = try await Self.run(sandbox, ["touch", "/usr/x"]) { $0.user = "root" }
            #expect(readOnly.exited?.exitCode != 0)
            let after = try await Self.run(sandbox, ["echo", "alive"])
            #expect(text(after.stdout) == "alive\n")
        }
    }

    @Test("a file written by one command is read by the next; the host does not see it")
    func stateIsKept() async throws {
        try await Self.withSandbox { sandbox in
            let name = "kept-\(uniqueTag()).txt"
            let write = try await Self.run(sandbox, ["sh", "-c", "echo state > \(name) && echo tmp > /tmp/\(name)"])
            #expect(write.exited?.exitCode == 0, "\(text(write.stderr))")
            let read = try await Self.run(sandbox, ["cat", "/home/user/\(name)", "/tmp/\(name)"])
            #expect(text(read.stdout) == "state\ntmp\n")
            #expect(try await sandbox.agent.readWholeFile("/home/user/\(name)") == Data("state\n".utf8))
            // In the container's mount namespace only: not below the bundle's mount points, not
            // at the same paths on the host; through the agent's /proc/<pid>/root it is there.
            let files = FileManager.default
            for path in [
                sandbox.bundlePath + "/rootfs/home/user/" + name, sandbox.bundlePath + "/rootfs/tmp/" + name,
                "/home/user/" + name, "/tmp/" + name,
            ] {
                #expect(!files.fileExists(atPath: path), "\(path)")
            }
            let pid = try #require(await sandbox.initPid())
            #expect(files.fileExists(atPath: "/proc/\(pid)/root/home/user/\(name)"))
        }
    }

    @Test("the cgroup has the limits, and a memory hog is killed while the sandbox lives on")
    func memoryLimit() async throws {
        var limits = SandboxLimits()
        limits.memoryBytes = 64 << 20
        limits.pids = 48
        try await Self.withSandbox(limits: limits) { sandbox in
            let values = sandbox.cgroupDirectories.flatMap { directory in
                ["memory.limit_in_bytes", "memory.max", "pids.max"].map { directory + "/" + $0 }
            }.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.map {
                $0.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            #expect(values.contains(String(64 << 20)))
            #expect(values.contains("48"))
            let hog = try await Self.run(sandbox, ["tail", "/dev/zero"])
            #expect(hog.exited?.signal == SIGKILL)
            let after = try await Self.run(sandbox, ["echo", "alive"])
            #expect(text(after.stdout) == "alive\n")
        }
    }

    @Test("a background daemon is gone with the sandbox: no process, container, cgroup or bundle left")
    func killLeavesNothing() async throws {
        let marker = "1000\(Int.random(in: 100...999))"
        var agentPid: Int32 = 0
        try await Self.withSandbox { sandbox in
            let started = try await Self.run(sandbox, ["sh", "-c", "sleep \(marker) > /dev/null 2>&1 &"])
            #expect(started.exited?.exitCode == 0)
            let listed = try await Self.run(sandbox, ["pgrep", "-f", "sleep \(marker)"])
            #expect(listed.exited?.exitCode == 0)
            agentPid = try #require(await sandbox.initPid())
            #expect(Self.hostProcesses(matching: "sleep \(marker)") == 1)
        }
        #expect(kill(agentPid, 0) != 0)
        #expect(Self.hostProcesses(matching: "sleep \(marker)") == 0)
    }

    @Test(
        "the host starts container and gvisor sandboxes for their runtimes; the data plane and code contexts reach them",
        arguments: ["container", "gvisor"]
    )
    func host(runtime: String) async throws {
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()))
        let gvisor: Set<String> = access("/usr/bin/runsc", X_OK) == 0 ? ["gvisor"] : []
        #expect(host.availableRuntimes == Set(["process", "container"]).union(gvisor))
        try #require(host.availableRuntimes.contains(runtime), "no \(runtime) here")
        var start = Hangar_V1_SandboxStart()
        start.sandboxID = "ctr-\(uniqueTag())"
        start.tenant = "acme"
        start.runtime = runtime
        try await host.start(start) { _ in Issue.record("the sandbox died") }
        let target = try #require(host.dataTarget(start.sandboxID, tenant: "acme"))
        var exec = Hangar_V1_AgentExec()
        exec.argv = ["cat", "/proc/1/cmdline"]
        var collector = Collector()
        for try await event in target.agent.exec(exec) { try collector.take(event) }
        #expect(text(collector.stdout).hasPrefix("/.hangar/agent\0"))
        // The code interpreter: a python context keeps its state between cells.
        let chart = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')"
        let cells = try await runCells(target, ["x = 41\nprint('set', x)", "x + 1", chart])
        #expect(printed(cells[0]) == "set 41\n", "\(cells[0])")
        #expect(mainValues(cells[1]) == ["42"], "\(cells[1])")
        let png = cells[2].contains { event in
            if case .result(let result) = event.kind { return result.data["image/png"] != nil }
            return false
        }
        #expect(png, "\(cells[2])")
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/node") {
            let script = try await runCells(
                target,
                ["const xs = [1, 2, 3]; xs.reduce((a, b) => a + b)"],
                language: "javascript"
            )
            #expect(mainValues(script[0]) == ["6"], "\(script)")
        }
        await host.kill(start.sandboxID, reason: "test over")
        #expect(host.sandboxIDs.isEmpty)
    }

    @Test("an agent that exits at once fails the start at once, leaving nothing")
    func failedStart() async throws {
        let id = "false-\(uniqueTag())"
        // Only this sandbox's container and bundle: other suites make and remove their own meanwhile.
        let containerID = OCIEngine.containerID(for: "sandbox-" + id)
        let began = ContinuousClock.now
        do {
            _ = try await ContainerSandbox.start(
                id: id,
                agentPath: "/bin/false",
                runtime: Self.runtime
            )
            Issue.record("a sandbox started without an agent")
        } catch {
            #expect(error.description.contains("the agent closed the channel"), "\(error)")
        }
        // Noticed when the container ends, not at the ready timeout.
        #expect(ContinuousClock.now - began < .seconds(10))
        let containers = await Self.runtime.engine.tool(["list", "-q"]).output
        #expect(!containers.split(separator: "\n").contains { $0 == containerID }, "\(containers)")
        let bundles = try FileManager.default.contentsOfDirectory(atPath: Self.runtime.directories.bundles)
        #expect(!bundles.contains(containerID), "\(bundles)")
    }

    /// Host processes whose command line starts with `pattern` (contains it, `anywhere`).
    static func hostProcesses(matching pattern: String, anywhere: Bool = false) -> Int {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.filter { entry in
            guard Int(entry) != nil, let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else {
                return false
            }
            let line = String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
            return anywhere ? line.contains(pattern) : line.hasPrefix(pattern)
        }.count
    }
}

/// `runc list --quiet` (`runsc list`) of `engine`'s containers. A listing fails when another test
/// deletes a container while it reads them ("stat …: no such file or directory"): tried again, at
/// most 5 times in all.
func listContainers(_ engine: OCIEngine) async -> (succeeded: Bool, output: String) {
    var listed = await engine.tool(["list", "--quiet"])
    for _ in 1..<5 where !listed.succeeded { listed = await engine.tool(["list", "--quiet"]) }
    return listed
}
