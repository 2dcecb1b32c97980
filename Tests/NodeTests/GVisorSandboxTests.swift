import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Real gVisor sandboxes (runsc on ptrace) with the real `hangar-sandbox-agent`: runtime `gvisor`
/// of stateful sandboxes.
@Suite(
    "Stateful gVisor sandbox, real runsc",
    .enabled(if: geteuid() == 0 && access("/usr/bin/runsc", X_OK) == 0),
    .serialized
)
struct GVisorSandboxTests {
    static let runtime = GVisorRuntime()

    /// A gVisor sandbox for one test, killed at the end and checked to have left nothing (see
    /// ``ContainerSandboxTests/withSandbox(limits:grants:engine:_:)``).
    static func withSandbox(
        limits: SandboxLimits = SandboxLimits(),
        grants: Hangar_V1_Grants = Hangar_V1_Grants(),
        _ body: (ContainerSandbox) async throws -> Void
    ) async throws {
        try await ContainerSandboxTests.withSandbox(limits: limits, grants: grants, engine: runtime.engine, body)
    }

    @Test("commands run on gVisor's kernel, as uid 1000 in /home/user or as root, without capabilities")
    func commands() async throws {
        try await Self.withSandbox { sandbox in
            let hello = try await ContainerSandboxTests.run(sandbox, ["echo", "hi"])
            #expect(text(hello.stdout) == "hi\n", "\(text(hello.stderr))")
            #expect(hello.exited?.exitCode == 0)
            // gVisor's kernel, not the host's: its own release and its own boot messages.
            var host = utsname()
            uname(&host)
            let hostRelease = withUnsafeBytes(of: host.release) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            let release = try await ContainerSandboxTests.run(sandbox, ["uname", "-r"])
            #expect(
                !text(release.stdout).isEmpty && text(release.stdout) != hostRelease + "\n",
                "\(text(release.stdout))"
            )
            let dmesg = try await ContainerSandboxTests.run(sandbox, ["cat", "/proc/version"])
            #expect(text(dmesg.stdout) != (try? String(contentsOfFile: "/proc/version", encoding: .utf8)))
            let identity = try await ContainerSandboxTests.run(sandbox, ["sh", "-c", "id -u; pwd; echo $HOME; id -un"])
            #expect(text(identity.stdout) == "1000\n/home/user\n/home/user\nuser\n", "\(text(identity.stderr))")
            let root = try await ContainerSandboxTests.run(sandbox, ["id", "-u"]) { $0.user = "root" }
            #expect(text(root.stdout) == "0\n", "\(text(root.stderr))")
            for user in ["user", "root"] {
                let status = try await ContainerSandboxTests.run(sandbox, ["grep", "^CapEff:", "/proc/self/status"]) {
                    $0.user = user
                }
                #expect(text(status.stdout) == "CapEff:\t0000000000000000\n", "as \(user): \(text(status.stderr))")
            }
            // The node's filter is in every command: ptrace is refused (EPERM) for both users.
            let traced = try await ContainerSandboxTests.run(
                sandbox,
                ["python3", "-c", "import ctypes; print(ctypes.CDLL(None).ptrace(0, 0, 0, 0), ctypes.get_errno())"]
            )
            #expect(text(traced.stdout).hasPrefix("-1"), "\(text(traced.stdout)) \(text(traced.stderr))")
            let links = try await ContainerSandboxTests.run(
                sandbox,
                ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"]
            )
            #expect(text(links.stdout) == "lo\n", "\(text(links.stdout))")
        }
    }

    @Test("files written through the agent and by commands are kept between commands; the host does not see them")
    func files() async throws {
        try await Self.withSandbox { sandbox in
            let name = "kept-\(uniqueTag()).txt"
            let payload = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
            try await sandbox.agent.writeFile("/home/user/\(name)", data: payload)
            #expect(try await sandbox.agent.readWholeFile("/home/user/\(name)") == payload)
            let size = try await ContainerSandboxTests.run(sandbox, ["wc", "-c", "/home/user/\(name)"])
            #expect(text(size.stdout) == "300000 /home/user/\(name)\n", "\(text(size.stderr))")
            let write = try await ContainerSandboxTests.run(sandbox, ["sh", "-c", "echo state > /tmp/\(name)"])
            #expect(write.exited?.exitCode == 0, "\(text(write.stderr))")
            #expect(try await sandbox.agent.readWholeFile("/tmp/\(name)") == Data("state\n".utf8))
            for path in [
                sandbox.bundlePath + "/rootfs/home/user/" + name, sandbox.bundlePath + "/rootfs/tmp/" + name,
                "/home/user/" + name, "/tmp/" + name,
            ] {
                #expect(!FileManager.default.fileExists(atPath: path), "\(path)")
            }
            let readOnly = try await ContainerSandboxTests.run(sandbox, ["touch", "/usr/x"]) { $0.user = "root" }
            #expect(readOnly.exited?.exitCode != 0)
        }
    }

    @Test("the writable layer is bounded by the disk limit, and the agent keeps serving")
    func diskLimit() async throws {
        var limits = SandboxLimits()
        limits.diskBytes = 4 << 20
        try await Self.withSandbox(limits: limits) { sandbox in
            for path in ["/home/user/big", "/tmp/big"] {
                let big = try await ContainerSandboxTests.run(
                    sandbox,
                    ["sh", "-c", "head -c 8388608 /dev/zero > \(path)"]
                )
                #expect(big.exited?.exitCode != 0, "\(path)")
            }
            let after = try await ContainerSandboxTests.run(sandbox, ["echo", "alive"])
            #expect(text(after.stdout) == "alive\n")
        }
    }

    @Test("the cgroup has the limits (pids with gVisor's allowance); a memory hog ends the whole sandbox")
    func memoryLimit() async throws {
        var limits = SandboxLimits()
        limits.memoryBytes = 128 << 20
        limits.pids = 48
        try await Self.withSandbox(limits: limits) { sandbox in
            let values = sandbox.cgroupDirectories.flatMap { directory in
                ["memory.limit_in_bytes", "memory.max", "pids.max"].map { directory + "/" + $0 }
            }.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.map {
                $0.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            #expect(values.contains(String(128 << 20)), "\(values)")
            #expect(values.contains(String(48 + OCIEngine.gVisorPidsOverhead)), "\(values)")
            // The cgroup holds gVisor's kernel too, so the host's OOM killer takes the sandbox as a
            // whole (as for gvisor jobs): the command does not outgrow the limit, and the agent is
            // gone with the rest (the node's watcher then reports the sandbox dead).
            do {
                let hog = try await ContainerSandboxTests.run(sandbox, ["tail", "/dev/zero"])
                Issue.record("the memory hog ended on its own: \(String(describing: hog.exited))")
            } catch let error as SandboxAgentError {
                guard case .agentGone = error else {
                    Issue.record("\(error)")
                    return
                }
            }
            await #expect(throws: SandboxAgentError.self) { try await sandbox.agent.ping() }
        }
    }

    @Test("host path grants: read-only, read-write, denied and ungranted paths")
    func grants() async throws {
        let root = try SandboxGrantMountsTests.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try await Self.withSandbox(grants: SandboxGrantMountsTests.grants(root)) { sandbox in
            let result = try await ContainerSandboxTests.run(
                sandbox,
                ["sh", "-c", SandboxGrantMountsTests.script(root)]
            )
            #expect(result.exited?.exitCode == 0, "\(text(result.stderr))")
            SandboxGrantMountsTests.check(text(result.stdout), root: root)
        }
    }

    @Test("a background daemon is gone with the sandbox, and so are gVisor's own processes")
    func killLeavesNothing() async throws {
        let marker = "2000\(Int.random(in: 100...999))"
        var containerID = ""
        try await Self.withSandbox { sandbox in
            containerID = sandbox.containerID
            let started = try await ContainerSandboxTests.run(
                sandbox,
                ["sh", "-c", "sleep \(marker) > /dev/null 2>&1 &"]
            )
            #expect(started.exited?.exitCode == 0)
            let listed = try await ContainerSandboxTests.run(sandbox, ["pgrep", "-f", "sleep \(marker)"])
            #expect(listed.exited?.exitCode == 0, "\(text(listed.stdout)) \(text(listed.stderr))")
            // Inside gVisor the daemon is a task of the sentry, which is a host process.
            #expect(ContainerSandboxTests.hostProcesses(matching: containerID, anywhere: true) > 0)
        }
        #expect(ContainerSandboxTests.hostProcesses(matching: containerID, anywhere: true) == 0)
    }

    @Test("NETWORK_ALLOWLIST is refused, naming the runtime, and leaves nothing")
    func allowlistRefused() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        var network = Hangar_V1_NetworkPolicy()
        network.mode = .networkAllowlist
        network.allow = ["192.0.2.0/24"]
        do {
            _ = try await ContainerSandbox.start(
                id: "gv-\(uniqueTag())",
                network: network,
                agentPath: agentPath,
                engine: Self.runtime.engine
            )
            Issue.record("a gvisor sandbox started with an allowlist")
        } catch {
            #expect(error.description.contains("NETWORK_ALLOWLIST is not enforced in gvisor sandboxes"), "\(error)")
        }
    }
}
