import Crypto
import Foundation
import Glibc
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarShared
import HangarTestSupport
import SwiftProtobuf
import Testing

/// The code interpreter (issue 17) end to end: a sandbox created through the scheduler on a real
/// bubblewrap sandbox (runc container, gVisor sandbox) with its agent, code contexts whose kernels
/// run inside it, and cells sent by the tenant straight to the node on
/// `hangar.sbx.n1.<tenant>.<id>.code.*`.
extension HeavySandboxSuites {
    @Suite("Code interpreter: contexts and cells in a real sandbox", .serialized, .enabled(if: geteuid() == 0))
    struct CodeInterpreterTests {
        @Test(
            "state across cells, last value, errors, a timeout that keeps state, a stuck cell killed, restart, a dead interpreter, busy, contexts apart, another tenant refused",
            arguments: ["process", "container", "gvisor"]
        )
        func cells(runtime: String) async throws {
            let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
            // A 1 MiB cap for one cell's output (8 MiB by default), so that the flood below is quick.
            let host = ProcessSandboxHost(agentPath: agentPath, cellOutputBytes: 1 << 20)
            try #require(host.availableRuntimes.contains(runtime), "\(runtime): runc or runsc is not here")
            let offered: any Runtime =
                switch runtime {
                case "container": ContainerRuntime()
                case "gvisor": GVisorRuntime()
                default: ProcessRuntime()
                }
            let cluster = try await AuthorizedCluster.start(runtimes: [offered, NullRuntime()], sandboxHost: host)
            do {
                try await exercise(cluster, runtime: runtime)
            } catch {
                for id in host.sandboxIDs { await host.kill(id, reason: "the test failed") }
                await cluster.stop()
                throw error
            }
            for id in host.sandboxIDs { await host.kill(id, reason: "the test ended") }
            await cluster.stop()
        }

        private func exercise(_ cluster: AuthorizedCluster, runtime: String) async throws {
            let answer = try await cluster.tenantA.request(
                Subjects.sandbox(tenant: "a", verb: "create"),
                payload: try Hangar_V1_SandboxCreateRequest.with { $0.runtime = runtime }.serializedData(),
                timeout: .seconds(20)
            )
            let created = try Hangar_V1_SandboxCreateReply(serializedBytes: answer.payload)
            guard case .created(let info) = created.outcome else {
                throw CodeTestFailure("A could not create a sandbox: \(created)")
            }
            let code = CodePlane(connection: cluster.tenantA, node: info.nodeID, tenant: "a", sandbox: info.id)

            // The default python context is made by the first cell; state persists between cells.
            let first = try await code.run("x = 41\nprint('set', x)")
            #expect(first.stdout == "set 41\n" && first.done?.end == .codeCellOk && first.results.isEmpty, "\(first)")
            let second = try await code.run("x + 1")
            #expect(second.main?["text/plain"] == "42", "\(second)")
            #expect(second.done?.executionCount == 2 && second.done?.end == .codeCellOk, "\(second)")
            let contextID = try #require(second.done?.contextID)
            // Each cell is audited with a digest of its code, not the code.
            let digest = SHA256.hash(data: Data("x + 1".utf8)).map { String(format: "%02x", $0) }.joined()
            try await waitUntil("the cells are audited") {
                try await cluster.scheduler.store.auditRows(tenant: nil, jobID: info.id, sinceMs: 0, limit: 100)
                    .contains {
                        $0.event == "sandbox.code" && $0.detail.contains("code_sha256=\(digest)")
                            && $0.detail.contains("context=\(contextID) language=python code_bytes=5")
                    }
            }

            // An exception is the cell's error, with a traceback; the context goes on.
            let raised = try await code.run("1 / 0")
            #expect(raised.error?.name == "ZeroDivisionError" && raised.done?.end == .codeCellError, "\(raised)")
            #expect(raised.error?.traceback.contains("ZeroDivisionError") == true, "\(raised)")
            #expect(try await code.run("x").main?["text/plain"] == "41")

            // A cell past its timeout is interrupted (KeyboardInterrupt) and the state stays.
            let looping = try await code.run("while True:\n    pass", timeoutMs: 500)
            #expect(looping.done?.end == .codeCellTimedOut && looping.error?.name == "KeyboardInterrupt", "\(looping)")
            #expect(looping.done?.message.contains("keeps its state") == true, "\(looping)")
            #expect(try await code.run("x").main?["text/plain"] == "41")

            // Rich results: a matplotlib figure as PNG (no plt.show()), a DataFrame as HTML, an object's
            // JSON, and what display() shows; output streams as it is written, subprocesses' too.
            let chart = try await code.run(
                "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')"
            )
            let png = try #require(chart.results.first { $0.data["image/png"] != nil }, "\(chart)")
            #expect(
                !png.main
                    && Data(base64Encoded: png.data["image/png"] ?? "")?.prefix(4) == Data([0x89, 0x50, 0x4E, 0x47])
            )
            let frame = try await code.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
            #expect(frame.main?["text/html"]?.contains("<table") == true, "\(frame)")
            let json = try await code.run(
                "class Point:\n    def _repr_json_(self):\n        return {'x': 1, 'y': [2, 3]}\nPoint()"
            )
            #expect(json.main?["application/json"] == #"{"x":1,"y":[2,3]}"#, "\(json)")
            let shown = try await code.run(
                "display('shown')\nimport subprocess, sys\nsubprocess.run(['echo', 'child'])\nprint('err', file=sys.stderr)"
            )
            #expect(
                shown.results.map(\.main) == [false] && shown.results.first?.data["text/plain"] == "'shown'",
                "\(shown)"
            )
            #expect(shown.stdout == "child\n" && shown.stderr == "err\n", "\(shown)")

            // A flood of output is cut at the node's cap and the cell interrupted; binary garbage
            // arrives as replacement characters; the context goes on either way.
            let flood = try await code.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
            #expect(flood.done?.end == .codeCellOutputLimit && flood.error?.name == "KeyboardInterrupt", "\(flood)")
            #expect(
                flood.stdout.utf8.count <= 1 << 20 && flood.stdout.utf8.count > 512 << 10,
                "\(flood.stdout.utf8.count)"
            )
            #expect(flood.done?.message.contains("keeps its state") == true, "\(flood)")
            let garbage = try await code.run("import os\nos.write(1, bytes(range(256)))\n'after'")
            #expect(
                garbage.stdout.unicodeScalars.contains("\u{FFFD}") && garbage.main?["text/plain"] == "'after'",
                "\(garbage)"
            )

            // A bash context keeps its variables and working directory between cells.
            let shell = try await code.contexts { $0.create = .with { $0.language = "bash" } }
            _ = try await code.run("X=5; cd /tmp", context: shell.context.id)
            let echoed = try await code.run("echo $X $(pwd)", context: shell.context.id)
            #expect(echoed.stdout == "5 /tmp\n" && echoed.done?.end == .codeCellOk, "\(echoed)")
            let failed = try await code.run("false", context: shell.context.id)
            #expect(failed.error?.name == "ExitCode" && failed.error?.value == "1", "\(failed)")
            _ = try await code.contexts { $0.remove = shell.context.id }

            // A javascript context (node, which the host template has) keeps its declarations, and
            // its cell's completion value is the main result; a run naming only the language gets
            // that language's default context.
            if FileManager.default.isExecutableFile(atPath: "/usr/bin/node") {
                let script = try await code.contexts { $0.create = .with { $0.language = "javascript" } }
                _ = try await code.run(
                    "let n = 20; console.log('node', process.version.startsWith('v'))",
                    context: script.context.id
                )
                let doubled = try await code.run("n * 2 + 2", context: script.context.id)
                #expect(doubled.main?["text/plain"] == "42" && doubled.done?.end == .codeCellOk, "\(doubled)")
                let thrown = try await code.run("null.x", context: script.context.id)
                #expect(thrown.error?.name == "TypeError", "\(thrown)")
                _ = try await code.contexts { $0.remove = script.context.id }
                let byLanguage = try await code.run("[1, 2, 3].map((v) => v * v)", language: "javascript")
                #expect(byLanguage.main?["text/plain"] == "[ 1, 4, 9 ]", "\(byLanguage)")
                _ = try await code.contexts { $0.remove = byLanguage.done?.contextID ?? "" }
            }

            // Two contexts are apart: the second does not see the first's variables.
            let other = try await code.contexts { $0.create = .with { $0.language = "python" } }
            let otherID = other.context.id
            #expect(!otherID.isEmpty && otherID != contextID && other.context.alive, "\(other)")
            let missing = try await code.run("x", context: otherID)
            #expect(missing.error?.name == "NameError", "\(missing)")

            // One cell at a time per context: a second one meanwhile is refused as busy.
            let (printed, printing) = AsyncStream.makeStream(of: Void.self)
            let sleeping = Task {
                try await code.run(
                    "import time\nprint('sleeping')\ntime.sleep(3)\n'slept'",
                    context: otherID,
                    output: printing
                )
            }
            for await _ in printed { break }
            #expect(try await code.run("1", context: otherID).failure?.code == .sandboxBusy)
            #expect(try await sleeping.value.main?["text/plain"] == "'slept'")

            // A cell that ignores SIGINT is killed after the grace time; the context is then ended
            // until restarted, and a restart clears its state.
            let stuck = try await code.run(
                "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
                context: otherID,
                timeoutMs: 300
            )
            #expect(
                stuck.done?.end == .codeCellTimedOut && stuck.done?.message.contains("was killed") == true,
                "\(stuck)"
            )
            #expect(try await code.run("1", context: otherID).failure?.code == .sandboxContextEnded)
            let listed = try await code.contexts { $0.list = Hangar_V1_CodeContextList() }
            #expect(listed.list.contexts.map(\.id) == [contextID, otherID], "\(listed)")
            #expect(listed.list.contexts.map(\.alive) == [true, false], "\(listed)")
            let restarted = try await code.contexts { $0.restart = otherID }
            #expect(restarted.context.id == otherID && restarted.context.alive, "\(restarted)")
            #expect(try await code.run("'fresh'", context: otherID).main?["text/plain"] == "'fresh'")

            // A cell that ends its interpreter says so.
            let exited = try await code.run("import os\nos._exit(3)", context: otherID)
            #expect(exited.done?.end == .codeCellInterpreterDied, "\(exited)")
            #expect(exited.done?.message.contains("exited with code 3") == true, "\(exited)")
            let removed = try await code.contexts { $0.remove = otherID }
            guard case .ok = removed.outcome else { throw CodeTestFailure("remove: \(removed)") }
            #expect(try await code.run("1", context: otherID).failure?.code == .sandboxContextNotFound)

            // Another tenant does not find the sandbox; bad payloads get a clear error.
            let intruder = CodePlane(connection: cluster.tenantB, node: info.nodeID, tenant: "b", sandbox: info.id)
            #expect(try await intruder.run("x").failure?.code == .sandboxNotFound)
            let unknown = try await code.run("1", language: "cobol")
            #expect(unknown.failure?.code == .sandboxInvalidRequest, "\(unknown)")
        }
    }
}

private struct CodeTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One tenant's code requests to one sandbox.
private struct CodePlane {
    let connection: NATSConnection
    let node: String
    let tenant: String
    let sandbox: String

    /// What one cell's answer held.
    struct Cell: CustomStringConvertible {
        var stdout = ""
        var stderr = ""
        var results: [Hangar_V1_CodeResult] = []
        var error: Hangar_V1_CodeError?
        var done: Hangar_V1_CodeDone?
        var failure: Hangar_V1_SandboxError?

        var main: [String: String]? { results.first(where: \.main)?.data }

        var description: String {
            "stdout \(stdout.prefix(200).debugDescription), stderr \(stderr.prefix(300).debugDescription), "
                + "results \(results.map { $0.data.mapValues { $0.prefix(80) } }), error \(error.map { "\($0)" } ?? "-"), "
                + "done \(done.map { "\($0)" } ?? "-"), failure \(failure.map { "\($0)" } ?? "-")"
        }
    }

    func subject(_ verb: String) -> String {
        Subjects.sandboxData(node: node, tenant: tenant, sandbox: sandbox, verb: verb)
    }

    /// Runs `code` and collects its events until the last one (bounded: 30 s).
    func run(
        _ code: String,
        context: String = "",
        language: String = "",
        timeoutMs: UInt32 = 0,
        output: AsyncStream<Void>.Continuation? = nil
    ) async throws -> Cell {
        let request = Hangar_V1_CodeRunRequest.with {
            $0.code = code
            $0.contextID = context
            $0.language = language
            $0.timeoutMs = timeoutMs
        }
        let inbox =
            connection.options.inboxPrefix + ".code." + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let events = try await connection.subscribeConfirmed(inbox)
        defer { events.unsubscribe() }
        try connection.publish(subject("code.run"), payload: try request.serializedData(), replyTo: inbox)
        var cell = Cell()
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            guard let message = try await firstMessage(of: events, within: deadline - ContinuousClock.now) else {
                break
            }
            let event = try Hangar_V1_CodeRunEvent(serializedBytes: message.payload)
            switch event.kind {
            case .stream(let stream):
                output?.yield()
                if stream.stderr { cell.stderr += stream.text } else { cell.stdout += stream.text }
            case .result(let result): cell.results.append(result)
            case .error(let error): cell.error = error
            case .done(let done):
                cell.done = done
                return cell
            case .failure(let failure):
                cell.failure = failure
                return cell
            case .agentError(let error):
                throw CodeTestFailure("the agent refused the kernel: \(error)")
            case nil:
                continue
            }
        }
        throw CodeTestFailure("no end of the cell within 30 s: \(cell)")
    }

    func contexts(_ configure: (inout Hangar_V1_CodeContextRequest) -> Void) async throws -> Hangar_V1_CodeContextReply
    {
        var request = Hangar_V1_CodeContextRequest()
        configure(&request)
        let answer = try await connection.request(
            subject("code.contexts"),
            payload: try request.serializedData(),
            timeout: .seconds(40)
        )
        return try Hangar_V1_CodeContextReply(serializedBytes: answer.payload)
    }
}
