import Foundation
import Glibc
import HangarShared
import Logging
import Synchronization

/// Why a request to a sandbox's agent failed.
public enum SandboxAgentError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The agent answered with an Error event.
    case agent(code: Hangar_V1_AgentError.Code, message: String)
    /// The agent is gone (it died, the sandbox was killed, or it broke the protocol); every request
    /// waiting for an answer, and every later one, gets this.
    case agentGone(String)
    /// The request would be a frame larger than ``SandboxAgentChannel/maxFrameBytes``.
    case tooLarge(String)
    /// The request is malformed before it is even sent (for example a path with a NUL byte).
    case invalid(String)
    /// The agent answered with an event this request does not expect.
    case unexpectedAnswer(String)

    /// The error as a sentence for operators.
    public var description: String {
        switch self {
        case .agent(let code, let message): "the sandbox agent refused (\(code)): \(message)"
        case .agentGone(let reason): "the sandbox agent is gone: \(reason)"
        case .tooLarge(let what): "too large for the sandbox agent: \(what)"
        case .invalid(let what): "invalid request to the sandbox agent: \(what)"
        case .unexpectedAnswer(let what): "unexpected answer from the sandbox agent: \(what)"
        }
    }
}

/// The node's end of the channel to one ``hangar-sandbox-agent``: a stream socket carrying frames of
/// a 4-byte big-endian length and one protobuf message (`proto/hangar/v1/agent.proto`), requests
/// one way and events the other.
///
/// Requests are written under a lock from the calling task. A thread of the channel's own reads the
/// events and hands each to the waiter of its request id: an exec's stream gets Started, Output and
/// Exited (and ends after Exited or an Error); every other request gets its one answer. When the
/// socket closes or the agent breaks the protocol, every waiter, and every later request, gets
/// ``SandboxAgentError/agentGone(_:)`` with the reason.
public final class SandboxAgentChannel: Sendable {
    /// Largest frame either way (the length prefix not counted); the agent's AGENT_MAX_FRAME.
    public static let maxFrameBytes = 4 << 20
    /// Most file bytes one ``readFile(_:offset:length:)`` request returns (AGENT_READ_CHUNK).
    public static let readChunkBytes = 1 << 20
    /// Largest file one ``writeFile(_:data:mode:append:)`` writes (what fits in one frame).
    public static let maxWriteBytes = maxFrameBytes - (64 << 10)

    private let fd: Int32
    private let logger: Logger
    private let nextID = Atomic<UInt64>(0)
    private let writeLock = Mutex<Void>(())
    private let state = Mutex(State())
    /// Errors the agent sent for frames whose request id it could not read (id 0).
    public let unsolicitedErrors: AsyncStream<Hangar_V1_AgentError>
    private let unsolicited: AsyncStream<Hangar_V1_AgentError>.Continuation

    private struct State {
        var waiters: [UInt64: AsyncThrowingStream<Hangar_V1_AgentEvent, any Error>.Continuation] = [:]
        var gone: String?
    }

    /// Takes over `fd`, a connected stream socket whose other end is the agent's, and starts
    /// reading events from it. The channel shuts the socket down when the agent hangs up or on
    /// ``close()``, and closes `fd` when it is freed.
    public init(socket fd: Int32, logger: Logger = Logger(label: "hangar.sandbox.agent")) {
        self.fd = fd
        self.logger = logger
        (unsolicitedErrors, unsolicited) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(64))
        let thread = Thread { [self] in self.readEvents() }
        thread.name = "hangar-sandbox-agent"
        thread.start()
    }

    deinit {
        // Only here: the reader thread holds the channel until it ends, and a number closed while a
        // request could still write to it might already name another file.
        Glibc.close(fd)
    }

    /// Whether the agent is gone, and why.
    public var goneReason: String? { state.withLock { $0.gone } }

    /// Hangs up: the agent takes that as the end of the sandbox (it kills its commands and exits).
    /// Every waiter gets ``SandboxAgentError/agentGone(_:)``.
    public func close() {
        // The reason first: once the socket is shut down, the reader would say the agent closed it.
        end("the channel was closed")
        shutdown(fd, Int32(SHUT_RDWR))
    }

    // MARK: Requests

    /// Starts a command. The stream yields Started (with the pid), Output chunks and Exited, then
    /// ends; it throws ``SandboxAgentError`` when the command cannot start or the agent is gone.
    public func exec(_ command: Hangar_V1_AgentExec) -> AsyncThrowingStream<Hangar_V1_AgentEvent, any Error> {
        var request = Hangar_V1_AgentRequest()
        request.exec = command
        return send(request)
    }

    /// Sends one request and returns its answer (an Error event is thrown as
    /// ``SandboxAgentError/agent(code:message:)``).
    public func request(
        _ operation: Hangar_V1_AgentRequest.OneOf_Op
    ) async throws(SandboxAgentError)
        -> Hangar_V1_AgentEvent
    {
        var request = Hangar_V1_AgentRequest()
        request.op = operation
        do {
            for try await event in send(request) { return event }
        } catch let error as SandboxAgentError {
            throw error
        } catch {
            throw .agentGone("\(error)")
        }
        throw .agentGone(goneReason ?? "no answer")
    }

    /// Watches the directory `path` in the sandbox (with `recursive`, the directories below it too).
    /// Returns the watch's id (for ``unwatch(_:)``) and its events: an empty ``Hangar_V1_AgentWatchEvents``
    /// once the watch is set, then batches of changes, then one with `ended` set; the stream throws
    /// ``SandboxAgentError`` when the watch cannot be set or the agent goes away.
    public func watch(
        _ path: String,
        recursive: Bool
    ) -> (id: UInt64, events: AsyncThrowingStream<Hangar_V1_AgentEvent, any Error>) {
        var request = Hangar_V1_AgentRequest()
        request.watch = .with {
            $0.path = path
            $0.recursive = recursive
        }
        return sendTracked(request)
    }

    /// Ends the watch `id` (its stream gets its last batch).
    public func unwatch(_ id: UInt64) async throws(SandboxAgentError) {
        try await expectOk(.unwatch(.with { $0.watchID = id }))
    }

    /// Writes `frame` as it is (length prefix included) to the agent, for tests of its decoder.
    public func sendRaw(_ frame: Data) throws(SandboxAgentError) {
        try write(frame)
    }

    /// Answers Pong while the agent serves.
    public func ping() async throws(SandboxAgentError) {
        let answer = try await request(.ping(Hangar_V1_AgentPing()))
        guard case .pong = answer.kind else { throw .unexpectedAnswer("\(answer) to a ping") }
    }

    /// Takes over the command `pid`, which the agent ran on for a node before this one (the
    /// sandbox outlived it): the stream yields Started (with the offsets its output goes on
    /// from), Output chunks and Exited, as for ``exec(_:)``; it throws when no such command is
    /// waiting for a node.
    public func reattach(pid: UInt32) -> AsyncThrowingStream<Hangar_V1_AgentEvent, any Error> {
        var request = Hangar_V1_AgentRequest()
        request.reattach = .with { $0.pid = pid }
        return send(request)
    }

    /// Writes `data` to the stdin of the command `pid` (started with `stdin`), then closes it if
    /// `close`.
    public func stdin(pid: UInt32, _ data: Data, close: Bool = false) async throws(SandboxAgentError) {
        var input = Hangar_V1_AgentStdin()
        (input.pid, input.data, input.close) = (pid, data, close)
        try await expectOk(.stdin(input))
    }

    /// Sends `signal` to the process group of the command `pid`.
    public func signal(pid: UInt32, _ signal: Int32) async throws(SandboxAgentError) {
        var request = Hangar_V1_AgentSignal()
        (request.pid, request.signo) = (pid, signal)
        try await expectOk(.signal(request))
    }

    /// The commands running now.
    public func listProcesses() async throws(SandboxAgentError) -> [Hangar_V1_AgentProcess] {
        let answer = try await request(.listProcesses(Hangar_V1_AgentListProcesses()))
        guard case .processes(let list) = answer.kind else { throw .unexpectedAnswer("\(answer) to ListProcesses") }
        return list.processes
    }

    /// One chunk of a file: at most `length` (0: ``readChunkBytes``) bytes from `offset`.
    public func readFile(
        _ path: String,
        offset: UInt64 = 0,
        length: UInt64 = 0
    ) async throws(SandboxAgentError)
        -> Hangar_V1_AgentFileData
    {
        var request = Hangar_V1_AgentReadFile()
        (request.path, request.offset, request.length) = (try Self.checked(path), offset, length)
        let answer = try await self.request(.readFile(request))
        guard case .fileData(let data) = answer.kind else { throw .unexpectedAnswer("\(answer) to ReadFile") }
        return data
    }

    /// The whole file, read chunk by chunk; at most `limit` bytes, or ``SandboxAgentError/tooLarge(_:)``.
    public func readWholeFile(_ path: String, limit: Int = 64 << 20) async throws(SandboxAgentError) -> Data {
        var content = Data()
        while true {
            let chunk = try await readFile(path, offset: UInt64(content.count))
            content.append(chunk.data)
            guard content.count <= limit else { throw .tooLarge("\(path) is larger than \(limit) bytes") }
            if chunk.eof || chunk.data.isEmpty { return content }
        }
    }

    /// Writes `data` to `path` atomically (or appends it), with permission bits `mode` (0: 0644).
    public func writeFile(
        _ path: String,
        data: Data,
        mode: UInt32 = 0,
        append: Bool = false
    )
        async throws(SandboxAgentError)
    {
        guard data.count <= Self.maxWriteBytes else {
            throw .tooLarge("a \(data.count)-byte write; one write takes at most \(Self.maxWriteBytes)")
        }
        var request = Hangar_V1_AgentWriteFile()
        (request.path, request.data, request.mode, request.append) = (try Self.checked(path), data, mode, append)
        try await expectOk(.writeFile(request))
    }

    /// The entries below `path`, `depth` levels deep (0 or 1: its own entries).
    public func listDirectory(
        _ path: String,
        depth: UInt32 = 1
    ) async throws(SandboxAgentError)
        -> [Hangar_V1_AgentEntry]
    {
        var request = Hangar_V1_AgentListDir()
        (request.path, request.depth) = (try Self.checked(path), depth)
        let answer = try await self.request(.listDir(request))
        guard case .entries(let list) = answer.kind else { throw .unexpectedAnswer("\(answer) to ListDir") }
        return list.entries
    }

    /// What `path` is (a symlink itself, not what it points at).
    public func stat(_ path: String) async throws(SandboxAgentError) -> Hangar_V1_AgentEntry {
        var request = Hangar_V1_AgentStat()
        request.path = try Self.checked(path)
        let answer = try await self.request(.stat(request))
        guard case .statInfo(let entry) = answer.kind else { throw .unexpectedAnswer("\(answer) to Stat") }
        return entry
    }

    /// Makes a directory (and its missing parents when `parents`).
    public func makeDirectory(_ path: String, parents: Bool = false) async throws(SandboxAgentError) {
        var request = Hangar_V1_AgentMakeDir()
        (request.path, request.parents) = (try Self.checked(path), parents)
        try await expectOk(.makeDir(request))
    }

    /// Removes a file, an empty directory, or (`recursive`) a whole tree.
    public func remove(_ path: String, recursive: Bool = false) async throws(SandboxAgentError) {
        var request = Hangar_V1_AgentRemove()
        (request.path, request.recursive) = (try Self.checked(path), recursive)
        try await expectOk(.remove(request))
    }

    /// Renames `from` to `to`.
    public func rename(_ from: String, to: String) async throws(SandboxAgentError) {
        var request = Hangar_V1_AgentRename()
        (request.from, request.to) = (try Self.checked(from), try Self.checked(to))
        try await expectOk(.rename(request))
    }

    private func expectOk(_ operation: Hangar_V1_AgentRequest.OneOf_Op) async throws(SandboxAgentError) {
        let answer = try await request(operation)
        guard case .ok = answer.kind else { throw .unexpectedAnswer("\(answer)") }
    }

    /// Paths go to the agent as protobuf strings; NUL and over-long ones are refused here already
    /// (the agent refuses them too).
    private static func checked(_ path: String) throws(SandboxAgentError) -> String {
        guard !path.utf8.contains(0) else { throw .invalid("the path contains a NUL byte") }
        guard path.utf8.count <= 4096 else { throw .invalid("the path is \(path.utf8.count) bytes, more than 4096") }
        return path
    }

    // MARK: Plumbing

    /// Registers a waiter for a fresh id and writes the request.
    private func send(_ request: Hangar_V1_AgentRequest) -> AsyncThrowingStream<Hangar_V1_AgentEvent, any Error> {
        sendTracked(request).events
    }

    /// ``send(_:)``, with the id the request was sent under.
    private func sendTracked(
        _ request: Hangar_V1_AgentRequest
    ) -> (id: UInt64, events: AsyncThrowingStream<Hangar_V1_AgentEvent, any Error>) {
        var request = request
        request.id = nextID.add(1, ordering: .relaxed).newValue
        let id = request.id
        let (stream, continuation) = AsyncThrowingStream<Hangar_V1_AgentEvent, any Error>.makeStream()
        let gone: String? = state.withLock { state in
            if let gone = state.gone { return gone }
            state.waiters[id] = continuation
            return nil
        }
        if let gone {
            continuation.finish(throwing: SandboxAgentError.agentGone(gone))
            return (id, stream)
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.waiters.removeValue(forKey: id) }
        }
        do throws(SandboxAgentError) {
            let body: Data
            do {
                body = try request.serializedData()
            } catch {
                throw .invalid("cannot encode the request: \(error)")
            }
            guard body.count <= Self.maxFrameBytes else {
                throw .tooLarge("a \(body.count)-byte request; a frame holds at most \(Self.maxFrameBytes)")
            }
            try write(Self.frame(body))
        } catch {
            _ = state.withLock { $0.waiters.removeValue(forKey: id) }
            continuation.finish(throwing: error)
        }
        return (id, stream)
    }

    /// `body` with its 4-byte big-endian length in front.
    static func frame(_ body: Data) -> Data {
        var frame = Data(capacity: body.count + 4)
        withUnsafeBytes(of: UInt32(body.count).bigEndian) { frame.append(contentsOf: $0) }
        frame.append(body)
        return frame
    }

    private func write(_ frame: Data) throws(SandboxAgentError) {
        if let gone = goneReason { throw .agentGone(gone) }
        let failure: Int32? = writeLock.withLock { _ in
            frame.withUnsafeBytes { bytes -> Int32? in
                var offset = 0
                while offset < bytes.count {
                    let count = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
                    if count < 0 && errno == EINTR { continue }
                    guard count > 0 else { return errno }
                    offset += count
                }
                return nil
            }
        }
        if let failure {
            let reason = "writing to it failed: \(String(cString: strerror(failure)))"
            end(reason)
            throw .agentGone(reason)
        }
    }

    /// Marks the agent gone (the first reason wins) and fails every waiter.
    private func end(_ reason: String) {
        let waiters = state.withLock { state in
            if state.gone == nil { state.gone = reason }
            defer { state.waiters = [:] }
            return state.waiters
        }
        let error = SandboxAgentError.agentGone(goneReason ?? reason)
        for waiter in waiters.values { waiter.finish(throwing: error) }
        unsolicited.finish()
    }

    /// The reader thread: frames until EOF, an error or a frame that breaks the protocol.
    private func readEvents() {
        var header = [UInt8](repeating: 0, count: 4)
        let reason: String
        while true {
            guard readExactly(&header, count: 4) else {
                reason = "the agent closed the channel (it exited or the sandbox died)"
                break
            }
            let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
            guard length <= Self.maxFrameBytes else {
                reason = "the agent sent a \(length)-byte frame, more than \(Self.maxFrameBytes)"
                break
            }
            var body = [UInt8](repeating: 0, count: length)
            guard readExactly(&body, count: length) else {
                reason = "the agent closed the channel in the middle of a frame"
                break
            }
            let event: Hangar_V1_AgentEvent
            do {
                event = try Hangar_V1_AgentEvent(serializedBytes: body)
            } catch {
                reason = "the agent sent a frame that is not an AgentEvent: \(error)"
                break
            }
            deliver(event)
        }
        logger.debug("sandbox agent channel ended", metadata: ["reason": "\(reason)"])
        end(reason)
        shutdown(fd, Int32(SHUT_RDWR))
    }

    private func deliver(_ event: Hangar_V1_AgentEvent) {
        if event.id == 0 {
            if case .error(let error) = event.kind { unsolicited.yield(error) }
            return
        }
        let waiter = state.withLock { $0.waiters[event.id] }
        guard let waiter else {
            logger.debug("sandbox agent event for no waiter", metadata: ["id": "\(event.id)"])
            return
        }
        let last: Bool
        switch event.kind {
        case .started, .output: last = false
        case .watchEvents(let batch): last = batch.ended
        case .error(let error):
            waiter.finish(throwing: SandboxAgentError.agent(code: error.code, message: error.message))
            _ = state.withLock { $0.waiters.removeValue(forKey: event.id) }
            return
        default: last = true
        }
        waiter.yield(event)
        if last {
            waiter.finish()
            _ = state.withLock { $0.waiters.removeValue(forKey: event.id) }
        }
    }

    private func readExactly(_ buffer: inout [UInt8], count: Int) -> Bool {
        var got = 0
        while got < count {
            let read = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + got, count - got, 0) }
            if read < 0 && errno == EINTR { continue }
            guard read > 0 else { return false }
            got += read
        }
        return true
    }
}
