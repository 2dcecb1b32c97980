import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

// Stateful sandboxes in real qemu microVMs (TCG here: a boot takes seconds) with the real guest
// agent and `hangar-sandbox-agent` that `swift build` puts next to the test binary.

private let runtime = MicroVMRuntime()

extension MicroVMSuites {
    @Suite("Stateful microVM sandbox, real qemu", .serialized, .enabled(if: geteuid() == 0))
    struct MicroVMSandboxTests {
        /// A sandbox for one test, killed at the end and checked to have left no qemu.
        static func withSandbox(
            limits: SandboxLimits = SandboxLimits(),
            _ body: (MicroVMSandbox) async throws -> Void
        ) async throws {
            let sandbox = try await MicroVMSandbox.start(id: "vm-\(uniqueTag())", limits: limits, runtime: runtime)
            do {
                try await body(sandbox)
            } catch {
                await sandbox.kill()
                throw error
            }
            #expect(await sandbox.kill() == nil)
            #expect(sandbox.hasEnded)
            #expect(qemuChildProcesses().isEmpty)
        }

        static func run(
            _ sandbox: MicroVMSandbox,
            _ argv: [String],
            _ configure: (inout Hangar_V1_AgentExec) -> Void = { _ in }
        ) async throws -> Collector {
            try await execute(sandbox, argv, configure, within: .seconds(60))
        }

        @Test(
            "commands run on the guest's kernel as uid 1000 in /home/user or as root; files and state last; only loopback"
        )
        func commands() async throws {
            try await Self.withSandbox { sandbox in
                let hello = try await Self.run(sandbox, ["echo", "hi"])
                #expect(text(hello.stdout) == "hi\n" && hello.exited?.exitCode == 0, "\(text(hello.stderr))")
                let identity = try await Self.run(sandbox, ["sh", "-c", "id -u; pwd; echo $HOME"])
                #expect(text(identity.stdout) == "1000\n/home/user\n/home/user\n", "\(text(identity.stderr))")
                let root = try await Self.run(sandbox, ["id", "-u"]) { $0.user = "root" }
                #expect(text(root.stdout) == "0\n", "\(text(root.stderr))")
                for user in ["user", "root"] {
                    let status = try await Self.run(sandbox, ["grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status"])
                    {
                        $0.user = user
                    }
                    #expect(text(status.stdout) == "CapEff:\t0000000000000000\nSeccomp:\t2\n", "as \(user)")
                }
                // The guest's own kernel: pid 1 is the sandbox agent, and the host's processes are not there.
                let first = try await Self.run(sandbox, ["cat", "/proc/1/cmdline"])
                #expect(text(first.stdout).hasPrefix("hangar-sandbox-agent\0"), "\(text(first.stdout))")
                let links = try await Self.run(
                    sandbox,
                    ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"]
                )
                #expect(text(links.stdout) == "lo\n", "\(text(links.stdout))")
                // Files through the agent and by commands, kept between commands.
                let payload = Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 13) })
                try await sandbox.agent.writeFile("/home/user/data.bin", data: payload)
                #expect(try await sandbox.agent.readWholeFile("/home/user/data.bin") == payload)
                let size = try await Self.run(sandbox, ["wc", "-c", "data.bin"])
                #expect(text(size.stdout).hasPrefix("200000"), "\(text(size.stdout)) \(text(size.stderr))")
                let write = try await Self.run(
                    sandbox,
                    ["sh", "-c", "echo kept > note && echo tmp > /tmp/note && ls -ln note"]
                )
                #expect(write.exited?.exitCode == 0, "\(text(write.stderr))")
                #expect(
                    text(write.stdout).split(separator: " ", omittingEmptySubsequences: true).dropFirst(2).first
                        == "1000"
                )
                #expect(try await sandbox.agent.readWholeFile("/home/user/note") == Data("kept\n".utf8))
                #expect(try await sandbox.agent.readWholeFile("/tmp/note") == Data("tmp\n".utf8))
                // The guest's python3 (standard library only) runs commands too.
                let python = try await Self.run(sandbox, ["python3", "-c", "import json; print(json.dumps([6 * 7]))"])
                #expect(text(python.stdout) == "[42]\n", "\(text(python.stderr))")
            }
        }

        @Test("the writable places are bounded by the disk limit, and the agent keeps serving")
        func diskLimit() async throws {
            var limits = SandboxLimits()
            limits.diskBytes = 4 << 20
            try await Self.withSandbox(limits: limits) { sandbox in
                let big = try await Self.run(sandbox, ["sh", "-c", "head -c 8388608 /dev/zero > /home/user/big"])
                #expect(big.exited?.exitCode != 0)
                let after = try await Self.run(sandbox, ["echo", "alive"])
                #expect(text(after.stdout) == "alive\n")
            }
        }

        @Test(
            "hung up on while a command streams, the VM keeps the sandbox; adopt() resynchronises and finds its files and processes; its kill leaves nothing"
        )
        func hangUpAndAdopt() async throws {
            let original = try await MicroVMSandbox.start(id: "vmadopt-\(uniqueTag())", runtime: runtime)
            do {
                try await hangUpAndAdopt(original)
            } catch {
                await original.kill()  // so that the next VM tests do not find its qemu
                throw error
            }
        }

        private func hangUpAndAdopt(_ original: MicroVMSandbox) async throws {
            let saved = try #require(original.saved, "a microvm sandbox without grants can be re-adopted")
            #expect(FileManager.default.fileExists(atPath: saved.socket))
            let sleeper = try await Self.run(
                original,
                ["sh", "-c", "echo kept > note.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $!"]
            )
            let sleeperPID = text(sleeper.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!sleeperPID.isEmpty)
            // A command that streams output without end: the node goes while the agent writes frames,
            // so the next node may find one cut short in the port.
            var streaming = Hangar_V1_AgentExec()
            streaming.argv = ["sh", "-c", "while :; do echo 0123456789abcdefghijklmnopqrstuvwxyz; done"]
            var output = original.agent.exec(streaming).makeAsyncIterator()
            var chunks = 0
            while chunks < 3, let event = try await output.next() {
                if case .output = event.kind { chunks += 1 }
            }
            original.agent.close()  // the node goes away
            #expect(SandboxLedger.startTime(of: saved.qemuPID) == saved.qemuStart, "qemu runs on")

            // A node process of its own has a uid pool of its own: qemu's uid is free there.
            let resources = NodeResources(users: SandboxUsers.standard())
            let adopted = try await MicroVMSandbox.adopt(saved, resources: resources, logger: .init(label: "test"))
                .get()
            let after = try await Self.run(adopted, ["sh", "-c", "cat note.txt; kill -0 \(sleeperPID) && echo alive"])
            #expect(text(after.stdout) == "kept\nalive\n", "\(text(after.stderr))")
            #expect(try await adopted.agent.readWholeFile("/home/user/note.txt") == Data("kept\n".utf8))
            let listed = try await adopted.agent.listProcesses().map { $0.argv.joined(separator: " ") }
            #expect(listed.contains { $0.hasPrefix("sh -c while") }, "the streaming command runs on: \(listed)")
            if let user = saved.hostUser { #expect(!resources.users.claim(user), "the adopter holds qemu's uid") }

            #expect(await adopted.kill() == nil)
            #expect(SandboxLedger.startTime(of: saved.qemuPID) != saved.qemuStart, "qemu has ended")
            #expect(resources.users.inUse == 0, "qemu's uid went back to the adopter's pool")
            #expect(!FileManager.default.fileExists(atPath: (saved.socket as NSString).deletingLastPathComponent))
            let again = await original.kill()
            #expect(again == nil, "\(again ?? "")")
            #expect(qemuChildProcesses().isEmpty)
        }

        @Test("a microvm sandbox whose qemu is gone, or whose agent cannot be reached, is not adopted")
        func notAdopted() async throws {
            let sandbox = try await MicroVMSandbox.start(id: "vmgone-\(uniqueTag())", runtime: runtime)
            var saved = try #require(sandbox.saved)
            let resources = NodeResources(users: SandboxUsers.standard())
            var wrongSocket = saved
            wrongSocket.socket += ".missing"
            switch await MicroVMSandbox.adopt(wrongSocket, resources: resources, logger: .init(label: "test")) {
            case .success: Issue.record("adopted through a socket that does not exist")
            case .failure(let error): #expect(error.description.contains("cannot be reached"), "\(error)")
            }
            #expect(await sandbox.kill() == nil)
            switch await MicroVMSandbox.adopt(saved, resources: resources, logger: .init(label: "test")) {
            case .success: Issue.record("adopted a VM that has ended")
            case .failure(let error): #expect(error.description.contains("is gone"), "\(error)")
            }
            saved.qemuStart += 1  // a pid reused later would have another start
            switch await MicroVMSandbox.adopt(saved, resources: resources, logger: .init(label: "test")) {
            case .success: Issue.record("adopted a process that is not the VM's qemu")
            case .failure(let error): #expect(error.description.contains("is gone"), "\(error)")
            }
            #expect(resources.users.inUse == 0, "a failed adoption claims no uid")
        }

        @Test("NETWORK_ALLOWLIST is refused, naming the runtime, before a VM boots")
        func refusals() async throws {
            var network = Hangar_V1_NetworkPolicy()
            network.mode = .networkAllowlist
            network.allow = ["192.0.2.0/24"]
            do {
                _ = try await MicroVMSandbox.start(id: "vm-\(uniqueTag())", network: network, runtime: runtime)
                Issue.record("a microvm sandbox started with an allowlist")
            } catch {
                #expect(
                    error.description.contains("NETWORK_ALLOWLIST is not enforced in microvm sandboxes"),
                    "\(error)"
                )
            }
            #expect(qemuChildProcesses().isEmpty)
        }

        @Test(
            "the host starts microvm sandboxes for runtime microvm, the second from its warm pool; a python code context keeps its state; stop ends the pool's VM"
        )
        func host() async throws {
            let host = ProcessSandboxHost(
                agentPath: try #require(ProcessSandbox.locateAgent()),
                microvm: runtime,
                warmSandboxes: 1
            )
            #expect(host.availableRuntimes.contains("microvm"))
            func start() async throws -> String {
                var start = Hangar_V1_SandboxStart()
                start.sandboxID = "vm-\(uniqueTag())"
                start.tenant = "acme"
                start.runtime = "microvm"
                try await host.start(start) { _ in Issue.record("the sandbox died") }
                return start.sandboxID
            }
            let cold = try await start()  // teaches the microvm pool, which then boots one
            #expect(host.warmCounts("microvm")?.missed == 1)
            let deadline = ContinuousClock.now + .seconds(120)
            var ready: (any StatefulSandbox)?
            while ready == nil && ContinuousClock.now < deadline {
                ready = host.warmPools["microvm"]?.readySandboxes.first
                if ready == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            let warm = try #require(ready, "no warm microvm sandbox within 120 s")
            #expect(warm is MicroVMSandbox)
            let served = try await start()
            #expect(host.warmCounts("microvm")?.served == 1)
            let target = try #require(host.dataTarget(served, tenant: "acme"))
            #expect(target.agent === warm.agent)
            let cells = try await runCells(target, ["x = 41\nprint('set', x)", "x + 1"], within: .seconds(120))
            #expect(printed(cells[0]) == "set 41\n", "\(cells[0])")
            #expect(mainValues(cells[1]) == ["42"], "\(cells[1])")
            for id in [cold, served] { await host.kill(id, reason: "test over") }
            #expect(host.sandboxIDs.isEmpty)
            await host.stop()  // and the VM the pool booted after serving
            #expect(qemuChildProcesses().isEmpty)
        }
    }
}
