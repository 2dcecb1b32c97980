import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Re-adoption at the level of one sandbox (issue 16, restarts): the agent listens on a socket the
/// node made, a node that hangs up leaves the sandbox running, the next one reconnects with
/// ``ProcessSandbox/adopt(_:resources:logger:)``, and an agent no node comes back to ends the
/// sandbox. Real bubblewrap and the real agent. (`NodeRestartTests` does it with real `hangar node`
/// processes killed with `kill -9`.)
@Suite("Process sandboxes outlive their node: hang-up, re-adoption, orphan timeout", .enabled(if: geteuid() == 0))
struct SandboxReadoptionTests {
    @Test(
        "hung up on, the agent keeps the sandbox; adopt() reconnects to its files and processes, and its kill leaves nothing"
    )
    func hangUpAndAdopt() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let original = try await ProcessSandbox.start(id: "readopt-\(uniqueTag())", agentPath: agentPath)
        let saved = try #require(original.saved, "a loopback sandbox can be re-adopted")
        let sleeper = try await run(
            original,
            ["sh", "-c", "echo kept > note.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $!"]
        )
        let sleeperPID = text(sleeper.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!sleeperPID.isEmpty)
        // The agent's socket is the node's: not in the sandbox.
        let visible = try await run(original, ["sh", "-c", "test -e '\(saved.socket)' && echo visible || echo absent"])
        {
            $0.user = "root"
        }
        #expect(text(visible.stdout) == "absent\n")

        // A command that prints on and on across the hang-up: the new node never hears of it (its
        // request ids start again from 1, so an old id must not reach a new request).
        var ticker = Hangar_V1_AgentExec()
        ticker.argv = ["sh", "-c", "while true; do echo tick; sleep 0.01; done"]
        ticker.background = true
        var ticks = original.agent.exec(ticker).makeAsyncIterator()
        _ = try await ticks.next()

        original.agent.close()  // the node goes away
        // A node process of its own would have a pool of its own: this one's uid is free there.
        let resources = NodeResources(users: SandboxUsers.standard())
        let adopted = try await ProcessSandbox.adopt(saved, resources: resources, logger: .init(label: "test")).get()
        let after = try await run(adopted, ["sh", "-c", "cat note.txt; kill -0 \(sleeperPID) && echo alive"])
        #expect(text(after.stdout) == "kept\nalive\n", "\(text(after.stderr))")
        // The command started before the hang-up runs on and is listed.
        #expect(try await adopted.agent.listProcesses().map(\.argv) == [ticker.argv])
        // Request 4 of the new channel, as the ticker was of the old one's (a ping, two commands, a
        // ticker): it runs while the ticker prints, and hears only its own output.
        let fresh = try await run(adopted, ["sh", "-c", "sleep 0.3; echo fresh"])
        #expect(text(fresh.stdout) == "fresh\n" && fresh.exited?.exitCode == 0, "\(text(fresh.stdout))")
        #expect(try await adopted.agent.readWholeFile("/home/user/note.txt") == Data("kept\n".utf8))

        #expect(await adopted.kill() == nil)
        if let user = saved.hostUser { NodeResources.standard.users.release(user) }
        #expect(!FileManager.default.fileExists(atPath: saved.scratch))
        #expect(!FileManager.default.fileExists(atPath: saved.socket))
        for directory in saved.cgroup.distinct { #expect(!FileManager.default.fileExists(atPath: directory)) }
        #expect(await eventually(within: .seconds(5)) { original.saved == nil }, "bubblewrap has ended")
    }

    @Test("an agent no node comes back to within its orphan timeout ends the sandbox")
    func orphanTimeout() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ProcessSandbox.start(
            id: "orphan-\(uniqueTag())",
            agentPath: agentPath,
            orphanTimeout: .milliseconds(500)
        )
        _ = try await run(sandbox, ["true"])
        #expect(sandbox.saved != nil)
        sandbox.agent.close()
        #expect(await eventually(within: .seconds(15)) { sandbox.saved == nil }, "the sandbox ended itself")
        #expect(await sandbox.kill() == nil)
        #expect(!FileManager.default.fileExists(atPath: sandbox.scratchPath))
    }

    @Test("a sandbox whose bubblewrap is gone, or whose agent cannot be reached, is not adopted")
    func notAdopted() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ProcessSandbox.start(id: "gone-\(uniqueTag())", agentPath: agentPath)
        var saved = try #require(sandbox.saved)
        let resources = NodeResources(users: SandboxUsers.standard())
        var wrongSocket = saved
        wrongSocket.socket += ".missing"
        switch await ProcessSandbox.adopt(wrongSocket, resources: resources, logger: .init(label: "test")) {
        case .success: Issue.record("adopted through a socket that does not exist")
        case .failure(let error): #expect(error.description.contains("cannot be reached"), "\(error)")
        }
        #expect(await sandbox.kill() == nil)
        saved.leaderStart += 1  // bubblewrap has ended; a pid reused later would have another start
        switch await ProcessSandbox.adopt(saved, resources: resources, logger: .init(label: "test")) {
        case .success: Issue.record("adopted a sandbox that has ended")
        case .failure(let error): #expect(error.description.contains("is gone"), "\(error)")
        }
        #expect(resources.users.inUse == 0, "a failed adoption claims no uid")
    }
}
