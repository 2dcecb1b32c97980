import Foundation
import HangarShared

/// How a command ended.
public struct CommandExit: Sendable, Equatable {
    /// Its exit status (0 when a signal ended it).
    public var exitCode: Int32
    /// The signal that ended it, or 0.
    public var signal: Int32
    /// Whether it was killed at its timeout.
    public var timedOut: Bool
}

/// What a command wrote and how it ended (``Commands/run(_:env:cwd:user:stdin:timeout:)``).
public struct CommandResult: Sendable, Equatable {
    /// Its exit status (0 when a signal ended it).
    public var exitCode: Int32
    /// The signal that ended it, or 0.
    public var signal: Int32
    /// Everything it wrote on standard output.
    public var stdout: Data
    /// Everything it wrote on standard error.
    public var stderr: Data
    /// Whether it was killed at its timeout.
    public var timedOut: Bool

    /// Standard output decoded as UTF-8.
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    /// Standard error decoded as UTF-8.
    public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// One event of a running command (``Commands/stream(_:env:cwd:user:stdin:timeout:)``).
public enum CommandOutput: Sendable, Equatable {
    /// It started with this pid in the sandbox (for ``Commands/signal(pid:_:)``).
    case started(pid: UInt32)
    /// A chunk of its standard output.
    case stdout(Data)
    /// A chunk of its standard error.
    case stderr(Data)
    /// It ended: the last event.
    case exited(CommandExit)
}

/// A command that runs in a sandbox (from `ps`).
public struct SandboxProcess: Sendable, Equatable {
    /// Its pid in the sandbox.
    public var pid: UInt32
    /// The command and its arguments.
    public var argv: [String]
    /// Whether it was started in the background (a code context's kernel, say).
    public var background: Bool
}

/// The commands of a sandbox (``Sandbox/commands``): run one, stream one, list them, signal one.
public struct Commands: Sendable {
    let sandbox: Sandbox

    /// Runs `argv` and waits until it ends; returns what it wrote and how it ended. A non-zero exit
    /// is a result, not an error. `env` goes over the sandbox's default environment; `cwd` is its
    /// working directory (default /home/user); `user` is "user" (uid 1000) or "root"; `stdin` (at
    /// most 1 MiB) is given to it, then closed; it is killed after `timeout`.
    public func run(
        _ argv: [String],
        env: [String: String] = [:],
        cwd: String? = nil,
        user: String = "user",
        stdin: Data? = nil,
        timeout: Duration = .seconds(60)
    ) async throws -> CommandResult {
        var result = CommandResult(exitCode: 0, signal: 0, stdout: Data(), stderr: Data(), timedOut: false)
        for try await output in stream(argv, env: env, cwd: cwd, user: user, stdin: stdin, timeout: timeout) {
            switch output {
            case .started: break
            case .stdout(let data): result.stdout += data
            case .stderr(let data): result.stderr += data
            case .exited(let exit):
                result.exitCode = exit.exitCode
                result.signal = exit.signal
                result.timedOut = exit.timedOut
                return result
            }
        }
        throw HangarClientError(.badReply, "the command's output ended before it exited")
    }

    /// Runs `argv` (as ``run(_:env:cwd:user:stdin:timeout:)``) and yields its output as it comes;
    /// `.exited` is the last event. The stream throws if the command could not start, or if it has
    /// not ended within `timeout` plus ``Hangar/Timeouts/streamGrace``.
    public func stream(
        _ argv: [String],
        env: [String: String] = [:],
        cwd: String? = nil,
        user: String = "user",
        stdin: Data? = nil,
        timeout: Duration = .seconds(60)
    ) -> AsyncThrowingStream<CommandOutput, any Error> {
        let sandbox = self.sandbox
        var request = Hangar_V1_SandboxExecRequest()
        request.argv = argv
        request.env = env
        request.cwd = cwd ?? ""
        request.user = user
        request.stdin = stdin ?? Data()
        do {
            guard !argv.isEmpty else { throw HangarClientError(.invalidArgument, "a command needs at least argv[0]") }
            guard request.stdin.count <= 1 << 20 else {
                throw HangarClientError(.invalidArgument, "stdin is over 1 MiB (\(request.stdin.count) bytes)")
            }
            request.timeoutMs = try milliseconds(timeout, what: "a command's timeout")
        } catch {
            return AsyncThrowingStream { $0.finish(throwing: error) }
        }
        let events = sandbox.stream("exec", request, within: timeout + sandbox.hangar.timeouts.streamGrace)
        return Self.outputs(of: events, sandbox: sandbox, about: "the command \(argv[0])")
    }

    /// Starts `argv` in the background (as ``run(_:env:cwd:user:stdin:timeout:)``, `timeout` nil for
    /// none) and returns its pid once it runs: it goes on without this client, its output is kept by
    /// the node (the last MiB of each stream) for ``attach(pid:stdoutOffset:stderrOffset:)``. With
    /// `keepStdin` its stdin stays open after `stdin` for ``writeStdin(pid:_:close:)``.
    public func start(
        _ argv: [String],
        env: [String: String] = [:],
        cwd: String? = nil,
        user: String = "user",
        stdin: Data? = nil,
        keepStdin: Bool = false,
        timeout: Duration? = nil
    ) async throws -> UInt32 {
        guard !argv.isEmpty else { throw HangarClientError(.invalidArgument, "a command needs at least argv[0]") }
        var request = Hangar_V1_SandboxExecRequest()
        request.argv = argv
        request.env = env
        request.cwd = cwd ?? ""
        request.user = user
        request.stdin = stdin ?? Data()
        request.keepStdin = keepStdin
        request.background = true
        guard request.stdin.count <= 1 << 20 else {
            throw HangarClientError(.invalidArgument, "stdin is over 1 MiB (\(request.stdin.count) bytes)")
        }
        if let timeout { request.timeoutMs = try milliseconds(timeout, what: "a command's timeout") }
        let events = sandbox.stream("exec", request, within: sandbox.hangar.timeouts.operation)
        for try await payload in events {
            let event = try Hangar_V1_SandboxExecEvent(serializedBytes: payload)
            switch event.kind {
            case .started(let started): return started.pid
            case .error(let error): throw await sandbox.nodeError(error)
            case .agentError(let error): throw HangarClientError(error, about: "the command \(argv[0])")
            default: continue
            }
        }
        throw HangarClientError(.badReply, "the node ended the answer to a background exec before it started")
    }

    /// The output of the background command `pid` from the offsets given (what the node still
    /// keeps of it: 0, 0 for all of it), then as it comes, then `.exited` (at once if it has ended).
    /// The stream throws `.notFound` if the sandbox holds no such command.
    public func attach(
        pid: UInt32,
        stdoutOffset: UInt64 = 0,
        stderrOffset: UInt64 = 0
    ) -> AsyncThrowingStream<CommandOutput, any Error> {
        let sandbox = self.sandbox
        var request = Hangar_V1_SandboxAttachRequest()
        (request.pid, request.stdoutOffset, request.stderrOffset) = (pid, stdoutOffset, stderrOffset)
        // A background command may run for as long as its sandbox does.
        let events = sandbox.stream("attach", request, within: .seconds(365 * 24 * 3600))
        return Self.outputs(of: events, sandbox: sandbox, about: "pid \(pid)", missingIsNotFound: true)
    }

    /// The `SandboxExecEvent`s of an `exec` or `attach` stream as ``CommandOutput``: they end at
    /// `.exited`; a node's error ends them with its error (`.notFound` for an invalid request when
    /// `missingIsNotFound`: attach's answer to an unknown pid).
    private static func outputs(
        of events: AsyncThrowingStream<Data, any Error>,
        sandbox: Sandbox,
        about: String,
        missingIsNotFound: Bool = false
    ) -> AsyncThrowingStream<CommandOutput, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await payload in events {
                        let event = try Hangar_V1_SandboxExecEvent(serializedBytes: payload)
                        switch event.kind {
                        case .started(let started): continuation.yield(.started(pid: started.pid))
                        case .output(let output):
                            continuation.yield(output.stream == .stderr ? .stderr(output.data) : .stdout(output.data))
                        case .exited(let exited):
                            let exit = CommandExit(
                                exitCode: exited.exitCode,
                                signal: exited.signal,
                                timedOut: exited.timedOut
                            )
                            continuation.yield(.exited(exit))
                            continuation.finish()
                            return
                        case .error(let error):
                            if missingIsNotFound && error.code == .sandboxInvalidRequest {
                                throw HangarClientError(.notFound, error.message, code: "NOT_FOUND")
                            }
                            throw await sandbox.nodeError(error)
                        case .agentError(let error):
                            throw HangarClientError(error, about: about)
                        case nil:
                            continue
                        }
                    }
                    throw HangarClientError(.badReply, "the command's output ended before it exited")
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Writes `data` (at most 1 MiB) to the stdin of the command `pid` (started with `keepStdin`),
    /// and closes its stdin after it when `close`.
    public func writeStdin(pid: UInt32, _ data: Data, close: Bool = false) async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.stdin.pid = pid
        request.stdin.data = data
        request.stdin.close = close
        _ = try await sandbox.operation("stdin", request, about: "the stdin of pid \(pid)")
    }

    /// The commands running in the sandbox (those started by exec, and code contexts' kernels).
    public func list() async throws -> [SandboxProcess] {
        var request = Hangar_V1_SandboxOpRequest()
        request.ps = Hangar_V1_AgentListProcesses()
        let reply = try await sandbox.operation("ps", request, about: "ps")
        return reply.processes.processes.map { SandboxProcess(pid: $0.pid, argv: $0.argv, background: $0.background) }
    }

    /// Sends `signal` (SIGTERM by default) to the process group of the command with `pid`.
    public func signal(pid: UInt32, _ signal: Int32 = SIGTERM) async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.signal.pid = pid
        request.signal.signo = signal
        _ = try await sandbox.operation("signal", request, about: "pid \(pid)")
    }
}
