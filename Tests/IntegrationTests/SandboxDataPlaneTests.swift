import Foundation
import Glibc
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarShared
import HangarTestSupport
import SwiftProtobuf
import Testing

/// The data plane of stateful sandboxes end to end, under Hangar's NATS authorization: a sandbox
/// created through the scheduler is a real bubblewrap sandbox with its agent on node `n1`
/// (``ProcessSandboxHost``), and the tenant talks to it straight on `hangar.sbx.n1.<tenant>.<id>.…`.
extension HeavySandboxSuites {
    @Suite("Stateful sandboxes: the data plane, real bubblewrap", .serialized, .enabled(if: geteuid() == 0))
    struct SandboxDataPlaneTests {
        @Test(
            "exec, files and state across calls, exit codes, 1 MiB of output, background commands, ps and signal; another tenant is refused; kill leaves nothing",
            arguments: ["process", "container", "gvisor", "microvm"]
        )
        func dataPlane(runtime: String) async throws {
            let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
            let microvm = MicroVMRuntime()
            let host = ProcessSandboxHost(agentPath: agentPath, microvm: microvm)
            try #require(host.availableRuntimes.contains(runtime), "\(runtime): runc or runsc is not here")
            let offered: any Runtime =
                switch runtime {
                case "container": ContainerRuntime()
                case "gvisor": GVisorRuntime()
                case "microvm": microvm
                default: ProcessRuntime()
                }
            let cluster = try await AuthorizedCluster.start(runtimes: [offered, NullRuntime()], sandboxHost: host)
            do {
                try await exercise(cluster, host, runtime: runtime)
            } catch {
                for id in host.sandboxIDs { await host.kill(id, reason: "the test failed") }
                await cluster.stop()
                throw error
            }
            await cluster.stop()
        }

        @Test(
            "a sandbox of a directory template through the scheduler: its own writable layer, the template's environment; a template no node holds is refused"
        )
        func templateSandbox() async throws {
            let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
            let directory = try makeTemporaryDirectory("hangar-sbx-template")
            chmod(directory.path, 0o755)
            let source = directory.appendingPathComponent("src").path
            try FileManager.default.createDirectory(atPath: source + "/bin", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: source + "/bin/busybox")
            for tool in ["sh", "cat", "id", "echo"] {
                try FileManager.default.createSymbolicLink(
                    atPath: source + "/bin/" + tool,
                    withDestinationPath: "busybox"
                )
            }
            try Data("busybox only\n".utf8).write(to: URL(fileURLWithPath: source + "/motd"))
            let store = TemplateStore(stateDirectory: directory.appendingPathComponent("state").path)
            try store.importDirectory(source, name: "tiny", env: ["FLAVOUR": "tiny"])
            let host = ProcessSandboxHost(agentPath: agentPath, templates: store)
            let cluster = try await AuthorizedCluster.start(
                runtimes: [ProcessRuntime(templates: store), NullRuntime()],
                sandboxHost: host,
                templates: store
            )
            do {
                func create(_ template: String) async throws -> Hangar_V1_SandboxCreateReply {
                    let answer = try await cluster.tenantA.request(
                        Subjects.sandbox(tenant: "a", verb: "create"),
                        payload: try Hangar_V1_SandboxCreateRequest.with { $0.template = template }.serializedData(),
                        timeout: .seconds(30)
                    )
                    return try Hangar_V1_SandboxCreateReply(serializedBytes: answer.payload)
                }
                let missing = try await create("absent")
                guard case .rejected(let rejected) = missing.outcome else {
                    throw TestFailure("a sandbox of a template no node holds was not refused: \(missing)")
                }
                #expect(rejected.field == "template" && rejected.message.contains("absent"), "\(rejected)")
                let created = try await create("tiny")
                guard case .created(let info) = created.outcome, info.state == .sandboxRunning else {
                    throw TestFailure("A could not create a sandbox of template tiny: \(created)")
                }
                let sandbox = DataPlane(connection: cluster.tenantA, node: info.nodeID, tenant: "a", sandbox: info.id)
                let first = try await sandbox.exec([
                    "sh", "-c", "echo $FLAVOUR; id -un; echo changed > /motd; cat /motd",
                ])
                #expect(first.stdout == Data("tiny\nuser\nchanged\n".utf8) && first.exited?.exitCode == 0, "\(first)")
                #expect(
                    try String(contentsOfFile: store.root + "/tiny/rootfs/motd", encoding: .utf8) == "busybox only\n"
                )
                _ = try await cluster.tenantA.request(
                    Subjects.sandbox(tenant: "a", verb: "kill"),
                    payload: try Hangar_V1_SandboxKillRequest.with { $0.sandboxID = info.id }.serializedData(),
                    timeout: .seconds(10)
                )
                try await waitUntil("the node has killed the template sandbox") { host.sandboxIDs.isEmpty }
            } catch {
                for id in host.sandboxIDs { await host.kill(id, reason: "the test failed") }
                await cluster.stop()
                throw error
            }
            await cluster.stop()
        }

        private func exercise(_ cluster: AuthorizedCluster, _ host: ProcessSandboxHost, runtime: String) async throws {
            var create = Hangar_V1_SandboxCreateRequest()
            create.runtime = runtime
            create.env = ["GREETING": "hello"]
            let answer = try await cluster.tenantA.request(
                Subjects.sandbox(tenant: "a", verb: "create"),
                payload: try create.serializedData(),
                timeout: .seconds(20)
            )
            let created = try Hangar_V1_SandboxCreateReply(serializedBytes: answer.payload)
            guard case .created(let info) = created.outcome else {
                Issue.record("A could not create a sandbox: \(created)")
                return
            }
            #expect(info.state == .sandboxRunning && info.nodeID == "n1")
            #expect(host.sandboxIDs == [info.id])
            let sandbox = DataPlane(connection: cluster.tenantA, node: info.nodeID, tenant: "a", sandbox: info.id)

            let echo = try await sandbox.exec(["echo", "hi"])
            #expect(echo.stdout == Data("hi\n".utf8) && echo.exited?.exitCode == 0, "\(echo)")
            // The start's environment reaches commands; a command's own overrides it.
            let environment = try await sandbox.exec(["sh", "-c", "echo $GREETING $OTHER"]) {
                $0.env = ["OTHER": "there"]
            }
            #expect(environment.stdout == Data("hello there\n".utf8))
            let stdin = try await sandbox.exec(["cat"]) { $0.stdin = Data("from stdin".utf8) }
            #expect(stdin.stdout == Data("from stdin".utf8) && stdin.exited?.exitCode == 0)

            // State persists across calls: a written file is there for the next command and read.
            let written = try await sandbox.operation("files.write") {
                $0.write = .with {
                    $0.path = "/home/user/note.txt"
                    $0.data = Data("kept\n".utf8)
                }
            }
            guard case .ok = written.outcome else { throw TestFailure("files.write: \(written)") }
            let cat = try await sandbox.exec(["cat", "/home/user/note.txt"])
            #expect(cat.stdout == Data("kept\n".utf8) && cat.exited?.exitCode == 0)
            let read = try await sandbox.operation("files.read") { $0.read = .with { $0.path = "/home/user/note.txt" } }
            #expect(read.data.data == Data("kept\n".utf8) && read.data.eof, "\(read)")
            let stat = try await sandbox.operation("files.stat") { $0.stat = .with { $0.path = "/home/user/note.txt" } }
            #expect(stat.entry.size == 5, "\(stat)")
            // Directories: make (with parents), rename into place, list, remove recursively.
            let made = try await sandbox.operation("files.mkdir") {
                $0.mkdir = .with {
                    $0.path = "/home/user/a/b"
                    $0.parents = true
                }
            }
            guard case .ok = made.outcome else { throw TestFailure("files.mkdir: \(made)") }
            let renamed = try await sandbox.operation("files.rename") {
                $0.rename = .with {
                    $0.from = "/home/user/note.txt"
                    $0.to = "/home/user/a/b/note.txt"
                }
            }
            guard case .ok = renamed.outcome else { throw TestFailure("files.rename: \(renamed)") }
            let listed = try await sandbox.operation("files.list") { $0.list = .with { $0.path = "/home/user/a/b" } }
            #expect(listed.entries.entries.map(\.name) == ["note.txt"], "\(listed)")
            let moved = try await sandbox.exec(["cat", "/home/user/a/b/note.txt"])
            #expect(moved.stdout == Data("kept\n".utf8), "\(moved)")
            let removed = try await sandbox.operation("files.remove") {
                $0.remove = .with {
                    $0.path = "/home/user/a"
                    $0.recursive = true
                }
            }
            guard case .ok = removed.outcome else { throw TestFailure("files.remove: \(removed)") }
            let gone = try await sandbox.operation("files.stat") { $0.stat = .with { $0.path = "/home/user/a" } }
            #expect(gone.agentError.code == .notFound, "\(gone)")
            // A watch of a directory: `started`, the changes a command makes there, `ended` at unwatch.
            let watchInbox =
                cluster.tenantA.options.inboxPrefix + ".watch."
                + UUID().uuidString.replacingOccurrences(
                    of: "-",
                    with: ""
                )
            let watchEvents = try await cluster.tenantA.subscribeConfirmed(watchInbox)
            defer { watchEvents.unsubscribe() }
            try cluster.tenantA.publish(
                Subjects.sandboxData(node: info.nodeID, tenant: "a", sandbox: info.id, verb: "files.watch"),
                payload: try Hangar_V1_SandboxWatchRequest.with {
                    $0.path = "/tmp"
                    $0.recursive = true
                }.serializedData(),
                replyTo: watchInbox
            )
            func nextWatchEvent() async throws -> Hangar_V1_SandboxWatchEvent {
                let message = try #require(
                    try await firstMessage(of: watchEvents, within: .seconds(15)),
                    "no watch event"
                )
                return try Hangar_V1_SandboxWatchEvent(serializedBytes: message.payload)
            }
            guard case .started(let watchStarted) = try await nextWatchEvent().kind else {
                throw TestFailure("the watch did not start")
            }
            let watched = try await sandbox.exec(["sh", "-c", "mkdir /tmp/seen && echo x > /tmp/seen/file"])
            #expect(watched.exited?.exitCode == 0, "\(watched)")
            var changed: [String] = []
            while !changed.contains("seen/file") {
                guard case .changes(let batch) = try await nextWatchEvent().kind else {
                    throw TestFailure("no changes")
                }
                changed += batch.events.map(\.path)
            }
            #expect(changed.first == "seen", "\(changed)")
            // An atomic write by the agent shows as its file's create, not as its temporary file's.
            let atomic = try await sandbox.operation("files.write") {
                $0.write = .with { ($0.path, $0.data) = ("/tmp/seen/written", Data("w".utf8)) }
            }
            guard case .ok = atomic.outcome else { throw TestFailure("files.write: \(atomic)") }
            var afterWrite: [String] = []
            while !afterWrite.contains("seen/written") {
                guard case .changes(let batch) = try await nextWatchEvent().kind else {
                    throw TestFailure("no changes")
                }
                afterWrite += batch.events.map(\.path)
            }
            #expect(!afterWrite.contains { $0.contains(".hangar-") }, "\(afterWrite)")
            let unwatched = try await cluster.tenantA.request(
                Subjects.sandboxData(node: info.nodeID, tenant: "a", sandbox: info.id, verb: "files.unwatch"),
                payload: try Hangar_V1_SandboxUnwatchRequest.with { $0.watchID = watchStarted.watchID }
                    .serializedData(),
                timeout: .seconds(10)
            )
            guard case .ok = try Hangar_V1_SandboxOpReply(serializedBytes: unwatched.payload).outcome else {
                throw TestFailure("files.unwatch was refused")
            }
            var watchEnd: Hangar_V1_SandboxWatchEnded?
            while watchEnd == nil {
                if case .ended(let ended) = try await nextWatchEvent().kind { watchEnd = ended }
            }
            #expect(watchEnd?.reason == "unwatched", "\(String(describing: watchEnd))")

            let missing = try await sandbox.operation("files.read") { $0.read = .with { $0.path = "/home/user/none" } }
            #expect(missing.agentError.code == .notFound, "\(missing)")
            let mismatched = try await sandbox.operation("files.read") { $0.stat = .with { $0.path = "/tmp" } }
            #expect(mismatched.error.code == .sandboxInvalidRequest, "\(mismatched)")

            let failing = try await sandbox.exec(["sh", "-c", "echo oops >&2; exit 3"])
            #expect(failing.exited?.exitCode == 3 && failing.stderr == Data("oops\n".utf8), "\(failing)")

            // A background command goes on without its requester; its output is kept and streamed to
            // whoever attaches, from an offset, also after it ended.
            let background = try await sandbox.exec(["sh", "-c", "echo first; sleep 0.5; echo second >&2; exit 4"]) {
                $0.background = true
            }
            let handle = try #require(background.started?.pid, "\(background)")
            #expect(background.stdout.isEmpty && background.exited == nil, "\(background)")
            let attached = try await sandbox.attach(handle)
            #expect(attached.stdout == Data("first\n".utf8) && attached.stderr == Data("second\n".utf8), "\(attached)")
            #expect(attached.exited?.exitCode == 4, "\(attached)")
            let late = try await sandbox.attach(handle, stdoutOffset: 3)
            #expect(
                late.stdout == Data("st\n".utf8) && late.exited?.exitCode == 4 && !late.offsetsContiguous,
                "\(late)"
            )
            let unknown = try await sandbox.attach(999_999)
            #expect(unknown.error?.code == .sandboxInvalidRequest, "\(unknown)")

            // Every command that ran is in the audit trail, as its tenant's, with how it ended.
            try await waitUntil("the commands are audited") {
                let rows = try await cluster.scheduler.store.auditRows(
                    tenant: nil,
                    jobID: info.id,
                    sinceMs: 0,
                    limit: 100
                )
                let commands = rows.filter { $0.event == "sandbox.command" && $0.actor == "tenant:a" }
                return commands.contains { $0.detail.hasPrefix(#"argv=["echo","hi"] user=user cwd=- exit=0"#) }
                    && commands.contains {
                        $0.detail.contains(#"argv=["sh","-c","echo oops >&2; exit 3"]"#) && $0.detail.contains("exit=3")
                    }
            }

            // 1 MiB of output arrives whole, in chunks whose offsets follow on from each other.
            let large = try await sandbox.exec(["head", "-c", "1048576", "/dev/zero"])
            #expect(large.stdout.count == 1 << 20 && large.stdout.allSatisfy { $0 == 0 })
            #expect(large.offsetsContiguous && large.exited?.exitCode == 0)

            // ps lists a running command, and signal reaches it.
            let sleeper = Task { try await sandbox.exec(["sleep", "60"]) }
            var pid: UInt32?
            try await waitUntil("ps lists the sleeping command") {
                let ps = try await sandbox.operation("ps") { $0.ps = Hangar_V1_AgentListProcesses() }
                pid = ps.processes.processes.first { $0.argv == ["sleep", "60"] }?.pid
                return pid != nil
            }
            let signalled = try await sandbox.operation("signal") {
                $0.signal = .with {
                    $0.pid = pid ?? 0
                    $0.signo = SIGTERM
                }
            }
            guard case .ok = signalled.outcome else { throw TestFailure("signal: \(signalled)") }
            let ended = try await sleeper.value
            #expect(ended.exited?.signal == SIGTERM, "\(ended)")

            // Tenant B: on its own subjects A's sandbox does not exist; A's subjects are closed to it;
            // and an answer aimed at A's inbox is never sent.
            let other = DataPlane(connection: cluster.tenantB, node: info.nodeID, tenant: "b", sandbox: info.id)
            let refused = try await other.exec(["echo", "intruder"])
            #expect(refused.error?.code == .sandboxNotFound && refused.started == nil, "\(refused)")
            let refusedRead = try await other.operation("files.read") {
                $0.read = .with { $0.path = "/home/user/note.txt" }
            }
            #expect(refusedRead.error.code == .sandboxNotFound)
            await expectPermissionDenied("B executing on A's subject") {
                try await cluster.tenantB.publishConfirmed(
                    Subjects.sandboxData(node: info.nodeID, tenant: "a", sandbox: info.id, verb: "exec"),
                    payload: try Hangar_V1_SandboxExecRequest.with { $0.argv = ["true"] }.serializedData()
                )
            }
            let inboxOfA = try await cluster.tenantA.subscribeConfirmed("_INBOX.t.a.>")
            defer { inboxOfA.unsubscribe() }
            try await cluster.tenantB.publishConfirmed(
                Subjects.sandboxData(node: info.nodeID, tenant: "b", sandbox: info.id, verb: "ps"),
                payload: try Hangar_V1_SandboxOpRequest.with { $0.ps = Hangar_V1_AgentListProcesses() }
                    .serializedData(),
                replyTo: "_INBOX.t.a.spoofed.1"
            )
            // The node drops the spoofed request as soon as it takes it; by the time B's next request is
            // answered, an answer to it would have come.
            _ = try await other.operation("ps") { $0.ps = Hangar_V1_AgentListProcesses() }
            #expect(try await firstMessage(of: inboxOfA, within: .milliseconds(200)) == nil)

            // Killed through the scheduler, nothing of the sandbox is left (its processes are the host's
            // to count for process and container; gVisor's and a VM's are their own kernel's).
            let namespace = try await sandbox.exec(["readlink", "/proc/self/ns/pid"])
            let pidNamespace = String(decoding: namespace.stdout, as: UTF8.self).trimmingCharacters(
                in: .whitespacesAndNewlines
            )
            let hostSees = runtime == "process" || runtime == "container"
            #expect(pidNamespace.hasPrefix("pid:["))
            #expect(!hostSees || !processes(inPidNamespace: pidNamespace).isEmpty)  // the agent, at least
            let killAnswer = try await cluster.tenantA.request(
                Subjects.sandbox(tenant: "a", verb: "kill"),
                payload: try Hangar_V1_SandboxKillRequest.with { $0.sandboxID = info.id }.serializedData(),
                timeout: .seconds(10)
            )
            let killed = try Hangar_V1_SandboxReply(serializedBytes: killAnswer.payload)
            #expect(killed.info.state == .sandboxEnded && killed.info.endReason == .sandboxKilled)
            try await waitUntil("the node has killed the sandbox") { host.sandboxIDs.isEmpty }
            if hostSees {
                try await waitUntil("no process of the sandbox is left") {
                    processes(inPidNamespace: pidNamespace).isEmpty
                }
            }
            let after = try await sandbox.exec(["true"])
            #expect(after.error?.code == .sandboxNotFound)
        }
    }
}

/// A test's failure with a message.
private struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One tenant's data-plane requests to one sandbox.
private struct DataPlane {
    let connection: NATSConnection
    let node: String
    let tenant: String
    let sandbox: String

    /// What an exec's answer held.
    struct Execution: CustomStringConvertible {
        var started: Hangar_V1_AgentStarted?
        var stdout = Data()
        var stderr = Data()
        var offsetsContiguous = true
        var exited: Hangar_V1_AgentExited?
        var error: Hangar_V1_SandboxError?
        var agentError: Hangar_V1_AgentError?

        var description: String {
            "started \(started != nil), stdout \(stdout.count) bytes, stderr \(String(decoding: stderr.prefix(200), as: UTF8.self)), "
                + "exited \(exited.map { "\($0)" } ?? "-"), error \(error.map { "\($0)" } ?? "-"), "
                + "agent error \(agentError.map { "\($0)" } ?? "-")"
        }
    }

    func subject(_ verb: String) -> String {
        Subjects.sandboxData(node: node, tenant: tenant, sandbox: sandbox, verb: verb)
    }

    /// Runs `argv` and collects its events until the last one (bounded: 15 s).
    func exec(
        _ argv: [String],
        _ configure: (inout Hangar_V1_SandboxExecRequest) -> Void = { _ in }
    ) async throws -> Execution {
        var request = Hangar_V1_SandboxExecRequest()
        request.argv = argv
        configure(&request)
        return try await stream("exec", try request.serializedData(), untilStarted: request.background)
    }

    /// The output of background command `pid` from the offsets asked, until its exit.
    func attach(_ pid: UInt32, stdoutOffset: UInt64 = 0) async throws -> Execution {
        let request = Hangar_V1_SandboxAttachRequest.with {
            $0.pid = pid
            $0.stdoutOffset = stdoutOffset
        }
        return try await stream("attach", try request.serializedData(), untilStarted: false)
    }

    /// Sends `payload` on `verb` and collects the `SandboxExecEvent`s answered until the last one
    /// (or `started`, for a background exec); bounded: 15 s.
    private func stream(_ verb: String, _ payload: Data, untilStarted: Bool) async throws -> Execution {
        let inbox =
            connection.options.inboxPrefix + ".exec." + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let events = try await connection.subscribeConfirmed(inbox)
        defer { events.unsubscribe() }
        try connection.publish(subject(verb), payload: payload, replyTo: inbox)
        var execution = Execution()
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            guard let message = try await firstMessage(of: events, within: deadline - ContinuousClock.now) else {
                break
            }
            let event = try Hangar_V1_SandboxExecEvent(serializedBytes: message.payload)
            switch event.kind {
            case .started(let started):
                execution.started = started
                if untilStarted { return execution }
            case .output(let output):
                let isStdout = output.stream == .stdout
                let sofar = isStdout ? execution.stdout.count : execution.stderr.count
                if output.offset != UInt64(sofar) { execution.offsetsContiguous = false }
                if isStdout { execution.stdout += output.data } else { execution.stderr += output.data }
            case .exited(let exited):
                execution.exited = exited
                return execution
            case .error(let error):
                execution.error = error
                return execution
            case .agentError(let error):
                execution.agentError = error
                return execution
            case nil: throw TestFailure("an exec event without a kind")
            }
        }
        throw TestFailure("the \(verb) did not end within 15 s: \(execution)")
    }

    /// Sends one `SandboxOpRequest` on `verb` and decodes its answer.
    func operation(
        _ verb: String,
        _ configure: (inout Hangar_V1_SandboxOpRequest) -> Void
    ) async throws -> Hangar_V1_SandboxOpReply {
        var request = Hangar_V1_SandboxOpRequest()
        configure(&request)
        let answer = try await connection.request(
            subject(verb),
            payload: try request.serializedData(),
            timeout: .seconds(10)
        )
        return try Hangar_V1_SandboxOpReply(serializedBytes: answer.payload)
    }
}
