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
        let sleeperPID = try await noteAndSleeper(in: original)
        // The agent's socket is the node's: not in the container.
        let visible = try await execute(
            original,
            ["sh", "-c", "test -e '\(saved.socket)' && echo visible || echo absent"],
            { $0.user = "root" },
            within: .seconds(20)
        )
        #expect(text(visible.stdout) == "absent\n")

        try await hangUpAndAdopt(saved, original: original, engine: engine, sleeperPID: sleeperPID) {
            ContainerRuntime(resources: $0).engine
        }
    }

    /// Writes `note.txt` ("kept") in `sandbox` and starts a sleeper of its own; the sleeper's pid.
    private func noteAndSleeper(in sandbox: ContainerSandbox) async throws -> String {
        let sleeper = try await execute(
            sandbox,
            ["sh", "-c", "echo kept > note.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $!"],
            within: .seconds(20)
        )
        let pid = text(sleeper.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!pid.isEmpty)
        return pid
    }

    /// The node goes away (`original` hangs up), and another node process (`adopter`, with
    /// resources of its own) adopts the sandbox from `saved`: it finds the file `note.txt` ("kept")
    /// and the process `sleeperPID` the first made, and its kill leaves nothing.
    private func hangUpAndAdopt(
        _ saved: ContainerSandbox.Saved,
        original: ContainerSandbox,
        engine: OCIEngine,
        sleeperPID: String,
        adopter: (NodeResources) -> OCIEngine
    ) async throws {
        original.agent.close()  // the node goes away
        // The container runs on without its node (its agent waits for the next one).
        #expect(SandboxLedger.startTime(of: saved.agentPID) == saved.agentStart)
        // A node process of its own has a uid pool of its own: this one's uid is free there.
        let resources = NodeResources(users: SandboxUsers.standard())
        let adopted = try await ContainerSandbox.adopt(saved, engine: adopter(resources), logger: .init(label: "test"))
            .get()
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
        let list = await listContainers(engine)
        #expect(list.succeeded && !list.output.contains(saved.containerID), "\(list.output)")
        #expect(SandboxLedger.startTime(of: saved.agentPID) != saved.agentStart, "the container's init has ended")
        #expect(!FileManager.default.fileExists(atPath: saved.bundle))
        #expect(!FileManager.default.fileExists(atPath: saved.socket))
        #expect(!FileManager.default.fileExists(atPath: (saved.socket as NSString).deletingLastPathComponent))
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

    @Test(
        "gVisor: the agent's socket is reachable from the host only and stays its own; hung up on, the sandbox runs on; adopt() reconnects; its kill leaves nothing"
    )
    func gVisorHangUpAndAdopt() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        guard access("/usr/bin/runsc", X_OK) == 0 else { return }
        let engine = GVisorRuntime().engine
        let original = try await ContainerSandbox.start(
            id: "cgv-\(uniqueTag())",
            agentPath: agentPath,
            engine: engine
        )
        let saved = try #require(original.saved, "a gVisor sandbox can be re-adopted")
        #expect(saved.gVisor == true)
        #expect(await original.initPid() == saved.agentPID, "the saved agent process is runsc's sandbox")
        #expect(FileManager.default.fileExists(atPath: saved.socket), "the agent made its socket on the host")
        let sleeperPID = try await noteAndSleeper(in: original)
        // Inside, the socket is there but no command may connect to it, remove it or put another
        // in its place, not even a "root" one.
        let socketInside = ContainerSandbox.channelInside + "/agent.sock"
        let probe = """
            import socket, os
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect('\(socketInside)'); print('connected')
            except OSError as e:
                print('refused', e.errno)
            for act in (
                lambda: os.unlink('\(socketInside)'),
                lambda: socket.socket(socket.AF_UNIX).bind('\(ContainerSandbox.channelInside)/other.sock'),
                lambda: os.chmod('\(ContainerSandbox.channelInside)', 0o777),
            ):
                try:
                    act(); print('changed')
                except OSError as e:
                    print('denied', e.errno)
            """
        for user in ["user", "root"] {
            let tried = try await execute(original, ["python3", "-c", probe], { $0.user = user }, within: .seconds(30))
            let lines = text(tried.stdout).split(separator: "\n").map(String.init)
            #expect(
                lines.count == 4 && lines[0].hasPrefix("refused")
                    && lines.dropFirst().allSatisfy { $0.hasPrefix("denied") },
                "as \(user): \(text(tried.stdout)) \(text(tried.stderr))"
            )
        }
        #expect(FileManager.default.fileExists(atPath: saved.socket))

        try await hangUpAndAdopt(saved, original: original, engine: engine, sleeperPID: sleeperPID) {
            GVisorRuntime(resources: $0).engine
        }
    }
}
