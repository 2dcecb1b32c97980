import Foundation
import Glibc
import HangarTestSupport
import Testing

/// Issue 16, restarts: a node agent killed with `kill -9` (or upgraded) and started again keeps its
/// `process`, `container`, `gvisor` and `microvm` sandboxes: the next process of the same node re-adopts them from
/// their agents, and the scheduler keeps them RUNNING. Real daemons (`hangar scheduler`, `hangar
/// node`, each a process of its own), a real nats-server, real bubblewrap sandboxes and runc
/// containers (and a gVisor sandbox and a qemu microVM one).
@Suite(
    "a node restart keeps its stateful sandboxes",
    .serialized,
    .enabled(
        if: geteuid() == 0 && access("/usr/sbin/runc", X_OK) == 0 && access("/usr/bin/runsc", X_OK) == 0
            && access("/usr/bin/qemu-system-x86_64", X_OK) == 0
    )
)
struct NodeRestartTests {
    @Test(
        "kill -9 the node and start it again, then stop it with --keep-sandboxes and start it again: a sandbox keeps its files and processes and stays RUNNING; one whose sandbox died meanwhile ends LOST and is swept; another node's container sandbox on the same host outlives the sweep and its own node's kill -9"
    )
    func nodeKilledAndStartedAgain() async throws {
        try await withNATSServer { server in
            let folder = try makeTemporaryDirectory("hangar-node-restart")
            defer { try? FileManager.default.removeItem(at: folder) }
            let work = folder.appendingPathComponent("work")
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: false)
            let nodeID = "restart-\(getpid())"
            func daemon(_ name: String, _ arguments: [String]) throws -> (Process, URL) {
                let log = folder.appendingPathComponent("\(name).log")
                FileManager.default.createFile(atPath: log.path, contents: nil)
                let process = try hangarProcess(
                    arguments + ["--nats", server.url, "--log-level", "info"],
                    directory: work
                )
                process.standardOutput = try FileHandle(forWritingTo: log)
                process.standardError = try FileHandle(forWritingTo: log)
                try process.run()
                return (process, log)
            }
            // Two node ids on this host, sharing its ledger directory as nodes on one machine do.
            func startNode(_ name: String, id: String = nodeID, keeping: Bool = false) async throws -> (Process, URL) {
                let node = try daemon(
                    name,
                    [
                        "node", "agent", "--id", id, "--runtimes",
                        id == nodeID ? "process,container,gvisor" : "process,container,gvisor,microvm", "--label",
                        "role=\(id == nodeID ? "main" : "other")",
                        "--state-dir", folder.appendingPathComponent("state-\(id)").path,
                    ]
                        + (keeping ? ["--keep-sandboxes"] : [])
                )
                try await waitFor("node serving", in: node.1, while: node.0)
                return node
            }
            // A TTL longer than the default 3 s: two nodes restart one after the other here, under
            // whatever else CI runs, and neither must be declared down meanwhile.
            let scheduler = try daemon(
                "scheduler",
                ["scheduler", "--db", folder.appendingPathComponent("db.sqlite").path, "--node-ttl", "10"]
            )
            var processes = [scheduler.0]
            defer {
                for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) }
            }
            try await waitFor("scheduler serving", in: scheduler.1, while: scheduler.0)
            let first = try await startNode("node-1")
            let otherID = nodeID + "-other"
            let other = try await startNode("other-1", id: otherID)
            processes += [first.0, other.0]
            func hangar(_ arguments: [String]) async throws -> CLIOutput {
                try await runHangar(Array(arguments.prefix(2)) + ["--nats", server.url] + arguments.dropFirst(2))
            }
            func logs() -> String {
                ["scheduler", "node-1", "node-2", "node-3", "other-1", "other-2", "other-3"].map { name in
                    let text = try? String(contentsOf: folder.appendingPathComponent("\(name).log"), encoding: .utf8)
                    return "\(name):\n" + (text ?? "").suffix(3000)
                }.joined(separator: "\n")
            }
            let registry = "/run/hangar/ledger/sandboxes"
            // SANDBOX_RUNNING, or how it ended (SANDBOX_LOST, ...).
            func state(_ id: String) async throws -> String? {
                let info = try await hangar(["sandbox", "info", id, "-o", "json"])
                guard let object = try? info.json() else { return nil }
                let sandbox = (object["info"] as? [String: Any]) ?? object
                let state = sandbox["state"] as? String
                return state == "SANDBOX_ENDED" ? sandbox["endReason"] as? String : state
            }

            // Two sandboxes: one keeps a file and a process of its own across the restart; the
            // other's sandbox is killed while no node runs.
            // A third, a runc container on the other node, must outlive the first node's restart
            // (and its sweep) and its own node's.
            // The kept one has an allowlist network (its namespace and rules outlive the node too).
            let kept = try await hangar([
                "sandbox", "create", "--timeout", "300", "--label", "role=main", "--allow-net", "192.0.2.1/32",
            ])
            let lost = try await hangar(["sandbox", "create", "--timeout", "300", "--label", "role=main"])
            let elsewhere = try await hangar([
                "sandbox", "create", "--timeout", "300", "--label", "role=other", "--runtime", "container",
            ])
            #expect(
                kept.status == 0 && lost.status == 0 && elsewhere.status == 0,
                "\(kept.stderr) \(lost.stderr)\n\(logs())"
            )
            let keptID = kept.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let lostID = lost.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let elsewhereID = elsewhere.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let noted = try await hangar([
                "sandbox", "exec", elsewhereID, "--", "sh", "-c",
                "echo there > note.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $! > /tmp/sleeper.pid",
            ])
            #expect(noted.status == 0, "\(noted.stderr)\n\(logs())")
            // And a gVisor sandbox there, whose agent makes its own socket.
            let gVisor = try await hangar([
                "sandbox", "create", "--timeout", "300", "--label", "role=other", "--runtime", "gvisor",
            ])
            #expect(gVisor.status == 0, "\(gVisor.stderr)\n\(logs())")
            let gVisorID = gVisor.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let gVisorNoted = try await hangar([
                "sandbox", "exec", gVisorID, "--", "sh", "-c", "echo gvisor > note.txt",
            ])
            #expect(gVisorNoted.status == 0, "\(gVisorNoted.stderr)\n\(logs())")
            // And a microVM sandbox there, whose qemu serves its agent's port from the node's socket.
            // (The node offers microvm once its probe has built the guest and booted it: until then
            // the scheduler refuses, naming the runtime.)
            let vmCreate = ["sandbox", "create", "--timeout", "300", "--label", "role=other", "--runtime", "microvm"]
            var vm = try await hangar(vmCreate)
            let probed = ContinuousClock.now + .seconds(120)
            while vm.status != 0, vm.stderr.contains("without runtime 'microvm'"), ContinuousClock.now < probed {
                try await Task.sleep(for: .milliseconds(250))
                vm = try await hangar(vmCreate)
            }
            #expect(vm.status == 0, "\(vm.stderr)\n\(logs())")
            let vmID = vm.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let vmNoted = try await hangar(["sandbox", "exec", vmID, "--", "sh", "-c", "echo microvm > note.txt"])
            #expect(vmNoted.status == 0, "\(vmNoted.stderr)\n\(logs())")
            let vmEntry = try #require(
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: "\(registry)/\(vmID).json"))
                )
                    as? [String: Any],
                "the other node registered its microvm sandbox"
            )
            let qemu = try #require((vmEntry["microvm"] as? [String: Any])?["qemuPID"] as? Int, "\(vmEntry)")
            let elsewhereEntry = try #require(
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: "\(registry)/\(elsewhereID).json"))
                )
                    as? [String: Any],
                "the other node registered its container sandbox"
            )
            let container = try #require(elsewhereEntry["container"] as? [String: Any], "\(elsewhereEntry)")
            let containerInit = try #require(container["agentPID"] as? Int)
            let setUp = try await hangar([
                "sandbox", "exec", keptID, "--", "sh", "-c",
                "echo before > /home/user/kept.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $! > /tmp/sleeper.pid",
            ])
            #expect(setUp.status == 0, "\(setUp.stderr)")
            // A background command that goes on across the restart: it waits for a file, then
            // prints and exits; the next node takes it over, so `attach` finds it there.
            let waiting = try await hangar([
                "sandbox", "exec", "--background", keptID, "--", "sh", "-c",
                "echo before-restart; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after-restart; exit 3",
            ])
            #expect(waiting.status == 0, "\(waiting.stderr)")
            let waitingPID = waiting.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            // A code context: its kernel runs in the sandbox and names its context, so the next node
            // takes it over with its state.
            let cell = try await hangar(["sandbox", "run-code", keptID, "--code", "x = 41"])
            #expect(cell.status == 0, "\(cell.stderr)")
            let kernels = [
                "sandbox", "exec", keptID, "--", "sh", "-c",
                "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^python3 -u -I -c'",
            ]
            #expect(try await hangar(kernels).stdout == "1\n", "its kernel runs")
            let lostEntry = try #require(
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: "\(registry)/\(lostID).json"))
                )
                    as? [String: Any],
                "the node registered the sandbox it holds"
            )
            let lostSandbox = try #require(lostEntry["sandbox"] as? [String: Any])
            let lostLeader = try #require(lostSandbox["leaderPID"] as? Int)
            let lostScratch = try #require(lostSandbox["scratch"] as? String)

            kill(first.0.processIdentifier, SIGKILL)
            kill(other.0.processIdentifier, SIGKILL)
            first.0.waitUntilExit()
            other.0.waitUntilExit()
            // While no node runs, the second sandbox dies: its agent (bubblewrap's child, the
            // sandbox's pid 1) is killed, which ends every process of the sandbox.
            let children = try String(
                contentsOfFile: "/proc/\(lostLeader)/task/\(lostLeader)/children",
                encoding: .utf8
            )
            let lostAgent = try #require(pid_t(children.trimmingCharacters(in: .whitespacesAndNewlines)))
            kill(lostAgent, SIGKILL)
            let second = try await startNode("node-2", keeping: true)
            processes.append(second.0)
            let restartLog = (try? String(contentsOf: second.1, encoding: .utf8)) ?? ""
            #expect(restartLog.contains("re-adopted a stateful sandbox"), "\(logs())")
            // The other node's sandbox ran through this node's sweep; its own node re-adopts it.
            let otherAgain = try await startNode("other-2", id: otherID, keeping: true)
            processes.append(otherAgain.0)
            let there = try await hangar([
                "sandbox", "exec", elsewhereID, "--", "sh", "-c",
                "cat note.txt; kill -0 $(cat /tmp/sleeper.pid) && echo sleeper-alive",
            ])
            #expect(there.stdout == "there\nsleeper-alive\n", "\(there.stderr)\n\(logs())")
            #expect(try await state(elsewhereID) == "SANDBOX_RUNNING", "\(logs())")
            let gVisorThere = try await hangar(["sandbox", "exec", gVisorID, "--", "cat", "note.txt"])
            #expect(gVisorThere.stdout == "gvisor\n", "\(gVisorThere.stderr)\n\(logs())")
            #expect(try await state(gVisorID) == "SANDBOX_RUNNING", "\(logs())")
            let vmThere = try await hangar(["sandbox", "exec", vmID, "--", "cat", "note.txt"])
            #expect(vmThere.stdout == "microvm\n", "\(vmThere.stderr)\n\(logs())")
            #expect(try await state(vmID) == "SANDBOX_RUNNING", "\(logs())")

            // The kept sandbox answers through the new node with what it had.
            let after = try await hangar([
                "sandbox", "exec", keptID, "--", "sh", "-c",
                "cat /home/user/kept.txt; kill -0 $(cat /tmp/sleeper.pid) && echo sleeper-alive",
            ])
            #expect(
                after.status == 0 && after.stdout == "before\nsleeper-alive\n",
                "\(after.stdout) \(after.stderr)\n\(logs())"
            )
            // The background command was taken over: what it printed before the restart (the agent
            // kept it), what it printed after, and its exit.
            #expect(try await hangar(["sandbox", "exec", keptID, "--", "touch", "/tmp/go"]).status == 0)
            let attached = try await hangar(["sandbox", "attach", keptID, waitingPID])
            #expect(
                attached.status == 3 && attached.stdout == "before-restart\nafter-restart\n",
                "\(attached.status) \(attached.stdout) \(attached.stderr)\n\(logs())"
            )
            // Its code context was taken over with its state: the default context, its kernel the same.
            let continued = try await hangar(["sandbox", "run-code", keptID, "--code", "x += 1\nprint(x)"])
            #expect(continued.stdout == "42\n", "\(continued.stdout) \(continued.stderr)\n\(logs())")
            #expect(try await hangar(kernels).stdout == "1\n", "one kernel runs: the one from before the restart")
            let more = try await hangar([
                "sandbox", "exec", keptID, "--", "sh", "-c", "echo after >> kept.txt; cat kept.txt",
            ])
            #expect(more.stdout == "before\nafter\n", "\(more.stderr)")

            // The scheduler keeps it RUNNING (several heartbeats on), and ends the other LOST.
            let deadline = ContinuousClock.now + .seconds(20)
            var lostState = try await state(lostID)
            while lostState != "SANDBOX_LOST", ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                lostState = try await state(lostID)
            }
            #expect(lostState == "SANDBOX_LOST", "\(logs())")
            #expect(try await state(keptID) == "SANDBOX_RUNNING", "\(logs())")
            // The dead one's leftovers were swept by the new node; its registry entry is gone.
            #expect(!FileManager.default.fileExists(atPath: lostScratch), "its writable layer is swept")
            #expect(!FileManager.default.fileExists(atPath: "\(registry)/\(lostID).json"))

            // An upgrade: the node stopped (SIGTERM) with --keep-sandboxes leaves it running, and
            // its next start re-adopts it.
            kill(second.0.processIdentifier, SIGTERM)
            let stopped = try await waitForExit(second.0, within: .seconds(15), log: second.1)
            #expect(second.0.terminationStatus == 0 && stopped.contains("left a stateful sandbox running"), "\(logs())")
            let third = try await startNode("node-3")
            processes.append(third.0)
            let upgraded = try await hangar(["sandbox", "exec", keptID, "--", "sh", "-c", "cat kept.txt"])
            #expect(upgraded.stdout == "before\nafter\n", "\(upgraded.stderr)\n\(logs())")
            #expect(try await state(keptID) == "SANDBOX_RUNNING", "\(logs())")

            // Killed through the new node, the kept sandbox leaves nothing.
            let keptEntry = try #require(
                try JSONSerialization.jsonObject(
                    with: Data(contentsOf: URL(fileURLWithPath: "\(registry)/\(keptID).json"))
                )
                    as? [String: Any]
            )
            let keptSandbox = try #require(keptEntry["sandbox"] as? [String: Any])
            let keptLeader = try #require(keptSandbox["leaderPID"] as? Int)
            // The node's own deadline for it (its 300 s timeout and the 2 s grace) went with it.
            let now = Int(Date().timeIntervalSince1970 * 1000)
            let nodeDeadline = try #require(keptEntry["deadlineUnixMs"] as? Int, "\(keptEntry)")
            #expect(nodeDeadline > now + 240_000 && nodeDeadline <= now + 302_000, "\(nodeDeadline - now) ms from now")
            let keptSocket = try #require(keptSandbox["socket"] as? String)
            let keptNetwork = try #require(
                (keptSandbox["network"] as? [String: Any])?["name"] as? String,
                "its allowlist network is registered: \(keptSandbox)"
            )
            #expect(FileManager.default.fileExists(atPath: "/run/netns/\(keptNetwork)"))
            let killed = try await hangar(["sandbox", "kill", keptID])
            #expect(killed.status == 0, "\(killed.stderr)")
            let gone = ContinuousClock.now + .seconds(20)
            while FileManager.default.fileExists(atPath: "\(registry)/\(keptID).json"), ContinuousClock.now < gone {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(!FileManager.default.fileExists(atPath: "\(registry)/\(keptID).json"), "\(logs())")
            #expect(!FileManager.default.fileExists(atPath: keptSocket))
            #expect(!FileManager.default.fileExists(atPath: "/run/netns/\(keptNetwork)"), "its network went with it")
            let stat = try? String(contentsOfFile: "/proc/\(keptLeader)/stat", encoding: .utf8)
            #expect(stat == nil || stat!.contains(") Z "), "its bubblewrap is gone: \(stat ?? "")")

            kill(third.0.processIdentifier, SIGTERM)
            _ = try await waitForExit(third.0, within: .seconds(15), log: third.1)
            // An upgrade of the other node keeps its container sandbox too.
            kill(otherAgain.0.processIdentifier, SIGTERM)
            let otherStopped = try await waitForExit(otherAgain.0, within: .seconds(15), log: otherAgain.1)
            #expect(otherStopped.contains("left a stateful sandbox running"), "\(logs())")
            let otherThird = try await startNode("other-3", id: otherID)
            processes.append(otherThird.0)
            let stillThere = try await hangar(["sandbox", "exec", elsewhereID, "--", "cat", "note.txt"])
            #expect(stillThere.stdout == "there\n", "\(stillThere.stderr)\n\(logs())")
            let vmStill = try await hangar(["sandbox", "exec", vmID, "--", "cat", "note.txt"])
            #expect(vmStill.stdout == "microvm\n", "\(vmStill.stderr)\n\(logs())")
            kill(otherThird.0.processIdentifier, SIGTERM)  // not keeping: its sandbox ends with it
            _ = try await waitForExit(otherThird.0, within: .seconds(15), log: otherThird.1)
            #expect(!FileManager.default.fileExists(atPath: "\(registry)/\(elsewhereID).json"))
            #expect(!FileManager.default.fileExists(atPath: "\(registry)/\(gVisorID).json"))
            #expect(!FileManager.default.fileExists(atPath: "\(registry)/\(vmID).json"))
            let qemuStat = try? String(contentsOfFile: "/proc/\(qemu)/stat", encoding: .utf8)
            #expect(
                qemuStat == nil || qemuStat!.contains(") Z "),
                "the VM ended with its node's stop: \(qemuStat ?? "")"
            )
            let initStat = try? String(contentsOfFile: "/proc/\(containerInit)/stat", encoding: .utf8)
            #expect(
                initStat == nil || initStat!.contains(") Z "),
                "the re-adopted container ended with its node's stop: \(initStat ?? "")"
            )
            kill(scheduler.0.processIdentifier, SIGTERM)
            _ = try await waitForExit(scheduler.0, within: .seconds(15), log: scheduler.1)
        }
    }
}
