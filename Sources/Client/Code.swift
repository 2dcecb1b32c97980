import Foundation
import HangarShared

/// A value a cell showed: its last expression (``main``), a matplotlib figure, or what `display()` showed.
public struct CodeResult: Sendable, Equatable {
    /// Whether it is the value of the cell's last expression.
    public var main: Bool
    /// The value by MIME type: text/plain, text/html, image/svg+xml, ... as text; image/png and
    /// image/jpeg in base64; application/json as JSON text.
    public var data: [String: String]

    /// The text/plain form, if it has one.
    public var text: String? { data["text/plain"] }
}

/// The exception a cell raised (Python), or a bash cell's non-zero status (name "ExitCode").
public struct CodeError: Sendable, Equatable {
    /// The exception's type, e.g. `ZeroDivisionError`.
    public var name: String
    /// Its message.
    public var value: String
    /// The traceback, as the interpreter printed it.
    public var traceback: String
}

/// How a cell ended.
public enum CellEnd: Sendable, Equatable {
    /// It ran to its end.
    case ok
    /// It raised (``Execution/error``); the context keeps its state.
    case error
    /// It was interrupted at its timeout.
    case timedOut
    /// It wrote more than the node forwards for one cell and was interrupted.
    case outputLimit
    /// Its interpreter ended: restart the context.
    case interpreterDied
}

/// How a cell ended, as the last event of ``Sandbox/runCodeStream(_:context:language:timeout:)``.
public struct CellDone: Sendable, Equatable {
    /// The context's count of cells so far.
    public var executionCount: Int
    /// How it ended.
    public var end: CellEnd
    /// For a person, when ``end`` is not `.ok`.
    public var message: String
    /// The context it ran in.
    public var contextID: String
    /// How long it ran.
    public var duration: Duration
}

/// One event of a running cell.
public enum CodeEvent: Sendable, Equatable {
    /// Text it wrote to standard output.
    case stdout(String)
    /// Text it wrote to standard error.
    case stderr(String)
    /// A value it showed.
    case result(CodeResult)
    /// The exception it raised.
    case error(CodeError)
    /// It ended: the last event.
    case done(CellDone)
}

/// An event of a running cell and, for what it wrote, when the kernel read it
/// (``Sandbox/runCodeTimedStream(_:context:language:timeout:)``).
public struct TimedCodeEvent: Sendable, Equatable {
    /// The event.
    public var event: CodeEvent
    /// When the kernel read a ``CodeEvent/stdout(_:)`` or ``CodeEvent/stderr(_:)`` chunk; nil for
    /// the other events.
    public var timestamp: Date?
}

/// What one cell did (``Sandbox/runCode(_:context:language:timeout:)``).
public struct Execution: Sendable, Equatable {
    /// Everything it wrote to standard output.
    public var stdout = ""
    /// Everything it wrote to standard error.
    public var stderr = ""
    /// The values it showed, in order.
    public var results: [CodeResult] = []
    /// The exception it raised, if it raised.
    public var error: CodeError?
    /// The context's count of cells, this one included.
    public var executionCount = 0
    /// How it ended.
    public var end = CellEnd.ok
    /// For a person, when ``end`` is not `.ok`.
    public var message = ""
    /// The context it ran in.
    public var contextID = ""

    /// The text/plain value of its last expression, if it had one.
    public var text: String? { results.first(where: \.main)?.text }
}

/// A code context: an interpreter with its own state inside the sandbox.
public struct CodeContext: Sendable, Equatable {
    /// Its id, for ``Sandbox/runCode(_:context:language:timeout:)``.
    public var id: String
    /// "python", "bash" or "javascript" (node in the sandbox).
    public var language: String
    /// Its working directory when it started (empty: /home/user).
    public var cwd: String
    /// Its interpreter's pid in the sandbox.
    public var pid: UInt32
    /// How many cells it ran.
    public var executionCount: Int
    /// False once its interpreter ended: restart it.
    public var alive: Bool

    init(_ info: Hangar_V1_CodeContextInfo) {
        id = info.id
        language = info.language
        cwd = info.cwd
        pid = info.pid
        executionCount = Int(info.executionCount)
        alive = info.alive
    }
}

extension Sandbox {
    /// Runs a cell of `code` in the context `context` (nil: the sandbox's default context of
    /// `language`, "python", "bash" or "javascript", made on first use) and returns what it did once it ends.
    /// The context keeps its state between cells. A cell that raises is a result (``Execution/error``);
    /// a cell that cannot run (a busy context, no such context) throws. `timeout` (nil: 300 s)
    /// interrupts the cell.
    public func runCode(
        _ code: String,
        context: String? = nil,
        language: String = "python",
        timeout: Duration? = nil
    ) async throws -> Execution {
        var execution = Execution()
        for try await event in runCodeStream(code, context: context, language: language, timeout: timeout) {
            switch event {
            case .stdout(let text): execution.stdout += text
            case .stderr(let text): execution.stderr += text
            case .result(let result): execution.results.append(result)
            case .error(let error): execution.error = error
            case .done(let done):
                execution.executionCount = done.executionCount
                execution.end = done.end
                execution.message = done.message
                execution.contextID = done.contextID
                return execution
            }
        }
        throw HangarClientError(.badReply, "the cell's events ended before it was done")
    }

    /// Runs a cell (as ``runCode(_:context:language:timeout:)``) and yields what it does as it
    /// happens; `.done` is the last event.
    public func runCodeStream(
        _ code: String,
        context: String? = nil,
        language: String = "python",
        timeout: Duration? = nil
    ) -> AsyncThrowingStream<CodeEvent, any Error> {
        codeEvents(code, context: context, language: language, timeout: timeout) { event, _ in event }
    }

    /// Runs a cell as ``runCodeStream(_:context:language:timeout:)`` does, each event with the time
    /// the kernel read it (stdout and stderr chunks; nil for the other events).
    public func runCodeTimedStream(
        _ code: String,
        context: String? = nil,
        language: String = "python",
        timeout: Duration? = nil
    ) -> AsyncThrowingStream<TimedCodeEvent, any Error> {
        codeEvents(code, context: context, language: language, timeout: timeout) {
            TimedCodeEvent(event: $0, timestamp: $1)
        }
    }

    /// The events of one cell, each made by `make` from the event and its time (output chunks only).
    private func codeEvents<Event: Sendable>(
        _ code: String,
        context: String?,
        language: String,
        timeout: Duration?,
        _ make: @escaping @Sendable (CodeEvent, Date?) -> Event
    ) -> AsyncThrowingStream<Event, any Error> {
        var request = Hangar_V1_CodeRunRequest()
        request.contextID = context ?? ""
        request.language = language
        request.code = code
        do {
            if let timeout { request.timeoutMs = try milliseconds(timeout, what: "a cell's timeout") }
        } catch {
            return AsyncThrowingStream { $0.finish(throwing: error) }
        }
        let events = stream("code.run", request, within: (timeout ?? .seconds(300)) + hangar.timeouts.streamGrace)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await payload in events {
                        let event = try Hangar_V1_CodeRunEvent(serializedBytes: payload)
                        switch event.kind {
                        case .stream(let stream):
                            let time = Date(timeIntervalSince1970: Double(stream.timestampMs) / 1000)
                            continuation.yield(make(stream.stderr ? .stderr(stream.text) : .stdout(stream.text), time))
                        case .result(let result):
                            continuation.yield(make(.result(CodeResult(main: result.main, data: result.data)), nil))
                        case .error(let error):
                            let error = CodeError(name: error.name, value: error.value, traceback: error.traceback)
                            continuation.yield(make(.error(error), nil))
                        case .done(let done):
                            continuation.yield(make(.done(CellDone(done)), nil))
                            continuation.finish()
                            return
                        case .failure(let failure): throw await self.nodeError(failure)
                        case .agentError(let error): throw HangarClientError(error, about: "the code context")
                        case nil: continue
                        }
                    }
                    throw HangarClientError(.badReply, "the cell's events ended before it was done")
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Creates a code context of `language` ("python", "bash" or "javascript") with its own interpreter and state;
    /// `cwd` is its working directory (default /home/user), `env` goes over the sandbox's default.
    public func createCodeContext(
        language: String = "python",
        cwd: String? = nil,
        env: [String: String] = [:]
    ) async throws -> CodeContext {
        var create = Hangar_V1_CodeContextCreate()
        create.language = language
        create.cwd = cwd ?? ""
        create.env = env
        return CodeContext(try await contexts(.create(create)).context)
    }

    /// Restarts the context `id`: a new interpreter, its state cleared, the same id.
    @discardableResult
    public func restartCodeContext(_ id: String) async throws -> CodeContext {
        CodeContext(try await contexts(.restart(id)).context)
    }

    /// Removes the context `id` (its interpreter is killed).
    public func removeCodeContext(_ id: String) async throws {
        _ = try await contexts(.remove(id))
    }

    /// The sandbox's code contexts.
    public func listCodeContexts() async throws -> [CodeContext] {
        try await contexts(.list(Hangar_V1_CodeContextList())).list.contexts.map(CodeContext.init)
    }

    /// One code-context request to the node; its error thrown.
    private func contexts(_ op: Hangar_V1_CodeContextRequest.OneOf_Op) async throws -> Hangar_V1_CodeContextReply {
        var request = Hangar_V1_CodeContextRequest()
        request.op = op
        let reply = try await hangar.request(
            subject("code.contexts"),
            request,
            as: Hangar_V1_CodeContextReply.self,
            who: "node \(nodeID)",
            timeout: hangar.timeouts.contexts
        )
        switch reply.outcome {
        case .error(let error): throw await nodeError(error)
        case .agentError(let error): throw HangarClientError(error, about: "the code context")
        case nil: throw HangarClientError(.badReply, "node \(nodeID) sent an empty answer to code.contexts")
        default: return reply
        }
    }
}

extension CellDone {
    init(_ done: Hangar_V1_CodeDone) {
        executionCount = Int(done.executionCount)
        end =
            switch done.end {
            case .codeCellOk: .ok
            case .codeCellError: .error
            case .codeCellTimedOut: .timedOut
            case .codeCellOutputLimit: .outputLimit
            default: .interpreterDied
            }
        message = done.message
        contextID = done.contextID
        duration = .milliseconds(done.durationMs)
    }
}
