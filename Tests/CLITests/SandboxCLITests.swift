import Foundation
import HangarTestSupport
import Synchronization
import Testing

/// `hangar sandbox` against a real `hangar dev` cluster: its nodes hold process sandboxes (the
/// in-sandbox agent next to the `hangar` binary), so every verb goes through NATS, the scheduler,
/// the node and bubblewrap.
@Suite("hangar sandbox from the CLI")
struct SandboxCLITests {
    @Test(
        "create, exec (output, exit code, state kept, timeout), files in and out, ls, kill, events; another tenant sees nothing"
    )
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

            // Files: 2.5 MiB in (one atomic write, then appends), listed, out again byte for byte, removed.
            let local = try makeTemporaryDirectory("hangar-cli-files")
            defer { try? FileManager.default.removeItem(at: local) }
            let content = Data((0..<(5 << 19)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) })
            let source = local.appendingPathComponent("in.bin")
            let copy = local.appendingPathComponent("out.bin")
            try content.write(to: source)
            let put = try await cluster.hangar(["sandbox", "files", "put", id, source.path, "data.bin"])
            #expect(put.status == 0, "\(put.stderr)")
            let ls = try await cluster.hangar(["sandbox", "files", "ls", id])
            #expect(ls.status == 0, "\(ls.stderr)")
            #expect(ls.stdout.contains("data.bin") && ls.stdout.contains(String(content.count)), "\(ls.stdout)")
            let get = try await cluster.hangar(["sandbox", "files", "get", id, "data.bin", "--to", copy.path])
            #expect(get.status == 0, "\(get.stderr)")
            #expect(try Data(contentsOf: copy) == content, "the file came back changed")
            let seen = try await cluster.hangar(["sandbox", "exec", id, "--", "sh", "-c", "wc -c < data.bin"])
            #expect(seen.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == String(content.count))
            let removed = try await cluster.hangar(["sandbox", "files", "rm", id, "data.bin"])
            #expect(removed.status == 0, "\(removed.stderr)")
            let gone = try await cluster.hangar(["sandbox", "files", "get", id, "data.bin"])
            #expect(gone.status == 1 && gone.stderr.contains("data.bin"), "\(gone.stderr)")

            // A watch prints the changes in a directory as they happen, and ends (exit 0) when the
            // directory is removed.
            #expect(try await cluster.hangar(["sandbox", "exec", id, "--", "mkdir", "watched"]).status == 0)
            let watcher = try hangarProcess(
                ["sandbox", "files", "watch", "--recursive", "--state", cluster.state.path, id, "/home/user/watched"],
                directory: cluster.state
            )
            let lines = Pipe()
            let errors = Pipe()
            watcher.standardOutput = lines
            watcher.standardError = errors
            try watcher.run()
            defer { if watcher.isRunning { watcher.terminate() } }
            let printed = Mutex("")
            let reader = Task.detached {
                while true {
                    let chunk = lines.fileHandleForReading.availableData
                    if chunk.isEmpty { return }
                    printed.withLock { $0 += String(decoding: chunk, as: UTF8.self) }
                }
            }
            // The watch is set a moment after the command starts: touch files until it reports one.
            let deadline = ContinuousClock.now + .seconds(20)
            var touched = 0
            while !printed.withLock({ $0.contains("create f") }) && ContinuousClock.now < deadline {
                _ = try await cluster.hangar(["sandbox", "exec", id, "--", "touch", "watched/f\(touched)"])
                touched += 1
            }
            #expect(printed.withLock { $0.contains("create f") }, "\(printed.withLock { $0 })")
            _ = try await cluster.hangar(["sandbox", "exec", id, "--", "rm", "-r", "watched"])
            let ended = ContinuousClock.now + .seconds(15)
            while watcher.isRunning && ContinuousClock.now < ended { try await Task.sleep(for: .milliseconds(20)) }
            #expect(!watcher.isRunning && watcher.terminationStatus == 0)
            await reader.value
            let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(said.contains("the watched directory was removed"), "\(said)")

            // A background command: its pid at once, its output and exit code by attaching.
            let started = try await cluster.hangar([
                "sandbox", "exec", "--background", id, "--", "sh", "-c", "echo bg; exit 5",
            ])
            #expect(started.status == 0, "\(started.stderr)")
            let handle = started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(UInt32(handle) != nil, "\(started.stdout)")
            let attached = try await cluster.hangar(["sandbox", "attach", id, handle])
            #expect(
                attached.status == 5 && attached.stdout == "bg\n",
                "\(attached.status) \(attached.stdout) \(attached.stderr)"
            )

            // A running command is listed by ps and ended by signal.
            let sleeper = Task { try await cluster.hangar(["sandbox", "exec", id, "--", "sleep", "300"]) }
            var pid: String?
            let psDeadline = ContinuousClock.now + .seconds(10)
            while pid == nil && ContinuousClock.now < psDeadline {
                let ps = try await cluster.hangar(["sandbox", "ps", id])
                pid = ps.stdout.split(separator: "\n").first { $0.hasSuffix("sleep 300") }?
                    .split(separator: " ").first.map(String.init)
            }
            #expect(pid != nil, "ps did not list the sleep within 10 s")
            let signalled = try await cluster.hangar(["sandbox", "signal", id, pid ?? "0", "--signal", "INT"])
            #expect(signalled.status == 0, "\(signalled.stderr)")
            #expect(try await sleeper.value.status == 128 + 2, "ended by SIGINT")

            // Its node shows it, as the tenant's.
            let node = try #require(sandboxes.first?["nodeId"] as? String, "\(sandboxes)")
            let status = try await cluster.hangar(["node", "status", node])
            #expect(status.status == 0, "\(status.stderr)")
            #expect(status.stdout.contains(id) && status.stdout.contains("default=1"), "\(status.stdout)")

            // Code runs in the sandbox with state kept between cells.
            let set = try await cluster.hangar(["sandbox", "run-code", id, "--code", "x = 41\nprint('set')"])
            #expect(set.status == 0 && set.stdout == "set\n", "\(set.stdout) \(set.stderr)")
            let value = try await cluster.hangar(["sandbox", "run-code", id, "--code", "x + 1"])
            #expect(value.status == 0 && value.stdout == "42\n", "\(value.stdout) \(value.stderr)")
            let raised = try await cluster.hangar(["sandbox", "run-code", id, "--code", "undefined_name"])
            #expect(raised.status == 1 && raised.stderr.contains("NameError"), "\(raised.stderr)")
            let contexts = try await cluster.hangar(["sandbox", "contexts", "ls", id])
            #expect(contexts.status == 0 && contexts.stdout.contains("python"), "\(contexts.stdout) \(contexts.stderr)")
            // A context of its own: made, used, restarted (its state gone), removed.
            let made = try await cluster.hangar(["sandbox", "contexts", "create", id, "--language", "bash"])
            #expect(made.status == 0, "\(made.stderr)")
            let context = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let inContext = ["sandbox", "run-code", id, "--code-context", context, "--code"]
            #expect(try await cluster.hangar(inContext + ["v=7"]).status == 0)
            #expect(try await cluster.hangar(inContext + ["echo v=$v"]).stdout == "v=7\n")
            #expect(try await cluster.hangar(["sandbox", "contexts", "restart", id, context]).status == 0)
            #expect(try await cluster.hangar(inContext + ["echo v=$v"]).stdout == "v=\n")
            #expect(try await cluster.hangar(["sandbox", "contexts", "rm", id, context]).status == 0)
            let removedContext = try await cluster.hangar(inContext + ["true"])
            #expect(
                removedContext.status == 1 && removedContext.stderr.contains(context),
                "\(removedContext.status) \(removedContext.stderr)"
            )

            // A command that runs when its sandbox is killed ends (exit 1) saying so.
            let running = Task { try await cluster.hangar(["sandbox", "exec", id, "--", "sleep", "300"]) }
            let runDeadline = ContinuousClock.now + .seconds(10)
            var listed300 = false
            while !listed300 && ContinuousClock.now < runDeadline {
                listed300 = try await cluster.hangar(["sandbox", "ps", id]).stdout.contains("sleep 300")
            }
            #expect(listed300, "ps did not list the sleep within 10 s")
            let killed = try await cluster.hangar(["sandbox", "kill", id])
            let cut = try await running.value
            // Whichever comes first: the sandbox's end event, or the node's answer that its agent is gone.
            #expect(
                cut.status == 1
                    && ["ended while", "not running", "agent is gone"].contains { cut.stderr.contains($0) },
                "\(cut.status) \(cut.stderr)"
            )
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
