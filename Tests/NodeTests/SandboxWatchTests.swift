import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Synchronization
import Testing

@testable import HangarNode

/// Directory watches of the in-sandbox agent (inotify inside a real bubblewrap sandbox).
@Suite("Sandbox agent: directory watches, real bubblewrap", .enabled(if: geteuid() == 0))
struct SandboxWatchTests {
    /// Collects a watch's batches until `done` holds for what came, or fails after 10 s.
    final class Changes: Sendable {
        let batches = Mutex<[Hangar_V1_AgentWatchEvents]>([])
        let ended = Mutex<Bool>(false)
        let failure = Mutex<String?>(nil)

        var all: [Hangar_V1_AgentWatchEvent] { batches.withLock { $0.flatMap(\.events) } }
        var lines: [String] {
            all.map { "\($0.op) \($0.path)\($0.directory ? "/" : "")" }
        }

        func consume(_ events: AsyncThrowingStream<Hangar_V1_AgentEvent, any Error>) -> Task<Void, Never> {
            Task {
                do {
                    for try await event in events {
                        guard case .watchEvents(let batch) = event.kind else { continue }
                        batches.withLock { $0.append(batch) }
                        if batch.ended { ended.withLock { $0 = true } }
                    }
                } catch {
                    failure.withLock { $0 = "\(error)" }
                }
            }
        }

        func wait(_ what: String, until done: @escaping () -> Bool) async throws {
            let deadline = ContinuousClock.now + .seconds(10)
            while !done() {
                guard ContinuousClock.now < deadline else {
                    throw DeadlineFailure(
                        "\(what) within 10 s; saw \(lines), failure \(failure.withLock { $0 } ?? "-")"
                    )
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    struct DeadlineFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    @Test(
        "a recursive watch sees creates, writes, removes, renames and chmods below it, new directories included; unwatch ends it; the directory's removal ends another"
    )
    func watch() async throws {
        try await SandboxAgentTests.withSandbox { sandbox in
            let agent = sandbox.agent
            try await agent.makeDirectory("/home/user/w/sub", parents: true)
            let changes = Changes()
            let (id, events) = agent.watch("/home/user/w", recursive: true)
            let reader = changes.consume(events)
            try await changes.wait("the watch is set") { changes.batches.withLock { !$0.isEmpty } }
            #expect(changes.all.isEmpty)
            let script = """
                echo a > /home/user/w/a.txt
                echo b > /home/user/w/sub/b.txt
                mkdir /home/user/w/new
                echo c > /home/user/w/new/c.txt
                mv /home/user/w/a.txt /home/user/w/sub/a2.txt
                chmod 600 /home/user/w/sub/b.txt
                rm /home/user/w/sub/b.txt
                """
            let ran = try await run(sandbox, ["sh", "-c", script])
            #expect(ran.exited?.exitCode == 0, "\(text(ran.stderr))")
            // A file made in a new directory at once may come before the directory's watch: the
            // agent reports what it finds in a new directory as created.
            let expected = [
                "create a.txt", "write a.txt", "create sub/b.txt", "write sub/b.txt", "create new/",
                "create new/c.txt", "rename a.txt", "create sub/a2.txt", "chmod sub/b.txt", "remove sub/b.txt",
            ]
            try await changes.wait("every change") { expected.allSatisfy(changes.lines.contains) }
            // The agent's own file operations are changes too.
            try await agent.writeFile("/home/user/w/new/by-agent", data: Data("x".utf8))
            try await changes.wait("the agent's write") { changes.lines.contains("create new/by-agent") }
            try await agent.unwatch(id)
            try await changes.wait("the end") { changes.ended.withLock { $0 } }
            #expect(changes.batches.withLock { $0.last?.message } == "unwatched")
            await reader.value
            #expect(changes.failure.withLock { $0 } == nil)
            await #expect(throws: SandboxAgentError.self) { try await agent.unwatch(id) }

            // A watch whose directory goes away ends with it.
            let second = Changes()
            let (_, secondEvents) = agent.watch("/home/user/w/sub", recursive: false)
            let secondReader = second.consume(secondEvents)
            try await second.wait("the second watch is set") { second.batches.withLock { !$0.isEmpty } }
            try await agent.remove("/home/user/w", recursive: true)
            try await second.wait("the end at the removal") { second.ended.withLock { $0 } }
            #expect(second.batches.withLock { $0.last?.message } == "the watched directory was removed or moved")
            await secondReader.value
        }
    }

    @Test("bad watches are refused: not a directory, missing, '..', more than 8 at once")
    func refusals() async throws {
        try await SandboxAgentTests.withSandbox { sandbox in
            let agent = sandbox.agent
            try await agent.writeFile("/home/user/file", data: Data())
            func refusal(_ path: String) async -> Hangar_V1_AgentError.Code? {
                do {
                    for try await _ in agent.watch(path, recursive: false).events { return nil }
                } catch SandboxAgentError.agent(let code, _) {
                    return code
                } catch {}
                return nil
            }
            #expect(await refusal("/home/user/file") == .notADirectory)
            #expect(await refusal("/home/user/none") == .notFound)
            #expect(await refusal("/home/user/../etc") == .invalid)
            var ids: [UInt64] = []
            var readers: [Task<Void, Never>] = []
            for _ in 0..<8 {
                let changes = Changes()
                let (id, events) = agent.watch("/tmp", recursive: false)
                readers.append(changes.consume(events))
                try await changes.wait("watch \(ids.count + 1) is set") { changes.batches.withLock { !$0.isEmpty } }
                ids.append(id)
            }
            #expect(await refusal("/tmp") == .tooLarge)
            for id in ids { try await agent.unwatch(id) }
            for reader in readers { await reader.value }
            // Slots are free again.
            let again = Changes()
            let (id, events) = agent.watch("/tmp", recursive: false)
            let reader = again.consume(events)
            try await again.wait("a watch after the others ended") { again.batches.withLock { !$0.isEmpty } }
            try await agent.unwatch(id)
            await reader.value
        }
    }
}
