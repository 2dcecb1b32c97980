import Foundation
import Glibc
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarClient

/// The Swift client end to end: a real nats-server under Hangar's authorization, a scheduler and a
/// node whose sandboxes are real bubblewrap sandboxes with their agent (``ProcessSandboxHost``).
@Suite(
    "HangarClient: sandboxes, commands, files and code through the Swift client",
    .serialized,
    .enabled(if: geteuid() == 0)
)
struct HangarClientTests {
    @Test(
        "create, run with output, exit code and stdin, a stream, 2.5 MiB of files, list and remove, code cells and contexts, kill, another tenant refused, the README example"
    )
    func endToEnd() async throws {
        try await withSandboxCluster { cluster, host in try await exercise(cluster, host) }
    }

    private func exercise(_ cluster: AuthorizedCluster, _ host: ProcessSandboxHost) async throws {
        let hangar = try Hangar(connection: cluster.tenantA, tenant: "a")
        let sandbox = try await hangar.createSandbox(
            .init(timeout: .seconds(600), env: ["GREETING": "hello"], metadata: ["task": "client-test"])
        )
        #expect(sandbox.nodeID == "n1" && host.sandboxIDs == [sandbox.id])
        #expect(sandbox.initialInfo.state == .running && sandbox.initialInfo.metadata == ["task": "client-test"])

        // Commands: output, the sandbox's environment and the command's own, exit codes, stdin.
        let echo = try await sandbox.commands.run(["sh", "-c", "echo $GREETING $OTHER"], env: ["OTHER": "there"])
        #expect(echo.stdout == Data("hello there\n".utf8) && echo.exitCode == 0 && echo.stderr.isEmpty, "\(echo)")
        let failing = try await sandbox.commands.run(["sh", "-c", "echo oops >&2; exit 3"])
        #expect(failing.exitCode == 3 && failing.stderrText == "oops\n" && !failing.timedOut, "\(failing)")
        let stdin = try await sandbox.commands.run(["cat"], stdin: Data("from stdin".utf8))
        #expect(stdin.stdoutText == "from stdin" && stdin.exitCode == 0, "\(stdin)")
        let root = try await sandbox.commands.run(["id", "-u"], cwd: "/tmp", user: "root")
        #expect(root.stdoutText == "0\n", "\(root)")
        let slow = try await sandbox.commands.run(["sleep", "30"], timeout: .milliseconds(300))
        #expect(slow.timedOut, "\(slow)")

        // A stream yields both streams as they come, then how the command ended.
        var outputs: [CommandOutput] = []
        for try await output in sandbox.commands.stream(["sh", "-c", "echo out; echo err >&2; exit 2"]) {
            outputs.append(output)
        }
        #expect(outputs.contains(.stdout(Data("out\n".utf8))) && outputs.contains(.stderr(Data("err\n".utf8))))
        #expect(outputs.last == .exited(CommandExit(exitCode: 2, signal: 0, timedOut: false)), "\(outputs)")
        // A command that cannot start is an error, not a result.
        await #expect(throws: HangarClientError.self) { try await sandbox.commands.run(["/no/such/program"]) }

        // Files: 2.5 MiB byte for byte (a write and two appends, three reads), list, stat, rename, remove.
        var big = Data(count: 5 << 19)
        for index in big.indices { big[index] = UInt8(truncatingIfNeeded: index &* 2_654_435_761 >> 13) }
        try await sandbox.files.write("/home/user/big.bin", big)
        let back = try await sandbox.files.read("/home/user/big.bin")
        #expect(back.count == big.count && back == big)
        let sum = try await sandbox.commands.run(["sh", "-c", "wc -c < big.bin"])
        #expect(sum.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "\(big.count)")
        try await sandbox.files.makeDirectory("/home/user/d/e")
        try await sandbox.files.write("d/e/note.txt", "a note")
        try await sandbox.files.rename(from: "/home/user/d/e/note.txt", to: "/home/user/d/moved.txt")
        #expect(try await sandbox.files.read("/home/user/d/moved.txt") == Data("a note".utf8))
        let listed = try await sandbox.files.list("/home/user")
        #expect(listed.contains { $0.name == "big.bin" && $0.kind == .file && $0.size == UInt64(big.count) })
        #expect(listed.contains { $0.name == "d" && $0.kind == .directory })
        #expect(try await sandbox.files.stat("/home/user/d/moved.txt").size == 6)
        try await sandbox.files.remove("/home/user/big.bin")
        try await sandbox.files.remove("/home/user/d", recursive: true)
        #expect(try await sandbox.files.exists("/home/user/big.bin") == false)
        #expect(try await sandbox.files.list("/home/user").contains { $0.name == "d" } == false)
        do {
            _ = try await sandbox.files.read("/home/user/big.bin")
            Issue.record("a removed file was read")
        } catch let error as HangarClientError {
            #expect(error.kind == .notFound && error.message.contains("big.bin"), "\(error)")
        }

        // Watch: changes below a directory stream as they happen; stopping the stream ends the
        // node's watch (asynchronously: a watch started at once may find the sandbox's 8 still
        // set, and is asked again within 5 s; without the unwatch they would last their 30 s).
        try await sandbox.files.makeDirectory("/home/user/watched")
        for round in 0..<10 {
            let deadline = ContinuousClock.now + .seconds(5)
            var seen: FileChange?
            while seen == nil && ContinuousClock.now < deadline {
                let changes = sandbox.files.watch("/home/user/watched", recursive: true, timeout: .seconds(30))
                let writer = Task {
                    // Writes until the watch has seen one: the watch is set a moment after the call.
                    for index in 0..<200 {
                        try await sandbox.files.write("/home/user/watched/f\(round)-\(index)", "x")
                        try await Task.sleep(for: .milliseconds(25))
                    }
                }
                defer { writer.cancel() }
                do {
                    // An atomic write makes a hidden temporary file first, then renames it into place.
                    for try await change in changes where !change.path.hasPrefix(".") {
                        seen = change
                        break
                    }
                } catch let error as HangarClientError
                    where error.message.contains("watches are set") && ContinuousClock.now < deadline
                {
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            #expect(
                seen?.operation == .create && seen?.path.hasPrefix("f\(round)-") == true,
                "\(String(describing: seen))"
            )
        }
        await #expect(throws: HangarClientError.self) {
            for try await _ in sandbox.files.watch("/home/user/watched/f0-0") {}
        }
        // What the agent says about a watch itself reaches the caller as a notice: a recursive
        // watch holds at most 1024 directories.
        let made = try await sandbox.commands.run(["sh", "-c", "cd /home/user/watched && mkdir $(seq -f d%g 1 1030)"])
        #expect(made.exitCode == 0, "\(String(decoding: made.stderr, as: UTF8.self))")
        let noticeDeadline = ContinuousClock.now + .seconds(5)
        var notice: FileChange?
        while notice == nil && ContinuousClock.now < noticeDeadline {
            do {
                for try await change in sandbox.files.watch("/home/user/watched", recursive: true, timeout: .seconds(5))
                {
                    notice = change
                    break
                }
            } catch let error as HangarClientError where error.message.contains("watches are set") {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        #expect(notice?.operation == .notice && notice?.path == "", "\(String(describing: notice))")
        #expect(notice?.note?.contains("directories below are not watched") == true, "\(String(describing: notice))")

        // Code: state across cells, the last value, an error that keeps the state, a bash context.
        let first = try await sandbox.runCode("x = 41\nprint('set', x)")
        #expect(first.stdout == "set 41\n" && first.end == .ok && first.results.isEmpty, "\(first)")
        let second = try await sandbox.runCode("x + 1")
        #expect(second.text == "42" && second.executionCount == 2 && !second.contextID.isEmpty, "\(second)")
        let raised = try await sandbox.runCode("1 / 0")
        #expect(raised.error?.name == "ZeroDivisionError" && raised.end == .error, "\(raised)")
        #expect(raised.error?.traceback.contains("ZeroDivisionError") == true)
        #expect(try await sandbox.runCode("x").text == "41")
        var events: [CodeEvent] = []
        for try await event in sandbox.runCodeStream("import sys\nprint('o')\nprint('e', file=sys.stderr)\nx") {
            events.append(event)
        }
        let streamed = events.reduce(into: (stdout: "", stderr: "")) {
            if case .stdout(let text) = $1 { $0.stdout += text }
            if case .stderr(let text) = $1 { $0.stderr += text }
        }
        #expect(streamed.stdout == "o\n" && streamed.stderr == "e\n", "\(events)")
        guard case .done(let done) = events.last else {
            Issue.record("the stream did not end with done: \(events)")
            return
        }
        #expect(done.end == .ok && events.contains(.result(CodeResult(main: true, data: ["text/plain": "41"]))))
        let shell = try await sandbox.createCodeContext(language: "bash")
        _ = try await sandbox.runCode("X=5; cd /tmp", context: shell.id)
        let echoed = try await sandbox.runCode("echo $X $(pwd)", context: shell.id)
        #expect(echoed.stdout == "5 /tmp\n" && echoed.end == .ok, "\(echoed)")
        let exitCode = try await sandbox.runCode("false", context: shell.id)
        #expect(exitCode.error?.name == "ExitCode" && exitCode.error?.value == "1", "\(exitCode)")
        #expect(try await sandbox.listCodeContexts().map(\.id).contains(shell.id))
        try await sandbox.restartCodeContext(shell.id)
        #expect(try await sandbox.runCode("echo ${X:-unset}", context: shell.id).stdout == "unset\n")
        try await sandbox.removeCodeContext(shell.id)
        do {
            _ = try await sandbox.runCode("echo gone", context: shell.id)
            Issue.record("a removed context ran a cell")
        } catch let error as HangarClientError {
            #expect(error.kind == .notFound && error.code == "SANDBOX_CONTEXT_NOT_FOUND", "\(error)")
        }

        // The scheduler's side: find it again, list it by metadata, set its timeout.
        let same = try await hangar.sandbox(sandbox.id)
        #expect(same.nodeID == sandbox.nodeID)
        #expect(try await hangar.listSandboxes(metadata: ["task": "client-test"]).map(\.id) == [sandbox.id])
        #expect(try await hangar.listSandboxes(metadata: ["task": "other"]).isEmpty)
        let extended = try await sandbox.setTimeout(.seconds(900))
        #expect(extended.endsAt.map { $0.timeIntervalSinceNow > 800 } == true, "\(extended)")
        await expectClientError(.notFound) { _ = try await hangar.sandbox("no-such-sandbox") }

        // Another tenant: not found through the scheduler, nor by the node on its own subjects (NATS
        // lets it publish only `hangar.sbx.*.b.>`).
        let other = try Hangar(connection: cluster.tenantB, tenant: "b")
        await expectClientError(.notFound) { _ = try await other.sandbox(sandbox.id) }
        #expect(try await other.listSandboxes().isEmpty)
        let stolen = Sandbox(hangar: other, info: sandbox.initialInfo)
        await expectClientError(.notFound) { _ = try await stolen.commands.run(["true"]) }
        await expectClientError(.notFound) { _ = try await stolen.files.read("/etc/hostname") }
        await expectClientError(.notFound) { _ = try await stolen.runCode("1") }
        #expect(try await sandbox.commands.run(["true"]).exitCode == 0)

        // Killed: the scheduler says so, a command running meanwhile ends at once (killed, or
        // ended with the sandbox), and the sandbox takes no more commands.
        let running = Task { try await sandbox.commands.run(["sleep", "50"], timeout: .seconds(55)) }
        try await waitUntil("sleep runs") { try await sandbox.commands.list().contains { $0.argv.first == "sleep" } }
        let killed = try await sandbox.kill()
        #expect(killed.state == .ended && killed.endReason == .killed, "\(killed)")
        let started = ContinuousClock.now
        switch await running.result {
        case .success(let result): #expect(result.signal != 0, "\(result)")
        case .failure(let error): #expect((error as? HangarClientError)?.kind == .notRunning, "\(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(10))
        try await waitUntil("the node has killed the sandbox") { host.sandboxIDs.isEmpty }
        await expectClientError(.notRunning) { _ = try await sandbox.commands.run(["true"]) }
        await expectClientError(.notRunning) { _ = try await sandbox.files.list() }
        await expectClientError(.notRunning) { _ = try await hangar.sandbox(sandbox.id) }
        #expect(try await hangar.listSandboxes(metadata: ["task": "client-test"]).isEmpty)
        #expect(try await hangar.listSandboxes(metadata: ["task": "client-test"], states: [.ended]).count == 1)

        // The README's example, with a connection of its own.
        let (result, cell) = try await readmeExample(
            url: cluster.server.url,
            credentials: cluster.credentialsFile(tenant: "a"),
            tenant: "a"
        )
        #expect(result.exitCode == 0 && result.stdoutText == "hello\nLinux\n", "\(result)")
        #expect(cell.text == "2" && cell.error == nil, "\(cell)")
        await expectClientError(.invalidArgument) {
            _ = try await Hangar.connect(
                url: cluster.server.url,
                credentials: cluster.credentialsFile(tenant: "a"),
                tenant: "b"
            )
        }
    }

    /// The example of README.md ("Swift client"), as it is there but for the URL, credentials and tenant.
    private func readmeExample(
        url: String,
        credentials: String,
        tenant: String
    ) async throws -> (
        CommandResult, Execution
    ) {
        let hangar = try await Hangar.connect(url: url, credentials: credentials, tenant: tenant)
        let sandbox = try await hangar.createSandbox(.init(timeout: .seconds(600), metadata: ["task": "demo"]))
        let result = try await sandbox.commands.run(["sh", "-c", "echo hello; uname -s"])
        print(result.exitCode, result.stdoutText)  // 0 hello\nLinux\n
        try await sandbox.files.write("data.csv", "a,b\n1,2\n")
        let cell = try await sandbox.runCode("import csv\nrows = list(csv.reader(open('data.csv')))\nlen(rows)")
        print(cell.text ?? "", cell.error?.name ?? "")  // 2
        try await sandbox.kill()
        await hangar.close()
        return (result, cell)
    }
}

/// Expects `body` to throw a ``HangarClientError`` of `kind`.
private func expectClientError(
    _ kind: HangarClientError.Kind,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected a \(kind) error, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as HangarClientError {
        #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a HangarClientError of \(kind), got \(error)", sourceLocation: sourceLocation)
    }
}
