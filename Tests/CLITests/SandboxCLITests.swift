import Foundation
import Testing

/// `hangar sandbox` against a real `hangar dev` cluster: its nodes hold process sandboxes (the
/// in-sandbox agent next to the `hangar` binary), so every verb goes through NATS, the scheduler,
/// the node and bubblewrap.
@Suite("hangar sandbox from the CLI")
struct SandboxCLITests {
    @Test("create, exec (output, exit code, state kept, timeout), ls, kill, events; another tenant sees nothing")
    func sandboxLifecycle() async throws {
        try await withCLICluster { cluster in
            let created = try await cluster.hangar(["sandbox", "create", "--timeout", "120", "--metadata", "task=cli"])
            #expect(created.status == 0, "\(created.stderr)\n\(cluster.log)")
            let id = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(id.hasPrefix("s"), "\(created.stdout)")

            let first = try await cluster.hangar([
                "sandbox", "exec", id, "--", "sh", "-c", "echo hello > note.txt; echo to-stderr >&2; exit 3",
            ])
            #expect(first.status == 3, "the command's exit code: \(first.stderr)")
            #expect(first.stderr.contains("to-stderr"))
            // The file written by the first command is there for the next one.
            let second = try await cluster.hangar(["sandbox", "exec", id, "--", "sh", "-c", "cat note.txt; id -un"])
            #expect(second.status == 0, "\(second.stderr)")
            #expect(second.stdout == "hello\nuser\n")
            let slow = try await cluster.hangar(["sandbox", "exec", "--timeout", "1", id, "--", "sleep", "30"])
            #expect(slow.status == 137, "killed by SIGKILL at its timeout: \(slow.status) \(slow.stderr)")
            #expect(slow.stderr.contains("killed at its timeout"))

            let listed = try await cluster.hangar(["sandbox", "ls", "--metadata", "task=cli", "-o", "json"])
            #expect(listed.status == 0, "\(listed.stderr)")
            let sandboxes = try #require(try listed.json()["sandboxes"] as? [[String: Any]])
            #expect(sandboxes.map { $0["id"] as? String } == [id])
            #expect(sandboxes.first?["state"] as? String == "SANDBOX_RUNNING")

            // Another tenant cannot see it or run in it.
            let foreign = try await cluster.hangar(["sandbox", "info", "--tenant", "acme", id])
            #expect(foreign.status == 1)
            #expect(foreign.stderr.contains("no sandbox"), "\(foreign.stderr)")
            let foreignExec = try await cluster.hangar(["sandbox", "exec", "--tenant", "acme", id, "--", "true"])
            #expect(foreignExec.status == 1)

            let killed = try await cluster.hangar(["sandbox", "kill", id])
            #expect(killed.status == 0, "\(killed.stderr)")
            #expect(killed.stdout.contains("KILLED"), "\(killed.stdout)")
            let late = try await cluster.hangar(["sandbox", "exec", id, "--", "true"])
            #expect(late.status == 1)
            #expect(late.stderr.contains("not running"), "\(late.stderr)")

            let events = try await cluster.hangar(["sandbox", "events", id])
            #expect(events.status == 0, "\(events.stderr)")
            for kind in ["created", "started", "ended"] {
                #expect(events.stdout.contains(kind), "no \(kind) event: \(events.stdout)")
            }
            #expect(events.stdout.contains("killed by its tenant"), "\(events.stdout)")
        }
    }
}
