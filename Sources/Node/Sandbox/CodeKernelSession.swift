import Foundation
import HangarShared

/// One code context's kernel, as the node sees it: started by the sandbox's agent, fed cells on its
/// stdin, read frame by frame from its stdout (see ``CodeKernel`` for the protocol). At most one
/// cell runs at a time; frames that belong to no running cell (a cell already ended by the node)
/// are dropped.
actor CodeKernelSession {
    let id: String
    let language: String
    let cwd: String
    let environment: [String: String]
    let cellOutputBytes: Int
    /// Whether it is its language's default context (carried in the kernel's arguments).
    let isDefault: Bool
    private let agent: SandboxAgentChannel
    /// Tells this session's cells apart from those of a session before it on the same kernel (a
    /// cell still running when the node that sent it went away).
    private let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
    /// Whether the kernel was started by a node before this one (``start(adopting:)``).
    private var adopting = false

    private enum Phase {
        case starting
        case ready
        case ended(String)
    }

    private struct Cell {
        let id: String
        let continuation: AsyncStream<Hangar_V1_CodeRunEvent>.Continuation
        let started = ContinuousClock.now
        var forwarded = 0
        var raised = false
        /// Why the node interrupted it, with what to tell the tenant.
        var interruption: (end: Hangar_V1_CodeCellEnd, message: String)?
        /// Whether the node killed the interpreter because the interrupted cell did not stop.
        var killed = false
        var deadline: Task<Void, Never>?
    }

    private var phase = Phase.starting
    private var pid: UInt32 = 0
    private var executionCount: UInt32 = 0
    private var readyWaiters: [CheckedContinuation<Void, Never>] = []
    private var cell: Cell?
    private var cells = 0
    private var lines = CodeKernelLineSplitter(maximumLineBytes: CodeKernelSession.maxLineBytes)
    /// The end of what the kernel wrote to its stderr (its own diagnostics), for death messages.
    private var diagnostics = Data()
    private var reader: Task<Void, Never>?

    /// The longest protocol line a kernel may write: a result of up to 9 MiB (an image, in base64)
    /// fits, and its answer fits a NATS message (16 MiB `max_payload`). It bounds what the node
    /// holds for one context; a longer line gets the kernel killed.
    static let maxLineBytes = 12 << 20

    init(
        id: String,
        language: String,
        cwd: String,
        environment: [String: String],
        cellOutputBytes: Int,
        isDefault: Bool = false,
        agent: SandboxAgentChannel
    ) {
        self.id = id
        self.language = language
        self.cwd = cwd
        self.environment = environment
        self.cellOutputBytes = cellOutputBytes
        self.isDefault = isDefault
        self.agent = agent
    }

    /// A session like this one (same context id, language, directory, environment), not started.
    func successor() -> CodeKernelSession {
        CodeKernelSession(
            id: id,
            language: language,
            cwd: cwd,
            environment: environment,
            cellOutputBytes: cellOutputBytes,
            isDefault: isDefault,
            agent: agent
        )
    }

    var info: Hangar_V1_CodeContextInfo {
        .with {
            $0.id = id
            $0.language = language
            $0.cwd = cwd
            $0.pid = pid
            $0.executionCount = executionCount
            if case .ready = phase { $0.alive = true }
        }
    }

    /// Starts the kernel and waits until it is ready (or ended, or ``CodeContexts/readyTimeout``).
    /// `adopting`: the pid of a kernel a node before this one started, which the sandbox's agent
    /// kept (``SandboxAgentChannel/reattach(pid:)``): taken over instead, ready once the agent
    /// answers.
    func start(adopting adopted: UInt32? = nil) async throws(CodeContextFailure) {
        let events: AsyncThrowingStream<Hangar_V1_AgentEvent, any Error>
        if let adopted {
            adopting = true
            events = agent.reattach(pid: adopted)
        } else {
            var command = Hangar_V1_AgentExec()
            command.argv = CodeKernel.argv(
                language: language,
                context: .init(id: id, language: language, isDefault: isDefault, cwd: cwd)
            )
            command.env = environment
            command.env["MPLBACKEND"] = "Agg"
            command.cwd = cwd
            command.stdin = true
            command.background = true
            events = agent.exec(command)
        }
        reader = Task { [weak self] in
            do {
                for try await event in events {
                    guard let self else { return }
                    await self.handle(event)
                }
                await self?.end("the sandbox's agent ended the kernel without its exit")
            } catch {
                await self?.end("\(error)")
            }
        }
        let timer = Task { [weak self] in
            try? await Task.sleep(for: CodeContexts.readyTimeout)
            if !Task.isCancelled { await self?.readyTimedOut() }
        }
        await withCheckedContinuation { continuation in
            if case .starting = phase {
                readyWaiters.append(continuation)
            } else {
                continuation.resume()
            }
        }
        timer.cancel()
        if case .ended(let reason) = phase {
            throw CodeContextFailure(.sandboxContextEnded, "the \(language) kernel did not start: \(reason)")
        }
    }

    /// Kills the kernel (its whole process group); a running cell ends with `reason`.
    func stop(_ reason: String) async {
        if pid != 0 { try? await agent.signal(pid: pid, SIGKILL) }
        end(reason)
        reader?.cancel()
    }

    /// Runs `code`; the stream ends after `done`, or with one `failure` when the cell cannot run.
    func run(_ code: String, timeout: Duration) async -> AsyncStream<Hangar_V1_CodeRunEvent> {
        func failure(_ code: Hangar_V1_SandboxErrorCode, _ message: String) -> AsyncStream<Hangar_V1_CodeRunEvent> {
            CodeContexts.single(.with { $0.failure = CodeContextFailure(code, message).error })
        }
        if case .ended(let reason) = phase {
            return failure(.sandboxContextEnded, "code context \(id) has ended (\(reason)); restart it")
        }
        if let cell {
            return failure(.sandboxBusy, "code context \(id) is running cell \(cell.id); wait for it or interrupt it")
        }
        guard code.utf8.count <= NodeAgent.dataChunkBytes else {
            return failure(
                .sandboxInvalidRequest,
                "the code is \(code.utf8.count) bytes; at most \(NodeAgent.dataChunkBytes)"
            )
        }
        cells += 1
        let cellID = "cell-\(tag)-\(cells)"
        let (stream, continuation) = AsyncStream.makeStream(of: Hangar_V1_CodeRunEvent.self)
        var running = Cell(id: cellID, continuation: continuation)
        running.deadline = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { await self?.interrupt(cellID, .codeCellTimedOut, after: timeout) }
        }
        cell = running
        do {
            try await agent.stdin(pid: pid, CodeKernel.request(id: cellID, code: code))
        } catch {
            finishCell(
                cellID,
                end: .codeCellInterpreterDied,
                message: "the cell could not be sent to the kernel: \(error)"
            )
        }
        return stream
    }

    // MARK: What the kernel says

    private func handle(_ event: Hangar_V1_AgentEvent) {
        switch event.kind {
        case .started(let started):
            pid = started.pid
            if adopting {
                // Ready once the agent answers: a kernel still starting reads its first cell once it
                // is. Its output goes on from where the agent's answer says, maybe within a line
                // (the rest of such a line is not a frame, and is dropped as one); replayed frames
                // of the last node's cells carry their ids, which no cell of this session has.
                if case .starting = phase { phase = .ready }
                resumeReadyWaiters()
            }
        case .output(let output) where output.stream == .stdout:
            do {
                for line in try lines.feed(output.data) { handle(line: line) }
            } catch {
                Task { try? await agent.signal(pid: pid, SIGKILL) }
                end("\(error); the kernel was killed")
            }
        case .output(let output):
            diagnostics.append(output.data)
            if diagnostics.count > 4096 { diagnostics = Data(diagnostics.suffix(2048)) }
        case .exited(let exited):
            let how =
                exited.signal != 0
                ? "the interpreter was killed by signal \(exited.signal)"
                : "the interpreter exited with code \(exited.exitCode)"
            let said = String(decoding: diagnostics.suffix(400), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            end(said.isEmpty ? how : "\(how): \(said)")
        default:
            break
        }
    }

    private func handle(line: Data) {
        guard let frame = CodeKernelEvent(line) else { return }  // not the kernel's: a cell wrote it
        switch frame {
        case .ready:
            if case .starting = phase { phase = .ready }
            resumeReadyWaiters()
        case .stream(let cellID, let stderr, let text, let timestamp):
            guard var running = cell, running.id == cellID else { return }
            let size = text.utf8.count
            guard running.forwarded + size <= cellOutputBytes else {
                if running.interruption == nil {
                    Task { await interrupt(cellID, .codeCellOutputLimit, after: nil) }
                }
                return
            }
            running.forwarded += size
            cell = running
            running.continuation.yield(
                .with {
                    $0.stream = .with {
                        $0.stderr = stderr
                        $0.text = text
                        $0.timestampMs = timestamp
                    }
                }
            )
        case .result(let cellID, let main, let data):
            guard let running = cell, running.id == cellID else { return }
            running.continuation.yield(
                .with {
                    $0.result = .with {
                        $0.main = main
                        $0.data = data
                    }
                }
            )
        case .error(let cellID, let name, let value, let traceback):
            guard var running = cell, running.id == cellID else { return }
            running.raised = true
            cell = running
            running.continuation.yield(
                .with {
                    $0.error = .with {
                        $0.name = name
                        $0.value = value
                        $0.traceback = traceback
                    }
                }
            )
        case .done(let cellID, let count):
            guard let running = cell, running.id == cellID else { return }
            executionCount = count
            if let interruption = running.interruption {
                finishCell(
                    cellID,
                    end: interruption.end,
                    message: interruption.message + (running.killed ? "" : "; the context keeps its state")
                )
            } else {
                finishCell(cellID, end: running.raised ? .codeCellError : .codeCellOk, message: "")
            }
        }
    }

    /// Interrupts the running cell `cellID` (SIGINT), and kills the interpreter if the cell has not
    /// ended ``CodeContexts/interruptGrace`` later.
    private func interrupt(_ cellID: String, _ end: Hangar_V1_CodeCellEnd, after timeout: Duration?) async {
        guard var running = cell, running.id == cellID, running.interruption == nil else { return }
        let why =
            if let timeout {
                "interrupted (SIGINT) at its timeout of \(JobLimits.milliseconds(timeout)) ms"
            } else {
                "interrupted (SIGINT) after writing more than \(cellOutputBytes) bytes"
            }
        running.interruption = (end, why)
        cell = running
        try? await agent.signal(pid: pid, SIGINT)
        // Output already on its way (pipes, the agent's socket) must drain before the interpreter
        // can say it stopped: a flooding cell gets longer.
        let grace = end == .codeCellOutputLimit ? CodeContexts.interruptGrace * 3 : CodeContexts.interruptGrace
        Task { [weak self] in
            try? await Task.sleep(for: grace)
            await self?.killIfStuck(cellID)
        }
    }

    private func killIfStuck(_ cellID: String) async {
        guard let running = cell, running.id == cellID, let interruption = running.interruption else { return }
        cell?.interruption = (
            interruption.end,
            interruption.message + ", did not stop in time and its interpreter was killed; restart the context"
        )
        cell?.killed = true
        try? await agent.signal(pid: pid, SIGKILL)
    }

    private func readyTimedOut() async {
        guard case .starting = phase else { return }
        if pid != 0 { try? await agent.signal(pid: pid, SIGKILL) }
        end("it was not ready within \(JobLimits.milliseconds(CodeContexts.readyTimeout)) ms")
    }

    /// The kernel is gone: a running cell ends with `reason`, and so does every later run.
    private func end(_ reason: String) {
        if case .ended = phase { return }
        phase = .ended(reason)
        resumeReadyWaiters()
        if let running = cell {
            if let interruption = running.interruption, running.killed {
                finishCell(running.id, end: interruption.end, message: interruption.message)
            } else {
                finishCell(running.id, end: .codeCellInterpreterDied, message: reason + "; restart the context")
            }
        }
    }

    private func finishCell(_ cellID: String, end: Hangar_V1_CodeCellEnd, message: String) {
        guard let running = cell, running.id == cellID else { return }
        cell = nil
        running.deadline?.cancel()
        running.continuation.yield(
            .with {
                $0.done = .with {
                    $0.executionCount = executionCount
                    $0.end = end
                    $0.message = message
                    $0.durationMs = JobLimits.milliseconds(ContinuousClock.now - running.started)
                    $0.contextID = id
                }
            }
        )
        running.continuation.finish()
    }

    private func resumeReadyWaiters() {
        let waiters = readyWaiters
        readyWaiters = []
        for waiter in waiters { waiter.resume() }
    }
}

/// One frame of the kernel's protocol (``CodeKernelFrame``), as the node uses it.
enum CodeKernelEvent: Equatable {
    case ready
    case stream(cell: String, stderr: Bool, text: String, timestampMs: Int64)
    case result(cell: String, main: Bool, data: [String: String])
    case error(cell: String, name: String, value: String, traceback: String)
    case done(cell: String, executionCount: UInt32)

    /// The frame `line` holds; nil for a line that is not one, or a `log` line.
    init?(_ line: Data) {
        guard let frame = try? CodeKernelFrame.decode(line) else { return nil }
        let cell = frame.id ?? ""
        switch frame.type {
        case "ready":
            self = .ready
        case "stream":
            self = .stream(
                cell: cell,
                stderr: frame.name == "stderr",
                text: frame.text ?? "",
                timestampMs: frame.t ?? 0
            )
        case "result":
            var data: [String: String] = [:]
            for (mime, value) in frame.data ?? [:] {
                data[mime] = mime != "application/json" ? value.string ?? value.jsonText : value.jsonText
            }
            self = .result(cell: cell, main: frame.main ?? false, data: data)
        case "error":
            self = .error(
                cell: cell,
                name: frame.name ?? "",
                value: frame.value ?? "",
                traceback: frame.traceback ?? ""
            )
        case "done":
            self = .done(cell: cell, executionCount: UInt32(clamping: frame.executionCount ?? 0))
        default:
            return nil
        }
    }
}
