import Foundation
import Glibc
import Synchronization
import Testing

@testable import HangarNode

/// The real code kernel (``CodeKernel/source``) under the host's `/usr/bin/python3`, driven through
/// pipes the way the node drives it.
@Suite(
    "Code-interpreter kernel, real python3",
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"))
)
struct CodeKernelTests {
    @Test("state lasts across cells; the last expression's value is the main result, a statement has none")
    func stateAndResults() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        let ready = try await kernel.ready()
        #expect(ready.language == "python")
        #expect(ready.pid == kernel.pid)
        let assign = try await kernel.run("x = 1")
        #expect(assign.results.isEmpty)
        #expect(assign.errors.isEmpty)
        #expect(assign.done.executionCount == 1)
        let sum = try await kernel.run("x + 1")
        #expect(sum.results.count == 1)
        #expect(sum.results.first?.main == true)
        #expect(sum.results.first?.data?["text/plain"] == .string("2"))
        #expect(sum.done.executionCount == 2)
        let literal = try await kernel.run("y = 5\n1+1")
        #expect(literal.results.map(\.main) == [true])
        #expect(literal.results.first?.data?["text/plain"] == .string("2"))
        let underscore = try await kernel.run("def f(n):\n    return n * y\nf(_)")
        #expect(underscore.results.first?.data?["text/plain"] == .string("10"))
        let none = try await kernel.run("None")
        #expect(none.results.isEmpty)
        #expect(none.done.executionCount == 5)
    }

    @Test("print, os.write(1) and a subprocess's output are stdout frames before done; stderr apart")
    func output() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        let cell = try await kernel.run(
            """
            import os, subprocess, sys
            print("a")
            os.write(1, b"b\\n")
            subprocess.run(["echo", "x"])
            print("e1", file=sys.stderr)
            os.write(2, b"e2\\n")
            """
        )
        #expect(cell.stdout == "a\nb\nx\n")
        #expect(cell.stderr == "e1\ne2\n")
        #expect(cell.errors.isEmpty)
        // Nothing of the cell's comes after its done frame.
        let next = try await kernel.run("print('next')")
        #expect(next.stdout == "next\n")
        // Large output comes in chunks of at most 64 KiB, all of it, multi-byte characters whole.
        let large = try await kernel.run("import sys\nsys.stdout.write('é' * 150000)\nsys.stdout.flush()")
        #expect(large.stdout == String(repeating: "é", count: 150000))
        #expect(large.frames.filter { $0.type == "stream" }.count > 1)
        #expect(large.frames.allSatisfy { ($0.text?.utf8.count ?? 0) <= 64 << 10 })
        #expect(kernel.frames().filter { $0.id == cell.done.id }.last == cell.done)
    }

    @Test("print's pieces come as one stream frame a line: a line waits for its end, the rest for the cell's end")
    func lineFraming() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        let cell = try await kernel.run(
            """
            import time
            print("a", end="")
            time.sleep(0.3)
            print("b")
            print("c", end="")
            """
        )
        let texts = cell.frames.filter { $0.type == "stream" }.compactMap(\.text)
        // Without line buffering "a" would come alone, 0.3 s before "b\n".
        #expect(texts.joined() == "ab\nc")
        #expect(texts.first?.hasPrefix("ab\n") == true)
    }

    @Test("an error gives its name, value and the cell's traceback; the context lives on")
    func errors() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        _ = try await kernel.run("x = 7")
        let division = try await kernel.run("def g():\n    return 1/0\ng()")
        let error = try #require(division.errors.first)
        #expect(error.name == "ZeroDivisionError")
        #expect(error.value == "division by zero")
        let traceback = error.traceback ?? ""
        #expect(traceback.hasPrefix("Traceback (most recent call last):\n"))
        #expect(traceback.contains("return 1/0"))
        #expect(traceback.hasSuffix("ZeroDivisionError: division by zero\n"))
        #expect(!traceback.contains("run_python"), "kernel frames in \(traceback)")
        #expect(division.done.executionCount == 2)
        let syntax = try await kernel.run("def f(:")
        #expect(syntax.errors.first?.name == "SyntaxError")
        #expect(syntax.errors.first?.traceback?.contains("def f(:") == true)
        let exit = try await kernel.run("import sys\nsys.exit(4)")
        #expect(exit.errors.first?.name == "SystemExit")
        #expect(exit.errors.first?.value == "4")
        let after = try await kernel.run("x")
        #expect(after.results.first?.data?["text/plain"] == .string("7"))
        #expect(after.done.executionCount == 5)
    }

    @Test("SIGINT stops a running cell with KeyboardInterrupt; between cells it is ignored")
    func interrupt() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        _ = try await kernel.run("x = 41")
        let after = try await Self.interruptLoop(kernel, "print('started')\nwhile True: pass")
        #expect(after.results.first?.data?["text/plain"] == .string("42"))
        #expect(kernel.isRunning)
    }

    /// Runs `loop` (which prints "started" and never ends), interrupts it with SIGINT (a
    /// KeyboardInterrupt error), sends SIGINT again between cells (logged and ignored), then runs
    /// `x + 1` and returns that cell.
    static func interruptLoop(_ kernel: TestKernel, _ loop: String) async throws -> KernelCell {
        kernel.send(id: "loop", code: loop)
        try await kernel.waitFor { $0.contains { $0.id == "loop" && $0.text == "started\n" } }
        kernel.interrupt()
        let interrupted = try await kernel.cell("loop")
        #expect(interrupted.errors.map(\.name) == ["KeyboardInterrupt"])
        kernel.interrupt()
        try await kernel.waitFor { $0.contains { $0.type == "log" && $0.text?.contains("SIGINT") == true } }
        return try await kernel.run("x + 1")
    }

    @Test("an open matplotlib figure comes as a PNG result; plt.show() needs no display")
    func matplotlib() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        let cell = try await kernel.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        #expect(cell.errors.isEmpty, "\(cell.errors)")
        let figure = try #require(cell.results.first { $0.data?["image/png"] != nil })
        #expect(figure.main == false)
        #expect(figure.data?["text/plain"]?.string?.hasPrefix("<Figure size") == true)
        let png = try #require(Data(base64Encoded: figure.data?["image/png"]?.string ?? ""))
        #expect(png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
        // Figures are closed once sent.
        let next = try await kernel.run("len(plt.get_fignums())")
        #expect(next.results.first?.data?["text/plain"] == .string("0"))
    }

    @Test("rich results: a DataFrame as HTML, _repr_json_ as JSON, display() as a non-main result")
    func richResults() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        let frame = try await kernel.run("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
        let table = try #require(frame.results.first)
        #expect(table.main == true)
        #expect(table.data?["text/html"]?.string?.contains("<table") == true)
        #expect(table.data?["text/plain"]?.string?.contains("a") == true)
        let json = try await kernel.run(
            """
            class J:
                def _repr_json_(self):
                    return {"a": [1, "two", None, True]}
                def _repr_html_(self):
                    raise RuntimeError("a failing repr")
            J()
            """
        )
        #expect(json.errors.isEmpty)
        #expect(
            json.results.first?.data?["application/json"]
                == .object(["a": .array([.number(1), .string("two"), .null, .bool(true)])])
        )
        #expect(json.results.first?.data?["text/html"] == nil)
        let shown = try await kernel.run("display(40 + 2)\n'last'")
        #expect(shown.results.map(\.main) == [false, true])
        #expect(shown.results.first?.data?["text/plain"] == .string("42"))
        #expect(shown.results.last?.data?["text/plain"] == .string("'last'"))
    }

    @Test("bash: variables and the directory last; a non-zero status is an ExitCode error; exit ends it")
    func bash() async throws {
        let kernel = try TestKernel(language: "bash")
        defer { kernel.stop() }
        let ready = try await kernel.ready()
        #expect(ready.language == "bash")
        _ = try await kernel.run("X=5")
        #expect(try await kernel.run("echo $X").stdout == "5\n")
        _ = try await kernel.run("cd /tmp")
        #expect(try await kernel.run("pwd").stdout == "/tmp\n")
        let failing = try await kernel.run("echo oops >&2; false")
        #expect(failing.stderr == "oops\n")
        #expect(failing.errors.first?.name == "ExitCode")
        #expect(failing.errors.first?.value == "1")
        #expect(failing.results.isEmpty)
        kernel.send(id: "sleep", code: "echo started; sleep 30; echo after")
        try await kernel.waitFor { $0.contains { $0.id == "sleep" && $0.text == "started\n" } }
        kernel.interrupt()
        let interrupted = try await kernel.cell("sleep")
        #expect(interrupted.errors.map(\.name) == ["KeyboardInterrupt"])
        #expect(interrupted.stdout == "started\n")
        kernel.interrupt()
        try await kernel.waitFor { $0.contains { $0.type == "log" && $0.text?.contains("SIGINT") == true } }
        #expect(try await kernel.run("echo $X $PWD").stdout == "5 /tmp\n")
        let exit = try await kernel.run("exit 4")
        #expect(exit.errors.first?.name == "ShellExited")
        let status = try await kernel.exitStatus()
        #expect(status != 0)
    }

    @Test(
        "javascript: declarations last across cells; the completion value is the main result; errors, console output, SIGINT",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/node"))
    )
    func javascript() async throws {
        let kernel = try TestKernel(language: "javascript")
        defer { kernel.stop() }
        let ready = try await kernel.ready()
        #expect(ready.language == "javascript")
        let declare = try await kernel.run("let x = 41; const f = (n) => n + 1;")
        #expect(declare.results.isEmpty && declare.errors.isEmpty, "\(declare)")
        let value = try await kernel.run("f(x)")
        #expect(value.results.map(\.main) == [true])
        #expect(value.results.first?.data?["text/plain"] == .string("42"))
        let object = try await kernel.run("({a: [1, 2], b: 'two'})")
        #expect(object.results.first?.data?["text/plain"] == .string("{ a: [ 1, 2 ], b: 'two' }"))
        let printed = try await kernel.run(
            "console.log('hi', x); console.error('oops'); process.stdout.write('raw\\n'); 7"
        )
        #expect(printed.stdout == "hi 41\nraw\n", "\(printed)")
        #expect(printed.stderr == "oops\n", "\(printed)")
        #expect(printed.results.first?.data?["text/plain"] == .string("7"))
        let child = try await kernel.run(
            "require('child_process').execSync('echo from-a-child', {stdio: 'inherit'}); undefined"
        )
        #expect(child.stdout == "from-a-child\n" && child.results.isEmpty, "\(child)")
        let thrown = try await kernel.run("function g() { throw new TypeError('bad ' + x) }\ng()")
        #expect(thrown.errors.first?.name == "TypeError")
        #expect(thrown.errors.first?.value == "bad 41")
        #expect(thrown.errors.first?.traceback?.contains("<cell ") == true, "\(thrown.errors)")
        let syntax = try await kernel.run("let = ;")
        #expect(syntax.errors.first?.name == "SyntaxError", "\(syntax.errors)")
        let after = try await Self.interruptLoop(kernel, "console.log('started'); while (true) {}")
        #expect(after.results.first?.data?["text/plain"] == .string("42"))
        #expect(after.done.executionCount == 9)
        #expect(kernel.isRunning)
    }

    @Test(
        "javascript: a top-level await runs as node's REPL runs it (declarations persist, the last expression is the result, rejections are errors); SIGINT ends a pending one",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/node"))
    )
    func javascriptTopLevelAwait() async throws {
        let kernel = try TestKernel(language: "javascript")
        defer { kernel.stop() }
        _ = try await kernel.ready()
        let awaited = try await kernel.run(
            "const wait = (ms, v) => new Promise((r) => setTimeout(() => r(v), ms));\nconst x = await wait(20, 41);\nx + 1"
        )
        #expect(awaited.errors.isEmpty, "\(awaited.errors)")
        #expect(awaited.results.first?.data?["text/plain"] == .string("42"), "\(awaited)")
        // The declarations of that cell are globals now.
        let later = try await kernel.run("await wait(1, x * 2)")
        #expect(later.results.first?.data?["text/plain"] == .string("82"), "\(later)")
        let declared = try await kernel.run("let y = await wait(1, 'y');")
        #expect(declared.results.isEmpty && declared.errors.isEmpty, "\(declared)")
        #expect(try await kernel.run("y").results.first?.data?["text/plain"] == .string("'y'"))
        let rejected = try await kernel.run("await Promise.reject(new RangeError('no ' + x))")
        #expect(
            rejected.errors.first?.name == "RangeError" && rejected.errors.first?.value == "no 41",
            "\(rejected.errors)"
        )
        // A cell waiting on a promise that never settles ends at SIGINT; the context keeps its state.
        kernel.send(id: "forever", code: "console.log('started'); await new Promise(() => {})")
        try await kernel.waitFor { $0.contains { $0.id == "forever" && $0.text == "started\n" } }
        kernel.interrupt()
        let interrupted = try await kernel.cell("forever")
        #expect(interrupted.errors.map(\.name) == ["KeyboardInterrupt"])
        #expect(try await kernel.run("x + 1").results.first?.data?["text/plain"] == .string("42"))
        #expect(kernel.isRunning)
    }

    @Test("javascript without node: the kernel says so on stderr and exits with status 2")
    func javascriptWithoutNode() async throws {
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("no-node-\(uniqueTag())").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let kernel = try TestKernel(language: "javascript", path: empty)
        defer { kernel.stop() }
        #expect(try await kernel.exitStatus() == 2)
        let deadline = ContinuousClock.now + .seconds(10)
        while !kernel.diagnostics.contains("javascript needs node") && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(
            kernel.diagnostics.contains("javascript needs node (nodejs), and this sandbox has none"),
            "\(kernel.diagnostics)"
        )
    }

    @Test("os._exit(3) ends the kernel with status 3")
    func hardExit() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        _ = try await kernel.ready()
        kernel.send(id: "exit", code: "import os\nos._exit(3)")
        #expect(try await kernel.exitStatus() == 3)
    }

    @Test("malformed requests are logged and skipped; EOF ends the kernel with status 0")
    func malformed() async throws {
        let kernel = try TestKernel(language: "python")
        defer { kernel.stop() }
        _ = try await kernel.ready()
        kernel.write(Data("garbage\n{\"type\":\"nope\"}\n[1]\n".utf8))
        try await kernel.waitFor { $0.filter { $0.type == "log" }.count >= 3 }
        let cell = try await kernel.run("1+1")
        #expect(cell.results.first?.data?["text/plain"] == .string("2"))
        #expect(cell.done.executionCount == 1)
        kernel.closeInput()
        #expect(try await kernel.exitStatus() == 0)
    }

    @Test("request lines are one JSON line each, and decode back")
    func request() throws {
        let line = CodeKernel.request(id: "c1", code: "print(\"a\")\nx = 1")
        #expect(line.last == 0x0A)
        #expect(line.dropLast().firstIndex(of: 0x0A) == nil)
        let object = try JSONSerialization.jsonObject(with: line) as? [String: String]
        #expect(object == ["type": "run", "id": "c1", "code": "print(\"a\")\nx = 1"])
        #expect(CodeKernel.argv(language: "bash") == ["python3", "-u", "-I", "-c", CodeKernel.source, "bash"])
        #expect(!CodeKernel.source.contains("\"\"\"#"))
    }

    @Test("a kernel's arguments name its code context, and only such a kernel's are read as one")
    func contextInArguments() {
        let context = CodeKernel.Context(id: "ctx-3", language: "bash", isDefault: true, cwd: "/home/user/work dir")
        let argv = CodeKernel.argv(language: "bash", context: context)
        #expect(argv.prefix(6) == CodeKernel.argv(language: "bash")[...])
        #expect(CodeKernel.context(of: argv) == context)
        var named = context
        named.isDefault = false
        #expect(CodeKernel.context(of: CodeKernel.argv(language: "bash", context: named)) == named)
        // Not a context: a kernel without one (of a node before), another program, another kernel
        // source (another node version), a malformed id or role, an unknown language.
        #expect(CodeKernel.context(of: CodeKernel.argv(language: "bash")) == nil)
        #expect(CodeKernel.context(of: ["sh", "-c", "sleep 1"]) == nil)
        var other = argv
        other[4] = "print('not the kernel')"
        #expect(CodeKernel.context(of: other) == nil)
        // Ids past the bound, which the node's next id would overflow from, or not as it writes them.
        for (index, value) in [
            (6, "ctx-x"), (6, "3"), (6, "ctx-0"), (6, "ctx-03"), (6, "ctx-+3"), (6, "ctx-1000001"),
            (6, "ctx-\(Int.max)"), (7, "maybe"), (5, "cobol"),
        ] {
            var broken = argv
            broken[index] = value
            #expect(CodeKernel.context(of: broken) == nil, "\(index): \(value)")
        }
    }

    @Test("the line splitter gives the same lines whatever the chunks, and refuses a line over its cap")
    func splitter() throws {
        let text = Data("{\"a\":1}\n\n{\"b\":\"é\"}\nlast\n".utf8)
        for cut in 0...text.count {
            for second in cut...text.count {
                var splitter = CodeKernelLineSplitter(maximumLineBytes: 16)
                var lines: [Data] = []
                lines += try splitter.feed(text.subdata(in: 0..<cut))
                lines += try splitter.feed(text.subdata(in: cut..<second))
                lines += try splitter.feed(text.subdata(in: second..<text.count))
                #expect(
                    lines.map { String(decoding: $0, as: UTF8.self) } == ["{\"a\":1}", "", "{\"b\":\"é\"}", "last"]
                )
                #expect(splitter.remainder.isEmpty)
            }
        }
        var capped = CodeKernelLineSplitter(maximumLineBytes: 4)
        #expect(try capped.feed(Data("1234\nab".utf8)) == [Data("1234".utf8)])
        #expect(capped.remainder == Data("ab".utf8))
        #expect(throws: CodeKernelLineTooLong.self) { try capped.feed(Data("cde".utf8)) }
        var single = CodeKernelLineSplitter(maximumLineBytes: 4)
        #expect(throws: CodeKernelLineTooLong.self) { try single.feed(Data("12345\n".utf8)) }
        let frame = try CodeKernelFrame.decode(Data(#"{"type":"done","id":"c1","execution_count":3}"#.utf8))
        #expect(frame.type == "done" && frame.id == "c1" && frame.executionCount == 3)
    }
}

/// The frames of one cell, up to and including its `done`.
struct KernelCell {
    var frames: [CodeKernelFrame]
    var done: CodeKernelFrame

    var results: [CodeKernelFrame] { frames.filter { $0.type == "result" } }
    var errors: [CodeKernelFrame] { frames.filter { $0.type == "error" } }
    var stdout: String { stream("stdout") }
    var stderr: String { stream("stderr") }

    func stream(_ name: String) -> String {
        frames.filter { $0.type == "stream" && $0.name == name }.compactMap(\.text).joined()
    }
}

struct KernelTimeout: Error, CustomStringConvertible {
    var description: String
}

/// A kernel process with pipes for stdin, stdout and stderr; a thread splits and decodes its stdout.
final class TestKernel: @unchecked Sendable {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let errorOutput = Pipe()
    private let state = Mutex<(frames: [CodeKernelFrame], stderr: Data, problem: String?)>(([], Data(), nil))
    private var counter = 0

    /// A kernel of `language`; with `path`, that `PATH` instead of the test's own.
    init(language: String, path: String? = nil) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = Array(CodeKernel.argv(language: language).dropFirst())
        if let path { process.environment = ["PATH": path] }
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errorOutput
        try process.run()
        let outputFD = output.fileHandleForReading.fileDescriptor
        let errorFD = errorOutput.fileHandleForReading.fileDescriptor
        Thread.detachNewThread { [self] in
            var splitter = CodeKernelLineSplitter()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(outputFD, &buffer, buffer.count)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return }
                do {
                    for line in try splitter.feed(Data(buffer[0..<count])) {
                        let frame = try CodeKernelFrame.decode(line)
                        state.withLock { $0.frames.append(frame) }
                    }
                } catch {
                    state.withLock { $0.problem = "\(error)" }
                    return
                }
            }
        }
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = read(errorFD, &buffer, buffer.count)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return }
                state.withLock { $0.stderr.append(contentsOf: buffer[0..<count]) }
            }
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    /// What the kernel wrote to its own stderr so far.
    var diagnostics: String { state.withLock { String(decoding: $0.stderr, as: UTF8.self) } }

    func frames() -> [CodeKernelFrame] {
        state.withLock { $0.frames }
    }

    func write(_ data: Data) {
        try? input.fileHandleForWriting.write(contentsOf: data)
    }

    func send(id: String, code: String) {
        write(CodeKernel.request(id: id, code: code))
    }

    func closeInput() {
        try? input.fileHandleForWriting.close()
    }

    func interrupt() {
        kill(pid, SIGINT)
    }

    /// Waits (polling, at most `timeout`) until `condition` holds for the frames so far.
    func waitFor(
        within timeout: Duration = .seconds(15),
        _ condition: ([CodeKernelFrame]) -> Bool
    ) async throws {
        let end = ContinuousClock.now + timeout
        while true {
            let (frames, stderr, problem) = state.withLock { ($0.frames, $0.stderr, $0.problem) }
            if let problem { throw KernelTimeout(description: "bad kernel output: \(problem)") }
            if condition(frames) { return }
            guard ContinuousClock.now < end else {
                throw KernelTimeout(
                    description: "no such frames within \(timeout); frames: \(frames), stderr: \(text(stderr))"
                )
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func ready() async throws -> CodeKernelFrame {
        try await waitFor { $0.contains { $0.type == "ready" } }
        return try #require(frames().first)
    }

    /// The frames of cell `id` once its `done` has come.
    func cell(_ id: String) async throws -> KernelCell {
        try await waitFor { $0.contains { $0.type == "done" && $0.id == id } }
        let frames = frames().filter { $0.id == id }
        let done = try #require(frames.first { $0.type == "done" })
        #expect(frames.last == done, "frames after done: \(frames)")
        return KernelCell(frames: frames, done: done)
    }

    func run(_ code: String) async throws -> KernelCell {
        counter += 1
        let id = "cell-\(counter)"
        send(id: id, code: code)
        return try await cell(id)
    }

    /// The kernel's exit status once it has exited (at most `timeout`).
    func exitStatus(within timeout: Duration = .seconds(15)) async throws -> Int32 {
        let end = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < end else { throw KernelTimeout(description: "the kernel did not exit") }
            try await Task.sleep(for: .milliseconds(10))
        }
        return process.terminationStatus
    }

    /// Ends the kernel: EOF, then SIGKILL for one still running a cell.
    func stop() {
        closeInput()
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }
}
