import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Re-adoption of `container` sandboxes (issue 16, restarts), at the level of one sandbox: the
/// agent listens on a socket the node made and passed to runc, a node that hangs up leaves the
/// container running, and the next one reconnects with ``ContainerSandbox/adopt(_:engine:logger:)``
/// and can kill it without leaving anything. Real runc and the real agent. (`NodeRestartTests`
/// does it with real `hangar node` processes killed with `kill -9`.)
@Suite(
    "Container sandboxes outlive their node: hang-up and re-adoption, real runc",
    .enabled(if: geteuid() == 0 && access("/usr/sbin/runc", X_OK) == 0),
    .serialized
)
struct ContainerReadoptionTests {
    @Test(
        "hung up on, the agent keeps the container; adopt() reconnects to its files and processes; its kill leaves nothing"
    )
    func hangUpAndAdopt() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let engine = ContainerRuntime().engine
        let original = try await ContainerSandbox.start(
            id: "creadopt-\(uniqueTag())",
            agentPath: agentPath,
            engine: engine
        )
        let saved = try #require(original.saved, "a loopback container sandbox can be re-adopted")
        #expect(await original.initPid() == saved.agentPID, "the saved agent is the container's init")
        let sleeper = try await execute(
            original,
            ["sh", "-c", "echo kept > note.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $!"],
            within: .seconds(20)
        )
        let sleeperPID = text(sleeper.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!sleeperPID.isEmpty)
        // The agent's socket is the node's: not in the container.
        let visible = try await execute(
            original,
            ["sh", "-c", "test -e '\(saved.socket)' && echo visible || echo absent"],
            { $0.user = "root" },
            within: .seconds(20)
        )
        #expect(text(visible.stdout) == "absent\n")

        original.agent.close()  // the node goes away
        // The container runs on without its node (its agent waits for the next one).
        #expect(SandboxLedger.startTime(of: saved.agentPID) == saved.agentStart)
        // A node process of its own has a uid pool of its own: this one's uid is free there.
        let resources = NodeResources(users: SandboxUsers.standard())
        let adopter = ContainerRuntime(resources: resources).engine
        let adopted = try await ContainerSandbox.adopt(saved, engine: adopter, logger: .init(label: "test")).get()
        let after = try await execute(
            adopted,
            ["sh", "-c", "cat note.txt; kill -0 \(sleeperPID) && echo alive"],
            within: .seconds(20)
        )
        #expect(text(after.stdout) == "kept\nalive\n", "\(text(after.stderr))")
        #expect(try await adopted.agent.readWholeFile("/home/user/note.txt") == Data("kept\n".utf8))
        if let user = saved.hostUser { #expect(!resources.users.claim(user), "the adopter holds its uid") }

        #expect(await adopted.kill() == nil)
        #expect(resources.users.inUse == 0, "its uid went back to the adopter's pool")
        if let user = saved.hostUser { engine.resources.users.release(user) }
        let list = await engine.tool(["list", "--quiet"])
        #expect(list.succeeded && !list.output.contains(saved.containerID), "\(list.output)")
        #expect(SandboxLedger.startTime(of: saved.agentPID) != saved.agentStart, "the container's init has ended")
        #expect(!FileManager.default.fileExists(atPath: saved.bundle))
        #expect(!FileManager.default.fileExists(atPath: saved.socket))
        for directory in saved.cgroup.distinct { #expect(!FileManager.default.fileExists(atPath: directory)) }
        // The first node's handle on it is done too (its runc run has returned).
        let again = await original.kill()
        #expect(again == nil, "\(again ?? "")")
    }

    @Test("a container whose init is gone, or whose agent cannot be reached, is not adopted")
    func notAdopted() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let engine = ContainerRuntime().engine
        let sandbox = try await ContainerSandbox.start(id: "cgone-\(uniqueTag())", agentPath: agentPath, engine: engine)
        var saved = try #require(sandbox.saved)
        let resources = NodeResources(users: SandboxUsers.standard())
        let adopter = ContainerRuntime(resources: resources).engine
        var wrongSocket = saved
        wrongSocket.socket += ".missing"
        switch await ContainerSandbox.adopt(wrongSocket, engine: adopter, logger: .init(label: "test")) {
        case .success: Issue.record("adopted through a socket that does not exist")
        case .failure(let error): #expect(error.description.contains("cannot be reached"), "\(error)")
        }
        #expect(await sandbox.kill() == nil)
        saved.agentStart += 1  // the init has ended; a pid reused later would have another start
        switch await ContainerSandbox.adopt(saved, engine: adopter, logger: .init(label: "test")) {
        case .success: Issue.record("adopted a container that has ended")
        case .failure(let error): #expect(error.description.contains("is gone"), "\(error)")
        }
        #expect(resources.users.inUse == 0, "a failed adoption claims no uid")
    }

    @Test("a gVisor sandbox is not saved: its agent talks over runsc's stdio, so it ends with its node")
    func gVisorNotSaved() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        guard access("/usr/bin/runsc", X_OK) == 0 else { return }
        let gvisor = try await ContainerSandbox.start(
            id: "cgv-\(uniqueTag())",
            agentPath: agentPath,
            engine: GVisorRuntime().engine
        )
        #expect(gvisor.saved == nil)
        #expect(await gvisor.kill() == nil)
    }
}
