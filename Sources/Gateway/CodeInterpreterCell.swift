import Foundation
import HangarClient
import Hummingbird
import NIOCore

/// One cell of `POST /execute`: runs it in a Hangar code context and writes what it does as the JSON
/// lines E2B's code-interpreter server streams (one JSON object a line; the SDK's `parse_output`):
/// `stdout` / `stderr` with `text` and `timestamp`, `result` with the MIME bundle spread over `text`,
/// `html`, `png`, ... and `is_main_result`, `error` with `name`, `value`, `traceback`,
/// `number_of_executions`, `keepalive` while the cell is silent, and `end_of_execution` last.
///
/// A busy context is waited for (E2B's server queues cells on a context too); a context whose
/// interpreter died is restarted and the cell run in it (as Jupyter restarts a dead kernel). A client
/// that goes away mid-cell gets its cell interrupted (SIGINT, as E2B's server interrupts the kernel);
/// the context keeps its state.
struct CellRun: Sendable {
    let sandbox: Sandbox
    /// The context named by the request; nil: the sandbox's default context of ``language``.
    let contextID: String?
    let language: String
    let code: String
    /// Environment variables for this cell only (set before it, restored after).
    let env: [String: String]
    let timeout: Duration
    let defaults: DefaultCodeContexts

    /// One line to write.
    enum Line: Sendable {
        case event(TimedCodeEvent)
        case failure(any Error)
        case keepalive
        /// Time to write output held back for the rest of its line.
        case flush
    }

    /// How long a chunk of output without its line's end waits for the rest.
    static let lineWait = Duration.milliseconds(50)

    /// How long the answer waits for the cell's first event before it commits to 200 and streams
    /// (a cell that cannot run fails at once: no such context; a silent cell sends nothing for long).
    static let startGrace = Duration.milliseconds(250)

    /// Starts the cell; fails (nothing written yet) when it could not run: no such context, no such
    /// sandbox, a bad request.
    func start() async -> Result<StartedCell, any Error> {
        let (lines, output) = AsyncStream<Line>.makeStream()
        let gate = CellGate()
        let pump = Task { await self.pump(output, gate: gate) }
        let grace = Task {
            try? await Task.sleep(for: Self.startGrace)
            _ = await gate.decide(.success(()))
        }
        let outcome = await gate.wait()
        grace.cancel()
        return outcome.map { StartedCell(run: self, gate: gate, lines: lines, output: output, pump: pump) }
    }

    /// Runs the cell and passes its events to `output`; decides `gate` at the first event, or with
    /// the error that kept the cell from running (once decided, errors become lines).
    private func pump(_ output: AsyncStream<Line>.Continuation, gate: CellGate) async {
        let (prefix, cleanup) = Self.envCode(env, language: language)
        let source = prefix.map { $0 + "\n" + code } ?? code
        let deadline = ContinuousClock.now + timeout
        var delay = Duration.milliseconds(10)
        var restarted = false
        var ranIn: String?
        func fail(_ error: any Error) async {
            if !(await gate.decide(.failure(error))) { output.yield(.failure(error)) }
        }
        while !Task.isCancelled {
            var running = false
            await gate.setInFlight(true)
            do {
                let events = sandbox.runCodeTimedStream(
                    source,
                    context: contextID,
                    language: language,
                    timeout: timeout
                )
                for try await timed in events {
                    if !running {
                        running = true
                        _ = await gate.decide(.success(()))
                    }
                    output.yield(.event(timed))
                    if case .done(let done) = timed.event {
                        ranIn = done.contextID
                        if contextID == nil {
                            await defaults.remember(done.contextID, sandbox: sandbox.id, language: language)
                        }
                    }
                }
                break
            } catch let error as HangarClientError
                where !running && error.kind == .busy && ContinuousClock.now < deadline && !Task.isCancelled
            {
                await gate.setInFlight(false)
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .milliseconds(200))
            } catch let error as HangarClientError
                where !running && !restarted && error.code == "SANDBOX_CONTEXT_ENDED"
            {
                restarted = true
                guard let id = await endedContext(), (try? await sandbox.restartCodeContext(id)) != nil else {
                    await fail(error)
                    break
                }
            } catch {
                if running { output.yield(.failure(error)) } else { await fail(error) }
                break
            }
        }
        await gate.setInFlight(false)
        if let cleanup, let ranIn {
            _ = try? await sandbox.runCode(cleanup, context: ranIn, timeout: .seconds(30))
        }
        output.finish()
    }

    /// The context whose interpreter ended, to restart.
    private func endedContext() async -> String? {
        if let contextID { return contextID }
        if let id = await defaults.id(sandbox: sandbox.id, language: language) { return id }
        let ended = (try? await sandbox.listCodeContexts())?.filter { $0.language == language && !$0.alive } ?? []
        return ended.count == 1 ? ended[0].id : nil
    }

    /// Interrupts the cell (SIGINT to its context's kernel; a kernel between cells ignores it).
    func interrupt() async {
        guard let contexts = try? await sandbox.listCodeContexts() else { return }
        var target: CodeContext?
        if let contextID {
            target = contexts.first { $0.id == contextID }
        } else if let id = await defaults.id(sandbox: sandbox.id, language: language) {
            target = contexts.first { $0.id == id }
        }
        if target == nil, contextID == nil {
            // The first cell of a default context has not told its id yet: it is the one of its language.
            let same = contexts.filter { $0.language == language }
            if same.count == 1 { target = same[0] }
        }
        guard let target, target.alive, target.pid != 0 else { return }
        try? await sandbox.commands.signal(pid: target.pid, SIGINT)
    }

    /// The code that sets `env` before the cell and the code that restores it after (E2B's server
    /// does the same with code in the cell's language); nil when there is nothing to set.
    static func envCode(_ env: [String: String], language: String) -> (prefix: String?, cleanup: String?) {
        guard !env.isEmpty else { return (nil, nil) }
        let keys = env.keys.sorted()
        switch language {
        case "python":
            let dict =
                "{" + keys.map { "\(JSONText.string($0)): \(JSONText.string(env[$0] ?? ""))" }.joined(separator: ", ")
                + "}"
            let names = "[" + keys.map { JSONText.string($0) }.joined(separator: ", ") + "]"
            let prefix =
                "__hangar_env = {__k: __import__('os').environ.get(__k) for __k in \(names)}; __import__('os').environ.update(\(dict))"
            let cleanup = """
                for __k, __v in __hangar_env.items():
                    __import__('os').environ.pop(__k, None) if __v is None else __import__('os').environ.__setitem__(__k, __v)
                del __hangar_env, __k, __v
                """
            return (prefix, cleanup)
        case "bash":
            let names = keys.filter { $0.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil }
            guard !names.isEmpty else { return (nil, nil) }
            let quote = { (text: String) in "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            let prefix = names.map { "export \($0)=\(quote(env[$0] ?? ""))" }.joined(separator: "; ")
            return (prefix, "unset " + names.joined(separator: " "))
        case "javascript":
            // Saved, set, and put back by the cleanup cell; `void` keeps the cell's value its own.
            let object =
                "{" + keys.map { "\(JSONText.string($0)): \(JSONText.string(env[$0] ?? ""))" }.joined(separator: ", ")
                + "}"
            let prefix =
                "void (globalThis.__hangarEnv = Object.fromEntries(Object.keys(\(object)).map((k) => [k, process.env[k]])), Object.assign(process.env, \(object)));"
            let cleanup =
                "void (Object.entries(globalThis.__hangarEnv).forEach(([k, v]) => v === undefined ? delete process.env[k] : (process.env[k] = v)), delete globalThis.__hangarEnv);"
            return (prefix, cleanup)
        default:
            return (nil, nil)
        }
    }
}

/// A cell that started: its lines, written to the HTTP response.
struct StartedCell: Sendable {
    let run: CellRun
    let gate: CellGate
    let lines: AsyncStream<CellRun.Line>
    let output: AsyncStream<CellRun.Line>.Continuation
    let pump: Task<Void, Never>

    /// Writes the cell's lines as they come, a keepalive line after each silent 5 s, and
    /// `end_of_execution`. When the client has gone (a write fails) the cell is interrupted.
    func write(to writer: inout any ResponseBodyWriter) async throws {
        let output = self.output
        let keepalive = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: CodeInterpreterAPI.keepaliveInterval)
                if !Task.isCancelled { output.yield(.keepalive) }
            }
        }
        defer { keepalive.cancel() }
        var sawError = false
        var done = false
        // Output is written a line at a time, as Jupyter's kernel sends `print('hi')` (one "hi\n",
        // where Hangar's kernel reads "hi" and "\n"): a chunk without its line's end waits for the rest
        // (at most ``CellRun/lineWait``, or until anything else comes).
        var pending: (stream: String, text: String, time: Date)?
        do {
            for await line in lines {
                var text = ""
                if let held = pending {
                    var flush = true
                    if case .event(let timed) = line {
                        switch timed.event {
                        case .stdout, .stderr: flush = false
                        default: break
                        }
                    }
                    if case .keepalive = line { flush = false }
                    if flush {
                        text = CodeLines.output(held.stream, held.text, at: held.time)
                        pending = nil
                    }
                }
                switch line {
                case .keepalive: text += "{\"type\": \"keepalive\"}\n"
                case .flush: break
                case .failure(let error):
                    // E2B's server ends a cell it lost track of this way.
                    text += CodeLines.error(
                        name: "UnexpectedEndOfExecution",
                        value: GatewayError.from(error).message,
                        traceback: ""
                    )
                case .event(let timed):
                    switch timed.event {
                    case .stdout(let chunk), .stderr(let chunk):
                        let stream = if case .stdout = timed.event { "stdout" } else { "stderr" }
                        if let held = pending, held.stream != stream {
                            text += CodeLines.output(held.stream, held.text, at: held.time)
                            pending = nil
                        }
                        let joined = (pending?.text ?? "") + chunk
                        let time = pending?.time ?? timed.timestamp ?? Date()
                        if joined.hasSuffix("\n") {
                            text += CodeLines.output(stream, joined, at: time)
                            pending = nil
                        } else {
                            if pending == nil {
                                Task {
                                    try? await Task.sleep(for: CellRun.lineWait)
                                    output.yield(.flush)
                                }
                            }
                            pending = (stream, joined, time)
                        }
                    case .result(let result): text += CodeLines.result(result)
                    case .error(let error):
                        sawError = true
                        text += CodeLines.error(name: error.name, value: error.value, traceback: error.traceback)
                    case .done(let cell):
                        done = true
                        if !sawError, let error = CodeLines.endError(cell) { text += error }
                        text += "{\"type\": \"number_of_executions\", \"execution_count\": \(cell.executionCount)}\n"
                    }
                }
                if !text.isEmpty { try await writer.write(ByteBuffer(string: text)) }
            }
            if let held = pending {
                try await writer.write(ByteBuffer(string: CodeLines.output(held.stream, held.text, at: held.time)))
            }
            try await writer.write(ByteBuffer(string: "{\"type\": \"end_of_execution\"}\n"))
            try await writer.finish(nil)
        } catch {
            keepalive.cancel()
            // The client went away. A cell that runs is interrupted (the pump ends with it and
            // restores env vars); one still waiting for its busy context is not run at all.
            if await gate.inFlight {
                if !done { await run.interrupt() }
            } else {
                pump.cancel()
            }
            throw error
        }
    }
}

/// Whether a cell's answer is decided (200 and stream, or an error status), and whether its request
/// is with the node (rather than waiting for a busy context).
actor CellGate {
    private var outcome: Result<Void, any Error>?
    private var waiter: CheckedContinuation<Result<Void, any Error>, Never>?
    /// Whether a run of the cell is with the node.
    private(set) var inFlight = false

    /// Decides the answer unless it is decided; whether this call decided it.
    func decide(_ result: Result<Void, any Error>) -> Bool {
        guard outcome == nil else { return false }
        outcome = result
        waiter?.resume(returning: result)
        waiter = nil
        return true
    }

    /// The answer, once decided.
    func wait() async -> Result<Void, any Error> {
        if let outcome { return outcome }
        return await withCheckedContinuation { waiter = $0 }
    }

    func setInFlight(_ value: Bool) { inFlight = value }
}

/// The JSON lines of `/execute`, spelled as E2B's server (Python's `json.dumps`) spells them.
enum CodeLines {
    static func output(_ type: String, _ text: String, at time: Date) -> String {
        "{\"type\": \"\(type)\", \"text\": \(JSONText.string(text)), \"timestamp\": \(JSONText.string(timestamp(time)))}\n"
    }

    static func error(name: String, value: String, traceback: String) -> String {
        "{\"type\": \"error\", \"name\": \(JSONText.string(name)), \"value\": \(JSONText.string(value)), \"traceback\": \(JSONText.string(traceback))}\n"
    }

    /// The error line of a cell that ended without raising but not well (no `error` event came).
    static func endError(_ cell: CellDone) -> String? {
        let name: String
        switch cell.end {
        case .ok, .error: return nil
        case .timedOut: name = "TimeoutError"
        case .outputLimit: name = "OutputLimitExceeded"
        case .interpreterDied: name = "InterpreterDied"
        }
        return error(name: name, value: cell.message, traceback: "")
    }

    /// MIME types E2B's server moves into their own field; the others go to `extra`.
    static let fields: [(mime: String, field: String, json: Bool)] = [
        ("text/plain", "text", false), ("text/html", "html", false), ("text/markdown", "markdown", false),
        ("image/svg+xml", "svg", false), ("image/png", "png", false), ("image/jpeg", "jpeg", false),
        ("application/pdf", "pdf", false), ("text/latex", "latex", false), ("application/json", "json", true),
        ("application/javascript", "javascript", false), ("e2b/data", "data", true), ("e2b/chart", "chart", true),
    ]

    static func result(_ result: CodeResult) -> String {
        var data = result.data
        var line = "{\"type\": \"result\""
        for (mime, field, json) in fields {
            guard var value = data.removeValue(forKey: mime) else { continue }
            if mime == "text/plain", let first = value.first, first == "'" || first == "\"", value.last == first {
                // E2B's server strips the quotes of a string's repr.
                value = String(value.dropFirst().dropLast())
            }
            if json, let compact = JSONText.compact(value) {
                line += ", \"\(field)\": \(compact)"
            } else if json {
                data[mime] = value
            } else {
                line += ", \"\(field)\": \(JSONText.string(value))"
            }
        }
        let extra = data.keys.sorted().map { "\(JSONText.string($0)): \(JSONText.string(data[$0] ?? ""))" }
        line += ", \"extra\": {" + extra.joined(separator: ", ") + "}"
        line += ", \"is_main_result\": \(result.main)}\n"
        return line
    }

    /// `time` as Python's `datetime.isoformat()` of a UTC time: `2024-01-02T03:04:05.123456+00:00`.
    static func timestamp(_ time: Date) -> String {
        let micros = Int64((time.timeIntervalSince1970 * 1_000_000).rounded())
        var seconds = time_t(micros / 1_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00",
            Int(parts.tm_year) + 1900,
            Int(parts.tm_mon) + 1,
            Int(parts.tm_mday),
            Int(parts.tm_hour),
            Int(parts.tm_min),
            Int(parts.tm_sec),
            Int(micros % 1_000_000)
        )
    }
}

/// JSON text written by hand: ASCII only (as Python's `json.dumps` writes it, so no line separator
/// can split a line for a reader that splits on Unicode line breaks), one line.
enum JSONText {
    /// `text` as a JSON string literal.
    static func string(_ text: String) -> String {
        var out = "\""
        out.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            escape(scalar, into: &out)
        }
        out += "\""
        return out
    }

    private static func escape(_ scalar: Unicode.Scalar, into out: inout String) {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20 || (scalar.value >= 0x7F && scalar.value <= 0xFFFF):
            out += String(format: "\\u%04x", scalar.value)
        case _ where scalar.value > 0xFFFF:
            let value = scalar.value - 0x10000
            out += String(format: "\\u%04x\\u%04x", 0xD800 + (value >> 10), 0xDC00 + (value & 0x3FF))
        default: out.unicodeScalars.append(scalar)
        }
    }

    /// The JSON text `json` on one line (whitespace between tokens dropped, strings re-escaped);
    /// nil if it is not JSON.
    static func compact(_ json: String) -> String? {
        guard (try? JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed])) != nil else {
            return nil
        }
        var out = ""
        out.reserveCapacity(json.utf8.count)
        var inString = false
        var escaped = false
        for scalar in json.unicodeScalars {
            if inString {
                if escaped {
                    escaped = false
                    out.unicodeScalars.append(scalar)
                } else if scalar == "\\" {
                    escaped = true
                    out += "\\"
                } else if scalar == "\"" {
                    inString = false
                    out += "\""
                } else {
                    escape(scalar, into: &out)
                }
            } else if scalar == "\"" {
                inString = true
                out += "\""
            } else if scalar != " " && scalar != "\n" && scalar != "\r" && scalar != "\t" {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
