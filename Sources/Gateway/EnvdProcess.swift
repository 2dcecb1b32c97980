import Foundation
import HTTPTypes
import HangarClient
import Hummingbird
import SwiftProtobuf

/// envd's `process.Process` service on Hangar's data plane.
///
/// Every process is started as a background command on the node (`exec` with `background`), and
/// its Start stream is an `attach` to it: so, as in E2B, a process outlives the HTTP stream that
/// started it (`commands.run(background=True)` and then `kill()` / `wait()` / `connect(pid)` work
/// from any later call, through any gateway), and the gateway keeps no process state. Tags are not
/// kept (Hangar has none): Start accepts one, List reports none, and a tag selector is not found.
extension Gateway {
    func addProcessRoutes(to router: Router<GatewayContext>) {
        let authority = self.authority
        router.post("/process.Process/Start") { request, context in
            let user: EnvdUser
            do {
                user = try EnvdUser(request)
            } catch {
                return ConnectRPC.unaryError(GatewayError.from(error))
            }
            return await Self.envdStream(
                request,
                context,
                authority,
                Process_StartRequest.self,
                Process_StartResponse.self
            ) {
                sandbox,
                input,
                send in
                try await EnvdProcesses.start(sandbox, input, user: user, request: request) {
                    event in try await send(.with { $0.event = event })
                }
            }
        }
        router.post("/process.Process/Connect") { request, context in
            await Self.envdStream(
                request,
                context,
                authority,
                Process_ConnectRequest.self,
                Process_ConnectResponse.self
            ) {
                sandbox,
                input,
                send in
                let pid = try EnvdProcesses.pid(input.process)
                // A running command is announced at once (the SDK waits for the start event); one
                // that is not running (ended, or none) once its kept end or the not-found comes.
                let running = try await sandbox.commands.list().contains { $0.pid == pid }
                let emit: @Sendable (Process_ProcessEvent) async throws -> Void = { event in
                    try await send(.with { $0.event = event })
                }
                if running { try await emit(.with { $0.start.pid = pid }) }
                try await EnvdProcesses.relay(
                    sandbox,
                    pid: pid,
                    fromNow: true,
                    announced: running,
                    request: request,
                    send: emit
                )
            }
        }
        router.post("/process.Process/List") { request, context in
            await Self.envdUnary(request, context, authority, Process_ListRequest.self) { sandbox, _ in
                let processes = try await sandbox.commands.list()
                return Process_ListResponse.with {
                    $0.processes = processes.filter { !EnvdWatchers.isWatcher($0.argv) }.map { process in
                        Process_ProcessInfo.with {
                            $0.pid = process.pid
                            $0.config.cmd = process.argv.first ?? ""
                            $0.config.args = Array(process.argv.dropFirst())
                        }
                    }
                }
            }
        }
        router.post("/process.Process/SendInput") { request, context in
            await Self.envdUnary(request, context, authority, Process_SendInputRequest.self) { sandbox, input in
                let pid = try EnvdProcesses.pid(input.process)
                switch input.input.input {
                case .stdin(let data): try await sandbox.commands.writeStdin(pid: pid, data)
                case .pty: throw GatewayError(.notImplemented, "Hangar sandboxes have no PTY; send stdin instead")
                case nil: throw GatewayError(.badRequest, "SendInput needs input.stdin")
                }
                return Process_SendInputResponse()
            }
        }
        router.post("/process.Process/CloseStdin") { request, context in
            await Self.envdUnary(request, context, authority, Process_CloseStdinRequest.self) { sandbox, input in
                try await sandbox.commands.writeStdin(pid: try EnvdProcesses.pid(input.process), Data(), close: true)
                return Process_CloseStdinResponse()
            }
        }
        router.post("/process.Process/SendSignal") { request, context in
            await Self.envdUnary(request, context, authority, Process_SendSignalRequest.self) { sandbox, input in
                let pid = try EnvdProcesses.pid(input.process)
                let signal: Int32 =
                    switch input.signal {
                    case .sigkill: SIGKILL
                    case .sigterm: SIGTERM
                    default: throw GatewayError(.badRequest, "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM")
                    }
                try await sandbox.commands.signal(pid: pid, signal)
                return Process_SendSignalResponse()
            }
        }
        router.post("/process.Process/Update") { request, context in
            await Self.envdUnary(request, context, authority, Process_UpdateRequest.self) {
                _,
                _ -> Process_UpdateResponse in
                throw GatewayError(.notImplemented, "Hangar sandboxes have no PTY to resize")
            }
        }
        router.post("/process.Process/StreamInput") { request, context in
            // A client-streaming call: not served; SendInput carries stdin.
            ConnectRPC.unaryError(
                GatewayError(.notImplemented, "StreamInput is not supported by the Hangar gateway; use SendInput")
            )
        }
    }

    /// A unary Connect call into the sandbox the request names, once its token is checked.
    static func envdUnary<Input: SwiftProtobuf.Message, Output: SwiftProtobuf.Message>(
        _ request: Request,
        _ context: GatewayContext,
        _ authority: GatewayAuthority,
        _ input: Input.Type,
        _ handle: @escaping @Sendable (Sandbox, Input) async throws -> Output
    ) async -> Response {
        let sandbox: Sandbox
        do {
            sandbox = try await authority.sandbox(for: request, at: try envdAddress(context))
        } catch {
            return ConnectRPC.unaryError(GatewayError.from(error))
        }
        return await ConnectRPC.unary(request, context: context, Input.self) { try await handle(sandbox, $0) }
    }

    /// A server-streaming Connect call into the sandbox the request names, once its token is checked.
    static func envdStream<Input: SwiftProtobuf.Message, Output: SwiftProtobuf.Message>(
        _ request: Request,
        _ context: GatewayContext,
        _ authority: GatewayAuthority,
        _ input: Input.Type,
        _ output: Output.Type,
        _ handle:
            @escaping @Sendable (
                Sandbox, Input, _ send: @escaping @Sendable (Output) async throws -> Void
            ) async throws -> Void
    ) async -> Response {
        let sandbox: Sandbox
        do {
            sandbox = try await authority.sandbox(for: request, at: try envdAddress(context))
        } catch {
            return ConnectRPC.unaryError(GatewayError.from(error))
        }
        return await ConnectRPC.serverStream(request, context: context, Input.self, Output.self) { input, send in
            try await handle(sandbox, input, send)
        }
    }

    static func envdAddress(_ context: GatewayContext) throws -> SandboxAddress {
        guard let address = context.address else {
            throw GatewayError(.notFound, "this call needs a sandbox (the E2b-Sandbox-Id header)")
        }
        return address
    }
}

/// The user a call into envd acts as: `Authorization: Basic base64(user:)`, "user" without one.
struct EnvdUser {
    /// "user" (uid 1000) or "root".
    let name: String

    init(name: String) { self.name = name }

    init(_ request: Request) throws {
        guard let header = request.headers[.authorization] else {
            name = "user"
            return
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "basic", let decoded = Data(base64Encoded: String(parts[1]))
        else {
            throw GatewayError(.unauthorized, "the Authorization header must be Basic base64(user:)")
        }
        let user =
            String(decoding: decoded, as: UTF8.self).split(separator: ":", omittingEmptySubsequences: false)
            .first.map(String.init) ?? ""
        guard user == "user" || user == "root" else {
            throw GatewayError(
                .unauthorized,
                "unknown user '\(user.prefix(64))': Hangar sandboxes have \"user\" and \"root\""
            )
        }
        name = user
    }
}

/// How envd's process calls map onto Hangar's background commands.
enum EnvdProcesses {
    /// The longest interval between keepalive events. The client names its own
    /// (`Keepalive-Ping-Interval`, seconds; the SDK asks for 50): the gateway sends them at most
    /// this far apart anyway, because a write is how it learns that a client went away (and stops
    /// attaching to the command, or the watcher it started for WatchDir).
    static let maxKeepalive = 10

    /// The keepalive interval of a streaming call.
    static func keepalive(_ request: Request) -> Duration {
        let asked = request.headers[keepaliveHeader].flatMap { Int($0) } ?? maxKeepalive
        return .seconds(max(1, min(asked, maxKeepalive)))
    }

    static let keepaliveHeader = HTTPField.Name("Keepalive-Ping-Interval")!

    /// The pid a selector names (tags are not kept: not found).
    static func pid(_ selector: Process_ProcessSelector) throws -> UInt32 {
        switch selector.selector {
        case .pid(let pid): return pid
        case .tag(let tag):
            throw GatewayError(
                .notFound,
                "no process with tag '\(tag.prefix(64))': the Hangar gateway does not keep tags"
            )
        case nil: throw GatewayError(.badRequest, "a process selector needs a pid")
        }
    }

    /// Starts `input`'s process in the background, sends its start event, then relays it.
    static func start(
        _ sandbox: Sandbox,
        _ input: Process_StartRequest,
        user: EnvdUser,
        request: Request,
        send: @escaping @Sendable (Process_ProcessEvent) async throws -> Void
    ) async throws {
        guard !input.hasPty else {
            throw GatewayError(.notImplemented, "Hangar sandboxes have no PTY; start the command without one")
        }
        let config = input.process
        guard !config.cmd.isEmpty else { throw GatewayError(.badRequest, "process.cmd is empty") }
        let pid = try await sandbox.commands.start(
            [config.cmd] + config.args,
            env: config.envs,
            cwd: config.hasCwd && !config.cwd.isEmpty ? config.cwd : nil,
            user: user.name,
            keepStdin: input.hasStdin && input.stdin
        )
        try await send(.with { $0.start.pid = pid })
        try await relay(sandbox, pid: pid, fromNow: false, announced: true, request: request, send: send)
    }

    /// Relays the output and end of the background command `pid` as process events (its output
    /// from now on when `fromNow`, else all that is kept of it; a start event before the first
    /// unless `announced`), with keepalive events while it is quiet.
    static func relay(
        _ sandbox: Sandbox,
        pid: UInt32,
        fromNow: Bool,
        announced: Bool,
        request: Request,
        send: @escaping @Sendable (Process_ProcessEvent) async throws -> Void
    ) async throws {
        let offset: UInt64 = fromNow ? .max : 0
        let events = sandbox.commands.attach(pid: pid, stdoutOffset: offset, stderrOffset: offset)
        let keepalive = keepalive(request)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                var started = announced
                for try await event in events {
                    if !started {
                        // Connect answers with a start event once the command is known to exist.
                        try await send(.with { $0.start.pid = pid })
                        started = true
                    }
                    switch event {
                    case .started: continue
                    case .stdout(let data): try await send(.with { $0.data.stdout = data })
                    case .stderr(let data): try await send(.with { $0.data.stderr = data })
                    case .exited(let exit):
                        try await send(.with { $0.end = endEvent(exit) })
                        return
                    }
                }
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: keepalive)
                    try await send(.with { $0.keepalive = .init() })
                }
            }
            defer { group.cancelAll() }
            _ = try await group.next()
        }
    }

    /// E2B's end event: `exited` and the exit code for a normal exit; for a signal, `exited` false
    /// and exit code -1 (as Go's `ProcessState` reports them), and the status in Go's words.
    static func endEvent(_ exit: CommandExit) -> Process_ProcessEvent.EndEvent {
        var end = Process_ProcessEvent.EndEvent()
        if exit.signal != 0 {
            end.exited = false
            end.exitCode = -1
            end.status = "signal: \(signalName(exit.signal))"
        } else {
            end.exited = true
            end.exitCode = exit.exitCode
            end.status = "exit status \(exit.exitCode)"
        }
        if exit.timedOut { end.error = "the command was killed at its timeout" }
        return end
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGKILL: "killed"
        case SIGTERM: "terminated"
        case SIGINT: "interrupt"
        case SIGHUP: "hangup"
        case SIGPIPE: "broken pipe"
        case SIGSEGV: "segmentation fault"
        case SIGABRT: "aborted"
        default: "signal \(signal)"
        }
    }
}
