import Crypto
import Foundation
import HangarNATS
import HangarShared
import Synchronization

/// The data plane of stateful sandboxes (issue 16): a tenant sends commands and file operations
/// straight to the node that holds its sandbox, on `hangar.sbx.<node>.<tenant>.<sandbox>.<verb>`;
/// the scheduler is not involved. The node answers only for a sandbox its host holds for exactly
/// the subject's tenant (anything else, another tenant's sandbox included, is NOT_FOUND), and only
/// into that tenant's own inbox (``ReplySubjectRule``); a request asking for its answer elsewhere is
/// dropped and logged.
extension NodeAgent {
    /// Most bytes of a read answer, of a write, and of an exec's stdin, per message.
    static let dataChunkBytes = 1 << 20
    /// The verbs that take a `SandboxOpRequest`, each with the op it must hold.
    static let sandboxOperationVerbs = [
        "files.read", "files.write", "files.list", "files.stat", "files.mkdir", "files.remove", "files.rename",
        "signal", "ps", "stdin",
    ]

    /// Where the node may answer: only a tenant's own inbox when the cluster runs authorization (the
    /// node's connection then has its own inbox prefix).
    var replyRule: ReplySubjectRule {
        ReplySubjectRule(ownInboxOnly: nats.options.inboxPrefix == Principal.node(config.nodeID).inboxPrefix)
    }

    /// Answers one data-plane request (an exec streams its events until the command exits).
    func handleSandboxData(_ message: NATSMessage) async {
        // hangar.sbx.<node>.<tenant>.<sandbox>.<verb, one or more tokens>
        // Split on the byte "." as NATS does (see `Subjects.token`).
        let tokens = message.subject.utf8.split(
            separator: UInt8(ascii: "."),
            maxSplits: 5,
            omittingEmptySubsequences: false
        )
        .map { String(Substring($0)) }
        guard tokens.count == 6, let replyTo = message.replyTo else {
            logger.debug("ignored a sandbox data request without a verb or reply subject")
            return
        }
        let (tenant, sandboxID, verb) = (tokens[3], tokens[4], tokens[5])
        if let refusal = replyRule.refusal(replyTo: replyTo, principal: .tenant(tenant)) {
            logger.warning(
                "a sandbox data request asked for its answer outside the requester's own inbox; dropped",
                metadata: ["nats.subject": "\(message.subject.prefix(200))", "reason": "\(refusal)"]
            )
            return
        }
        let target = sandboxHost?.dataTarget(sandboxID, tenant: tenant)
        if verb == "exec" {
            await sandboxExec(message.payload, target: target, sandbox: (tenant, sandboxID), replyTo: replyTo)
        } else if verb == "attach" {
            await attach(message.payload, target: target, sandboxID: sandboxID, replyTo: replyTo)
        } else if verb == "code.run" {
            await runCode(message.payload, target: target, sandbox: (tenant, sandboxID), replyTo: replyTo)
        } else if verb == "files.watch" {
            await watch(message.payload, target: target, sandboxID: sandboxID, replyTo: replyTo)
        } else if verb == "files.unwatch" {
            send(await unwatch(message.payload, target: target, sandboxID: sandboxID), to: replyTo)
        } else if verb == "code.contexts" {
            let reply = await codeContexts(message.payload, target: target, sandboxID: sandboxID)
            send(Result { try reply.serializedData() }, to: replyTo)
        } else {
            let reply = await sandboxOperation(message.payload, verb: verb, target: target, sandboxID: sandboxID)
            send(reply, to: replyTo)
        }
    }

    private func sandboxExec(
        _ payload: Data,
        target: SandboxDataTarget?,
        sandbox: (tenant: String, id: String),
        replyTo: String
    ) async {
        let sandboxID = sandbox.id
        func fail(_ failure: DataFailure) { send(failure.execEvent, to: replyTo) }
        guard let target else {
            return fail(DataFailure(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node"))
        }
        guard let request = try? Hangar_V1_SandboxExecRequest(serializedBytes: payload) else {
            return fail(DataFailure(.sandboxInvalidRequest, "the payload is not a hangar.v1.SandboxExecRequest"))
        }
        guard !request.argv.isEmpty else { return fail(DataFailure(.sandboxInvalidRequest, "argv is empty")) }
        guard request.stdin.count <= Self.dataChunkBytes else {
            return fail(
                DataFailure(
                    .sandboxInvalidRequest,
                    "stdin is \(request.stdin.count) bytes; at most \(Self.dataChunkBytes)"
                )
            )
        }
        var command = Hangar_V1_AgentExec()
        command.argv = request.argv
        command.env = target.environment.merging(request.env) { _, own in own }
        command.cwd = request.cwd
        command.user = request.user
        command.stdin = !request.stdin.isEmpty || request.keepStdin
        command.timeoutMs = UInt64(request.timeoutMs)
        command.background = request.background
        if request.background, await !target.background.roomToStart {
            return fail(
                DataFailure(
                    .sandboxLimitExceeded,
                    "\(BackgroundCommands.maxRunning) background commands run in this sandbox already; wait for one to end or kill one"
                )
            )
        }
        let began = ContinuousClock.now
        var run = Hangar_V1_SandboxCommandRun()
        (run.argv, run.user, run.cwd) = (request.argv, request.user, request.cwd)
        defer {
            run.durationMs = JobLimits.milliseconds(ContinuousClock.now - began)
            audit(sandbox, .command(run))
        }
        /// Set once a background command started: its events go to ``BackgroundCommands``.
        var pid: UInt32?
        do {
            for try await event in target.agent.exec(command) {
                switch event.kind {
                case .started(let started):
                    // Registered before the requester hears the pid, so that an attach right after
                    // `started` finds the command.
                    if request.background {
                        pid = started.pid
                        await target.background.begin(started.pid)
                    }
                    send(Hangar_V1_SandboxExecEvent.with { $0.started = started }, to: replyTo)
                    if !request.stdin.isEmpty {
                        // The command may end without reading it all; its exit still comes.
                        try? await target.agent.stdin(pid: started.pid, request.stdin, close: !request.keepStdin)
                    }
                case .output(let output):
                    if let pid {
                        await target.background.record(pid, output)
                    } else {
                        send(Hangar_V1_SandboxExecEvent.with { $0.output = output }, to: replyTo)
                    }
                case .exited(let exited):
                    if let pid {
                        await target.background.finish(pid, exited)
                    } else {
                        send(Hangar_V1_SandboxExecEvent.with { $0.exited = exited }, to: replyTo)
                    }
                    (run.exitCode, run.signal, run.timedOut) = (exited.exitCode, exited.signal, exited.timedOut)
                    return
                default:
                    continue
                }
            }
            run.error = "the sandbox's agent ended the command without its exit"
            if let pid { return await target.background.finish(pid, nil) }
            fail(DataFailure(.sandboxNotRunning, run.error))
        } catch let error as SandboxAgentError {
            run.error = error.description
            if let pid { return await target.background.finish(pid, nil) }
            fail(DataFailure(error))
        } catch {
            run.error = "\(error)"
            if let pid { return await target.background.finish(pid, nil) }
            fail(DataFailure(.sandboxNotRunning, "\(error)"))
        }
    }

    /// How long a watch lasts unless its request says; the longest it may ask for.
    static let defaultWatchMs: UInt32 = 60_000
    static let maxWatchMs: UInt32 = 3_600_000

    /// Streams a directory watch's changes to `replyTo` (`started`, `changes`…, `ended`) until its
    /// timeout, an unwatch, the directory's removal or the sandbox's end.
    private func watch(_ payload: Data, target: SandboxDataTarget?, sandboxID: String, replyTo: String) async {
        func fail(_ failure: DataFailure) { send(failure.watchEvent, to: replyTo) }
        func ended(_ reason: String) {
            send(Hangar_V1_SandboxWatchEvent.with { $0.ended = .with { $0.reason = reason } }, to: replyTo)
        }
        guard let target else {
            return fail(DataFailure(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node"))
        }
        guard let request = try? Hangar_V1_SandboxWatchRequest(serializedBytes: payload) else {
            return fail(DataFailure(.sandboxInvalidRequest, "the payload is not a hangar.v1.SandboxWatchRequest"))
        }
        let timeoutMs = request.timeoutMs == 0 ? Self.defaultWatchMs : request.timeoutMs
        guard timeoutMs <= Self.maxWatchMs else {
            return fail(
                DataFailure(
                    .sandboxInvalidRequest,
                    "timeout_ms is \(timeoutMs); a watch lasts at most \(Self.maxWatchMs)"
                )
            )
        }
        let (id, events) = target.agent.watch(request.path, recursive: request.recursive)
        let timedOut = WatchTimeout()
        let deadline = Task { [agent = target.agent] in
            try? await Task.sleep(for: .milliseconds(Int(timeoutMs)))
            guard !Task.isCancelled else { return }
            timedOut.fired.withLock { $0 = true }
            try? await agent.unwatch(id)
        }
        defer { deadline.cancel() }
        var started = false
        do {
            for try await event in events {
                guard case .watchEvents(let batch) = event.kind else { continue }
                if !started {
                    started = true
                    send(
                        Hangar_V1_SandboxWatchEvent.with { $0.started = .with { $0.watchID = String(id) } },
                        to: replyTo
                    )
                }
                // The agent's own atomic writes show as the target's create (the rename), not as their
                // temporary file's create, write, chmod and rename.
                var changes = batch
                changes.events.removeAll { Self.isAtomicWriteTemporary($0.path) }
                if !changes.events.isEmpty || (!batch.message.isEmpty && !batch.ended) {
                    changes.ended = false
                    send(Hangar_V1_SandboxWatchEvent.with { $0.changes = changes }, to: replyTo)
                }
                if batch.ended {
                    return ended(timedOut.fired.withLock { $0 } ? "timeout" : batch.message)
                }
            }
            ended("the sandbox's agent ended the watch")
        } catch let error as SandboxAgentError {
            started ? ended("the sandbox ended: \(error.description)") : fail(DataFailure(error))
        } catch {
            started ? ended("the sandbox ended: \(error)") : fail(DataFailure(.sandboxNotRunning, "\(error)"))
        }
    }

    /// Whether `path` names the temporary file of an atomic write by the sandbox's agent
    /// (`.NAME.hangar-XXXXXX`, made by `files.c`, renamed over NAME once written).
    static func isAtomicWriteTemporary(_ path: String) -> Bool {
        let name = path.split(separator: "/").last ?? ""
        guard name.hasPrefix("."), let marker = name.range(of: ".hangar-", options: .backwards) else { return false }
        let suffix = name[marker.upperBound...]
        return marker.lowerBound > name.index(after: name.startIndex) && suffix.count == 6
            && suffix.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) }
    }

    /// Ends a watch of the sandbox (`files.unwatch`).
    private func unwatch(
        _ payload: Data,
        target: SandboxDataTarget?,
        sandboxID: String
    ) async -> Hangar_V1_SandboxOpReply {
        guard let target else {
            return DataFailure(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node").operationReply
        }
        guard let request = try? Hangar_V1_SandboxUnwatchRequest(serializedBytes: payload),
            let id = UInt64(request.watchID)
        else {
            return DataFailure(
                .sandboxInvalidRequest,
                "the payload is not a hangar.v1.SandboxUnwatchRequest with a watch id"
            )
            .operationReply
        }
        do {
            try await target.agent.unwatch(id)
        } catch {
            return DataFailure(error).operationReply
        }
        return .with { $0.ok = Hangar_V1_AgentOk() }
    }

    /// Streams a background command's kept and coming output to `replyTo`, then its exit.
    private func attach(_ payload: Data, target: SandboxDataTarget?, sandboxID: String, replyTo: String) async {
        func fail(_ failure: DataFailure) { send(failure.execEvent, to: replyTo) }
        guard let target else {
            return fail(DataFailure(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node"))
        }
        guard let request = try? Hangar_V1_SandboxAttachRequest(serializedBytes: payload) else {
            return fail(DataFailure(.sandboxInvalidRequest, "the payload is not a hangar.v1.SandboxAttachRequest"))
        }
        guard let events = await target.background.attach(request) else {
            return fail(
                DataFailure(
                    .sandboxInvalidRequest,
                    "no background command with pid \(request.pid) in sandbox \(sandboxID) (start one with exec's background)"
                )
            )
        }
        for await event in events { send(event, to: replyTo) }
    }

    /// Reports a command or cell that ran in a sandbox to the scheduler, for its audit trail
    /// (``Subjects/sandboxAudit(node:)``); does not wait.
    func audit(_ sandbox: (tenant: String, id: String), _ ran: Hangar_V1_SandboxAudit.OneOf_Ran) {
        var record = Hangar_V1_SandboxAudit()
        (record.tenant, record.sandboxID, record.ran) = (sandbox.tenant, sandbox.id, ran)
        do {
            try nats.publish(Subjects.sandboxAudit(node: config.nodeID), payload: try record.serializedData())
        } catch {
            logger.warning(
                "could not report a sandbox command for the audit trail",
                metadata: ["sandbox.id": "\(sandbox.id)", "error": "\(error)"]
            )
        }
    }

    /// Runs one cell in a code context of the sandbox and streams its events to `replyTo`.
    private func runCode(
        _ payload: Data,
        target: SandboxDataTarget?,
        sandbox: (tenant: String, id: String),
        replyTo: String
    ) async {
        let sandboxID = sandbox.id
        func fail(_ code: Hangar_V1_SandboxErrorCode, _ message: String) {
            send(
                Result {
                    try Hangar_V1_CodeRunEvent.with {
                        $0.failure = .with {
                            $0.code = code
                            $0.message = message
                        }
                    }
                    .serializedData()
                },
                to: replyTo
            )
        }
        guard let target else { return fail(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node") }
        guard let request = try? Hangar_V1_CodeRunRequest(serializedBytes: payload) else {
            return fail(.sandboxInvalidRequest, "the payload is not a hangar.v1.CodeRunRequest")
        }
        for await event in await target.code.run(request) {
            send(Result { try event.serializedData() }, to: replyTo)
            if case .done(let done) = event.kind {
                var run = Hangar_V1_SandboxCodeRun()
                run.contextID = done.contextID
                run.language = request.contextID.isEmpty ? (request.language.isEmpty ? "python" : request.language) : ""
                run.codeBytes = UInt64(request.code.utf8.count)
                run.codeSha256 = SHA256.hash(data: Data(request.code.utf8)).map { String(format: "%02x", $0) }.joined()
                (run.end, run.durationMs) = (done.end, done.durationMs)
                audit(sandbox, .code(run))
            }
        }
    }

    /// Creates, lists, restarts or removes a code context of the sandbox.
    private func codeContexts(
        _ payload: Data,
        target: SandboxDataTarget?,
        sandboxID: String
    ) async -> Hangar_V1_CodeContextReply {
        func failure(_ error: Hangar_V1_SandboxError) -> Hangar_V1_CodeContextReply { .with { $0.error = error } }
        guard let target else {
            return failure(CodeContextFailure(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node").error)
        }
        guard let request = try? Hangar_V1_CodeContextRequest(serializedBytes: payload), let op = request.op else {
            return failure(
                CodeContextFailure(
                    .sandboxInvalidRequest,
                    "the payload is not a hangar.v1.CodeContextRequest with an op"
                )
                .error
            )
        }
        do throws(CodeContextFailure) {
            switch op {
            case .create(let create):
                let info = try await target.code.create(create)
                return .with { $0.context = info }
            case .list:
                let infos = await target.code.list()
                return .with { $0.list = .with { $0.contexts = infos } }
            case .restart(let id):
                let info = try await target.code.restart(id)
                return .with { $0.context = info }
            case .remove(let id):
                try await target.code.remove(id)
                return .with { $0.ok = Hangar_V1_AgentOk() }
            }
        } catch {
            return failure(error.error)
        }
    }

    /// `read` asking for at most ``dataChunkBytes`` (0, or more, asks for that many).
    static func bounded(_ read: Hangar_V1_AgentReadFile) -> Hangar_V1_AgentReadFile {
        var read = read
        if read.length == 0 || read.length > UInt64(dataChunkBytes) { read.length = UInt64(dataChunkBytes) }
        return read
    }

    private func sandboxOperation(
        _ payload: Data,
        verb: String,
        target: SandboxDataTarget?,
        sandboxID: String
    ) async -> Hangar_V1_SandboxOpReply {
        func failure(_ code: Hangar_V1_SandboxErrorCode, _ message: String) -> Hangar_V1_SandboxOpReply {
            DataFailure(code, message).operationReply
        }
        guard Self.sandboxOperationVerbs.contains(verb) else {
            return failure(
                .sandboxInvalidRequest,
                "unknown sandbox data verb '\(verb.prefix(64))'; use exec, attach, files.watch, files.unwatch, code.run, code.contexts, \(Self.sandboxOperationVerbs.joined(separator: ", "))"
            )
        }
        guard let target else { return failure(.sandboxNotFound, "no sandbox \(sandboxID) of yours on this node") }
        guard let request = try? Hangar_V1_SandboxOpRequest(serializedBytes: payload), let op = request.op else {
            return failure(.sandboxInvalidRequest, "the payload is not a hangar.v1.SandboxOpRequest with an op")
        }
        if case .write(let write) = op, write.data.count > Self.dataChunkBytes {
            return failure(
                .sandboxInvalidRequest,
                "a write carries at most \(Self.dataChunkBytes) bytes (this one \(write.data.count)); write the rest with append"
            )
        }
        if case .stdin(let input) = op, input.data.count > Self.dataChunkBytes {
            return failure(
                .sandboxInvalidRequest,
                "stdin carries at most \(Self.dataChunkBytes) bytes per message (this one \(input.data.count))"
            )
        }
        let (operation, expected): (Hangar_V1_AgentRequest.OneOf_Op, String) =
            switch op {
            case .read(let read): (.readFile(Self.bounded(read)), "files.read")
            case .write(let write): (.writeFile(write), "files.write")
            case .list(let list): (.listDir(list), "files.list")
            case .stat(let stat): (.stat(stat), "files.stat")
            case .mkdir(let mkdir): (.makeDir(mkdir), "files.mkdir")
            case .remove(let remove): (.remove(remove), "files.remove")
            case .rename(let rename): (.rename(rename), "files.rename")
            case .signal(let signal): (.signal(signal), "signal")
            case .ps(let ps): (.listProcesses(ps), "ps")
            case .stdin(let input): (.stdin(input), "stdin")
            }
        guard expected == verb else {
            return failure(
                .sandboxInvalidRequest,
                "verb '\(verb)' needs its own op; the request holds the op of '\(expected)'"
            )
        }
        let answer: Hangar_V1_AgentEvent
        do {
            answer = try await target.agent.request(operation)
        } catch {
            return DataFailure(error).operationReply
        }
        switch answer.kind {
        case .ok(let ok): return .with { $0.ok = ok }
        case .fileData(let data): return .with { $0.data = data }
        case .entries(let entries): return .with { $0.entries = entries }
        case .statInfo(let entry): return .with { $0.entry = entry }
        case .processes(let processes): return .with { $0.processes = processes }
        default: return failure(.sandboxNotRunning, "the sandbox's agent gave an unexpected answer to \(verb)")
        }
    }

    private func send(_ event: Hangar_V1_SandboxExecEvent, to replyTo: String) {
        send(Result { try event.serializedData() }, to: replyTo)
    }

    private func send(_ event: Hangar_V1_SandboxWatchEvent, to replyTo: String) {
        send(Result { try event.serializedData() }, to: replyTo)
    }

    private func send(_ reply: Hangar_V1_SandboxOpReply, to replyTo: String) {
        send(Result { try reply.serializedData() }, to: replyTo)
    }

    /// Publishes one data-plane answer on the requester's inbox (already checked).
    private func send(_ payload: Result<Data, any Error>, to replyTo: String) {
        do {
            try nats.publish(replyTo, payload: try payload.get())
        } catch {
            logger.warning("could not answer a sandbox data request", metadata: ["error": "\(error)"])
        }
    }
}

/// Whether a watch ended at its timeout (set by its deadline task before it unwatches).
private final class WatchTimeout: Sendable {
    let fired = Mutex(false)
}

/// Why a data-plane request failed, as its answer says it: the node's own verdict (no such
/// sandbox, a bad request, a sandbox that is going away) or the agent's refusal as it is.
private enum DataFailure {
    case node(Hangar_V1_SandboxError)
    case agent(Hangar_V1_AgentError)

    init(_ code: Hangar_V1_SandboxErrorCode, _ message: String) {
        self = .node(
            .with {
                $0.code = code
                $0.message = message
            }
        )
    }

    /// The agent's refusal as it is; a gone agent as a sandbox that is not running; a request the
    /// channel refused to send as invalid.
    init(_ error: SandboxAgentError) {
        switch error {
        case .agent(let code, let message):
            self = .agent(
                .with {
                    $0.code = code
                    $0.message = message
                }
            )
        case .agentGone, .unexpectedAnswer: self.init(.sandboxNotRunning, error.description)
        case .tooLarge, .invalid: self.init(.sandboxInvalidRequest, error.description)
        }
    }

    /// The last event of an exec's answer.
    var execEvent: Hangar_V1_SandboxExecEvent {
        switch self {
        case .node(let error): .with { $0.error = error }
        case .agent(let error): .with { $0.agentError = error }
        }
    }

    /// The last event of a watch's answer.
    var watchEvent: Hangar_V1_SandboxWatchEvent {
        switch self {
        case .node(let error): .with { $0.error = error }
        case .agent(let error): .with { $0.agentError = error }
        }
    }

    /// The answer to a one-message verb.
    var operationReply: Hangar_V1_SandboxOpReply {
        switch self {
        case .node(let error): .with { $0.error = error }
        case .agent(let error): .with { $0.agentError = error }
        }
    }
}
