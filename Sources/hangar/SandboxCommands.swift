import ArgumentParser
import Foundation
import HangarClient
import HangarShared

struct SandboxGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox",
        abstract: "Stateful sandboxes: create, list, show, set the timeout, kill, events.",
        discussion: """
            A sandbox is created once and lives until it is killed or its timeout passes; it belongs
            to one tenant (--tenant, HANGAR_TENANT or the context's, else default).
            Example: id=$(hangar sandbox create --timeout 600 --metadata task=demo); hangar sandbox info $id
            """,
        subcommands: [
            SandboxCreateCommand.self, SandboxListCommand.self, SandboxInfoCommand.self,
            SandboxTimeoutCommand.self, SandboxKillCommand.self, SandboxEventsCommand.self, SandboxExecCommand.self,
            SandboxAttachCommand.self, SandboxPsCommand.self, SandboxSignalCommand.self, SandboxFilesGroup.self,
            SandboxRunCodeCommand.self,
            SandboxContextsGroup.self,
        ]
    )
}

/// The tenant a sandbox command acts as, shared by every `hangar sandbox` subcommand.
struct SandboxTenantOptions: ParsableArguments {
    @Option(help: "Tenant that owns the sandbox. Env: HANGAR_TENANT. Default: the context's, else default.")
    var tenant: String?
}

struct SandboxCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a sandbox; print its id once it runs.",
        discussion: """
            Waits until a node runs it (or it could not be created). Exit codes: 0 running; 2 no node
            could ever hold it (e.g. a runtime no node offers) or none had room in time; 1 otherwise.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Option(
        help: "Runtime: process (bubblewrap), container (runc), gvisor (runsc) or microvm (qemu), as nodes offer them."
    )
    var runtime: String = "process"
    @Option(help: "Template (root filesystem); see `hangar template list` on a node.")
    var template: String = "host"
    @Option(help: "Idle timeout in seconds before it is killed (default: the scheduler's, 5 min).")
    var timeout: Double?
    @Option(help: "Memory limit of the whole sandbox, in MiB.")
    var memoryMib: UInt64?
    @Option(name: .customLong("env"), help: "Default environment variable KEY=VALUE of its commands (repeatable).")
    var env: [String] = []
    @Option(name: .customLong("metadata"), help: "Your own label KEY=VALUE, for `sandbox ls` (repeatable).")
    var metadata: [String] = []
    @Option(name: .customLong("label"), help: "Node label KEY=VALUE the node must have (repeatable).")
    var labels: [String] = []
    @Option(help: "Idempotency key: a repeat returns the original sandbox.")
    var requestId: String?
    @OptionGroup var access: GrantOptions

    func validate() throws {
        if let timeout, !(timeout > 0 && timeout <= 86_400) {
            throw ValidationError("--timeout must be more than 0 and at most 86400 seconds")
        }
        if let memoryMib, memoryMib == 0 || memoryMib > 1 << 20 {
            throw ValidationError("--memory-mib must be 1...1048576")
        }
    }

    func run() async throws {
        var request = Hangar_V1_SandboxCreateRequest()
        request.runtime = runtime
        request.template = template
        request.requestID = requestId ?? ""
        if let timeout { request.timeoutMs = UInt32((timeout * 1000).rounded(.up)) }
        if let memoryMib { request.limits.memoryBytes = memoryMib << 20 }
        request.env = try parseLabels(env, flag: "--env")
        request.metadata = try parseLabels(metadata, flag: "--metadata")
        request.labels = try parseLabels(labels, flag: "--label")
        let grants = access.grants
        if grants != Hangar_V1_Grants() { request.grants = grants }
        let network = try access.networkPolicy()
        // Without grant flags or --network, the tenant's default for sandboxes applies.
        if network != Hangar_V1_NetworkPolicy() || access.network != nil { request.network = network }
        // The scheduler answers once the sandbox runs: its creation timeout (10 s) plus a node's answer.
        let reply = try await connection.withHangar(owner, name: "hangar-cli-sandbox") { hangar in
            try await hangar.control(
                "create",
                request,
                as: Hangar_V1_SandboxCreateReply.self,
                timeout: hangar.timeouts.create
            )
        }
        if output.isJSON { try printJSON(reply) }
        switch reply.outcome {
        case .created(let info):
            if info.state != .sandboxRunning {
                if !output.isJSON { printError("sandbox \(info.id) could not be created: \(info.message)") }
                throw ExitCode(info.endReason == .sandboxFailed && info.nodeID.isEmpty ? 2 : 1)
            }
            if !output.isJSON { print(info.id) }
            if reply.duplicate { printError("request id seen before: this is the sandbox it created") }
        case .rejected(let rejected):
            if !output.isJSON {
                let field = rejected.field.isEmpty ? "" : " (\(rejected.field))"
                printError("rejected\(field): \(rejected.message)")
            }
            throw ExitCode(rejected.reason == .noCapacity ? 2 : 1)
        case nil:
            throw CLIError("the scheduler sent an empty reply")
        }
    }
}

struct SandboxListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List the tenant's sandboxes (live ones unless --show says otherwise), newest first."
    )

    enum StateFilter: String, ExpressibleByArgument, CaseIterable {
        case live, starting, running, ended, all
    }

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Option(name: .customLong("show"), help: "Which: live (starting and running), starting, running, ended or all.")
    var show: StateFilter = .live
    @Option(name: .customLong("metadata"), help: "Only sandboxes with this KEY=VALUE (repeatable: all must match).")
    var metadata: [String] = []
    @Option(help: "At most this many (1-1000).")
    var limit: UInt32 = 100

    func validate() throws {
        guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1...1000") }
    }

    func run() async throws {
        var request = Hangar_V1_SandboxListRequest()
        request.states =
            switch show {
            case .live: []
            case .starting: [.sandboxStarting]
            case .running: [.sandboxRunning]
            case .ended: [.sandboxEnded]
            case .all: [.sandboxStarting, .sandboxRunning, .sandboxEnded]
            }
        request.metadata = try parseLabels(metadata, flag: "--metadata")
        request.limit = limit
        let reply = try await connection.withHangar(owner, name: "hangar-cli-sandbox") { hangar in
            try await hangar.control("list", request, as: Hangar_V1_SandboxListReply.self)
        }
        if !reply.error.isEmpty {
            printError(reply.error)
            throw ExitCode(1)
        }
        if output.isJSON {
            try printJSON(reply)
            return
        }
        let style = Style.stdout
        var header = ["SANDBOX", "STATE", "NODE", "RUNTIME", "CREATED", "ENDS"]
        if output.isWide { header += ["TEMPLATE", "METADATA", "MESSAGE"] }
        var rows = [header]
        for info in reply.sandboxes {
            var row = [
                info.id.terminalSafe, style.state(sandboxStateName(info)),
                info.nodeID.isEmpty ? "-" : info.nodeID.terminalSafe, info.runtime.terminalSafe,
                isoTime(info.createdAtMs), info.endsAtMs > 0 ? isoTime(info.endsAtMs) : "-",
            ]
            if output.isWide {
                let pairs = info.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                row += [
                    info.template.terminalSafe, pairs.joined(separator: ",").terminalSafe, info.message.terminalSafe,
                ]
            }
            rows.append(row)
        }
        print(formatTable(rows, style: style))
        if reply.sandboxes.isEmpty { printError("no sandboxes") }
        if reply.more { printError("more sandboxes than --limit \(limit)") }
    }
}

struct SandboxInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show one sandbox: its state, node, timeout and why it ended."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The sandbox id (as printed by `hangar sandbox create`).")
    var id: String

    func run() async throws {
        var request = Hangar_V1_SandboxGetRequest()
        request.sandboxID = id
        try await sandboxCall("get", request, owner: owner, connection: connection, output: output)
    }
}

struct SandboxTimeoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "timeout",
        abstract: "Set a sandbox's timeout again: it ends this many seconds from now (never past its maximum lifetime)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "Seconds from now.")
    var seconds: Double

    func validate() throws {
        guard seconds > 0 && seconds <= 86_400 else {
            throw ValidationError("the timeout must be more than 0 and at most 86400 seconds")
        }
    }

    func run() async throws {
        var request = Hangar_V1_SandboxSetTimeoutRequest()
        request.sandboxID = id
        request.timeoutMs = UInt32((seconds * 1000).rounded(.up))
        try await sandboxCall("timeout", request, owner: owner, connection: connection, output: output)
    }
}

struct SandboxKillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill",
        abstract: "Kill a sandbox: its processes and everything it wrote are gone."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The sandbox id.")
    var id: String

    func run() async throws {
        var request = Hangar_V1_SandboxKillRequest()
        request.sandboxID = id
        try await sandboxCall("kill", request, owner: owner, connection: connection, output: output)
    }
}

struct SandboxEventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Print the stored lifecycle events of one sandbox (or all of the tenant's), oldest first."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Option(help: "Only events after this stream sequence (the SEQ column of an earlier call).")
    var after: UInt64 = 0
    @Option(help: "At most this many (1-1000).")
    var limit: UInt32 = 100
    @Argument(help: "The sandbox id; omit for every sandbox of the tenant.")
    var id: String?

    func validate() throws {
        guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1...1000") }
    }

    func run() async throws {
        var request = Hangar_V1_SandboxEventsRequest()
        request.sandboxID = id ?? ""
        request.afterSeq = after
        request.limit = limit
        let reply = try await connection.withHangar(owner, name: "hangar-cli-sandbox") { hangar in
            try await hangar.control("events", request, as: Hangar_V1_SandboxEventsReply.self)
        }
        if !reply.error.isEmpty {
            printError(reply.error)
            throw ExitCode(1)
        }
        if output.isJSON {
            try printJSON(reply)
            return
        }
        var rows = [["SEQ", "SANDBOX", "EVENT", "AT", "MESSAGE"]]
        for event in reply.events {
            rows.append([
                String(event.streamSeq), event.sandboxID.terminalSafe, eventName(event.kind),
                isoTime(event.atMs), event.message.terminalSafe,
            ])
        }
        print(formatTable(rows, style: .stdout))
        if reply.events.isEmpty { printError("no events") }
    }
}

/// Sends `verb` (get, timeout, kill) and prints the sandbox it answers with, or its error (exit 1).
private func sandboxCall(
    _ verb: String,
    _ request: some SwiftProtobufMessage,
    owner: SandboxTenantOptions,
    connection: ConnectionOptions,
    output: OutputOptions
) async throws {
    let reply = try await connection.withHangar(owner, name: "hangar-cli-sandbox") { hangar in
        try await hangar.control(verb, request, as: Hangar_V1_SandboxReply.self)
    }
    if output.isJSON { try printJSON(reply) }
    switch reply.outcome {
    case .info(let info):
        if !output.isJSON { printSandbox(info) }
    case .error(let error):
        if !output.isJSON { printError(error.message) }
        throw ExitCode(1)
    case nil:
        throw CLIError("the scheduler sent an empty reply")
    }
}

private func printSandbox(_ info: Hangar_V1_SandboxInfo) {
    let style = Style.stdout
    print("sandbox   \(info.id.terminalSafe)")
    print("tenant    \(info.tenant.terminalSafe)")
    print("state     \(style.state(sandboxStateName(info)))")
    print("node      \(info.nodeID.isEmpty ? "-" : info.nodeID.terminalSafe)")
    print("runtime   \(info.runtime.terminalSafe) (template \(info.template.terminalSafe))")
    print("created   \(isoTime(info.createdAtMs))")
    if info.endsAtMs > 0 { print("ends      \(isoTime(info.endsAtMs)) (unless its timeout is set again)") }
    if info.endedAtMs > 0 { print("ended     \(isoTime(info.endedAtMs))") }
    for (key, value) in info.metadata.sorted(by: { $0.key < $1.key }) {
        print("metadata  \(key.terminalSafe)=\(value.terminalSafe)")
    }
    if !info.message.isEmpty { print("message   \(info.message.terminalSafe)") }
}

/// RUNNING, STARTING, or the way it ended (KILLED, TIMED_OUT, LOST, FAILED, DIED).
func sandboxStateName(_ info: Hangar_V1_SandboxInfo) -> String {
    switch info.state {
    case .sandboxStarting: "STARTING"
    case .sandboxRunning: "RUNNING"
    case .sandboxEnded:
        switch info.endReason {
        case .sandboxKilled: "KILLED"
        case .sandboxTimedOut: "TIMED_OUT"
        case .sandboxLost: "LOST"
        case .sandboxFailed: "FAILED"
        case .sandboxDied: "DIED"
        default: "ENDED"
        }
    default: "UNKNOWN"
    }
}

private func eventName(_ kind: Hangar_V1_SandboxEventKind) -> String {
    switch kind {
    case .sandboxEventCreated: "created"
    case .sandboxEventStarted: "started"
    case .sandboxEventTimeoutSet: "timeout set"
    case .sandboxEventEnded: "ended"
    default: "unknown"
    }
}

private func isoTime(_ unixMilliseconds: Int64) -> String {
    guard unixMilliseconds > 0 else { return "-" }
    return ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(unixMilliseconds) / 1000))
}

struct SandboxExecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run a command in a sandbox; stream its output; exit with its exit code.",
        discussion: """
            Goes straight to the node that holds the sandbox (hangar.sbx.<node>.<tenant>.<sandbox>.exec).
            The command's stdout and stderr go to this command's; its exit code is this command's
            (128+N when signal N ended it). Exit 1 when the sandbox is not running or ends meanwhile.
            Example: hangar sandbox exec $id -- sh -c 'echo hello > note.txt; cat note.txt'
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Flag(name: .shortAndLong, help: "Send this command's standard input (at most 1 MiB) to the command.")
    var interactive = false
    @Option(name: .customLong("env"), help: "Environment variable KEY=VALUE for the command (repeatable).")
    var env: [String] = []
    @Option(help: "Working directory in the sandbox (default: /home/user).")
    var cwd: String?
    @Option(help: "Run as: user (uid 1000, the default) or root (uid 0 without capabilities).")
    var user: String = "user"
    @Option(help: "Kill the command after this many seconds (default: no limit of its own).")
    var timeout: Double?
    @Flag(
        help: "Run it in the background: print its pid and return; `hangar sandbox attach ID PID` streams its output."
    )
    var background = false
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after -- (flags before -- are hangar's).")
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("give the command after --, e.g. -- ls -l") }
        guard ["user", "root"].contains(user) else { throw ValidationError("--user must be user or root") }
        if let timeout, !(timeout > 0 && timeout <= 86_400) {
            throw ValidationError("--timeout must be more than 0 and at most 86400 seconds")
        }
    }

    func run() async throws {
        var request = Hangar_V1_SandboxExecRequest()
        request.argv = command
        request.env = try parseLabels(env, flag: "--env")
        request.cwd = cwd ?? ""
        request.user = user
        if let timeout { request.timeoutMs = UInt32((timeout * 1000).rounded(.up)) }
        request.background = background
        if interactive {
            let input = FileHandle.standardInput.readDataToEndOfFile()
            guard input.count <= 1 << 20 else { throw CLIError("standard input is over 1 MiB (\(input.count) bytes)") }
            request.stdin = input
        }
        let code = try await connection.withSandbox(id, owner, name: "hangar-cli-exec") { sandbox in
            var within = untilTheSandboxEnds
            if background {
                within = sandbox.hangar.timeouts.operation
            } else if request.timeoutMs > 0 {
                within = .milliseconds(request.timeoutMs) + sandbox.hangar.timeouts.streamGrace
            }
            return try await printCommand(
                sandbox.stream("exec", request, within: within),
                sandbox: sandbox,
                untilStarted: background
            )
        }
        if code != 0 { throw ExitCode(code) }
    }
}

struct SandboxAttachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Stream a background command's output (what is kept of it, then as it comes); exit with its code.",
        discussion:
            "Any client of the tenant can attach, also after the command ended. Example: pid=$(hangar sandbox exec --background $id -- ./serve); hangar sandbox attach $id $pid"
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The background command's pid (printed by exec --background).")
    var pid: UInt32

    func run() async throws {
        let request = Hangar_V1_SandboxAttachRequest.with { $0.pid = pid }
        let code = try await connection.withSandbox(id, owner, name: "hangar-cli-attach") { sandbox in
            try await printCommand(
                sandbox.stream("attach", request, within: untilTheSandboxEnds),
                sandbox: sandbox,
                untilStarted: false
            )
        }
        if code != 0 { throw ExitCode(code) }
    }
}

/// Prints the events of an exec or attach until the command exits (its exit code, 128+N for
/// signal N) or the sandbox refuses it (1); a background exec (`untilStarted`) prints the command's
/// pid once it started. The stream (the client library's) throws when the node sends an error, the
/// sandbox ends meanwhile, or it outlasts its time.
private func printCommand(
    _ events: AsyncThrowingStream<Data, any Error>,
    sandbox: Sandbox,
    untilStarted: Bool
) async throws -> Int32 {
    var written: [Hangar_V1_AgentStream: UInt64] = [:]
    for try await payload in events {
        let event = try Hangar_V1_SandboxExecEvent(serializedBytes: payload)
        switch event.kind {
        case .started(let started):
            guard untilStarted else { continue }
            print(started.pid)
            return 0
        case nil:
            continue
        case .output(let output):
            let sofar = written[output.stream, default: 0]
            if output.offset > sofar {
                printError("\(output.offset - sofar) bytes of output were lost on the way (a slow reader)")
            }
            written[output.stream] = output.offset + UInt64(output.data.count)
            let handle = output.stream == .stderr ? FileHandle.standardError : FileHandle.standardOutput
            handle.write(output.data)
        case .exited(let exited):
            if exited.timedOut { printError("the command was killed at its timeout") }
            return exited.signal != 0 ? 128 + exited.signal : exited.exitCode
        case .error(let error):
            throw await sandbox.nodeError(error)
        case .agentError(let error):
            printError("the sandbox refused the command: \(error.message)")
            return 1
        }
    }
    throw CLIError("node \(sandbox.nodeID) stopped answering")
}

struct SandboxFilesGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "files",
        abstract: "A sandbox's files: list, get, put, remove, watch (paths resolve inside the sandbox).",
        discussion: "Relative paths are under /home/user. Example: hangar sandbox files put $id data.csv data.csv",
        subcommands: [
            SandboxFilesListCommand.self, SandboxFilesGetCommand.self, SandboxFilesPutCommand.self,
            SandboxFilesRemoveCommand.self, SandboxFilesWatchCommand.self,
        ]
    )
}

struct SandboxFilesListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List a directory of the sandbox.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The directory (default: /home/user).")
    var path: String = "/home/user"

    func run() async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.list.path = path
        let reply = try await connection.withSandbox(id, owner, name: "hangar-cli-files") { sandbox in
            try await sandbox.operation("files.list", request, about: path)
        }
        if output.isJSON {
            try printJSON(reply.entries)
            return
        }
        var rows = [["NAME", "TYPE", "SIZE", "MODE", "MODIFIED"]]
        for entry in reply.entries.entries {
            let type =
                switch entry.type {
                case .directory: "dir"
                case .file: "file"
                case .symlink: "link → \(entry.symlinkTarget)"
                default: "other"
                }
            rows.append([
                entry.name.terminalSafe, type.terminalSafe, String(entry.size), String(entry.mode & 0o7777, radix: 8),
                isoTime(entry.mtimeMs),
            ])
        }
        print(formatTable(rows, style: .stdout))
    }
}

struct SandboxFilesGetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Copy a file out of the sandbox, to stdout or to --to FILE."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The file in the sandbox.")
    var path: String
    @Option(help: "Write it to this local file instead of stdout.")
    var to: String?

    func run() async throws {
        let content = try await connection.withSandbox(id, owner, name: "hangar-cli-files") { sandbox in
            try await sandbox.files.read(path)
        }
        if let to {
            guard FileManager.default.createFile(atPath: to, contents: content) else {
                throw CLIError("cannot write \(to)")
            }
        } else {
            FileHandle.standardOutput.write(content)
        }
    }
}

struct SandboxFilesPutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "put",
        abstract: "Copy a local file (or - for stdin) into the sandbox."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The local file, or - for standard input.")
    var local: String
    @Argument(help: "Where in the sandbox (its directory must exist).")
    var path: String

    func run() async throws {
        let content: Data
        if local == "-" {
            content = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let data = FileManager.default.contents(atPath: local) else { throw CLIError("cannot read \(local)") }
            content = data
        }
        // The first MiB replaces the file atomically; the rest is appended a MiB at a time.
        try await connection.withSandbox(id, owner, name: "hangar-cli-files") { sandbox in
            try await sandbox.files.write(path, content)
        }
    }
}

struct SandboxFilesRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Remove a file or directory of the sandbox."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Flag(name: .shortAndLong, help: "Remove a directory and everything under it.")
    var recursive = false
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The path in the sandbox.")
    var path: String

    func run() async throws {
        try await connection.withSandbox(id, owner, name: "hangar-cli-files") { sandbox in
            try await sandbox.files.remove(path, recursive: recursive)
        }
    }
}

struct SandboxFilesWatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Print the changes in a directory of the sandbox as they happen, one line each.",
        discussion: """
            Each line is the operation (create, write, remove, rename, chmod) and the path relative to
            the directory (a directory ends with /). The sandbox's agent watches with inotify; the
            watch ends after --timeout, or when the directory is removed (exit 0).
            Example: hangar sandbox files watch --recursive --timeout 300 $id /home/user
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Flag(name: .shortAndLong, help: "Also the directories below it (made later ones included).")
    var recursive = false
    @Option(help: "Stop watching after this many seconds (default 60, at most 3600).")
    var timeout: Double = 60
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The directory in the sandbox.")
    var path: String

    func validate() throws {
        guard timeout > 0 && timeout <= 3600 else {
            throw ValidationError("--timeout must be more than 0 and at most 3600")
        }
    }

    func run() async throws {
        let request = Hangar_V1_SandboxWatchRequest.with {
            $0.path = path
            $0.recursive = recursive
            $0.timeoutMs = UInt32((timeout * 1000).rounded(.up))
        }
        // The raw events, not the library's `files.watch`: they also say why a watch ended and when
        // the agent dropped changes.
        let code = try await connection.withSandbox(id, owner, name: "hangar-cli-watch") { sandbox in
            let within = Duration.milliseconds(request.timeoutMs) + sandbox.hangar.timeouts.streamGrace
            for try await payload in sandbox.stream("files.watch", request, within: within) {
                let event = try Hangar_V1_SandboxWatchEvent(serializedBytes: payload)
                switch event.kind {
                case .started, nil: continue
                case .changes(let batch):
                    if !batch.message.isEmpty { printError(batch.message) }
                    for change in batch.events {
                        print("\(Self.name(change.op)) \(change.path.terminalSafe)\(change.directory ? "/" : "")")
                    }
                    fflush(nil)
                case .ended(let ended):
                    if ended.reason != "timeout" { printError("the watch ended: \(ended.reason)") }
                    return Int32(0)
                case .error(let error):
                    throw await sandbox.nodeError(error)
                case .agentError(let error):
                    printError("\(path): \(error.message)")
                    return 1
                }
            }
            throw CLIError("node \(sandbox.nodeID) stopped answering")
        }
        if code != 0 { throw ExitCode(code) }
    }

    static func name(_ op: Hangar_V1_AgentWatchOp) -> String {
        switch op {
        case .create: "create"
        case .write: "write"
        case .remove: "remove"
        case .rename: "rename"
        case .chmod: "chmod"
        case .UNRECOGNIZED(let value): "op\(value)"
        }
    }
}

struct SandboxPsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ps",
        abstract: "List the commands running in a sandbox (those started by exec or run-code)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The sandbox id.")
    var id: String

    func run() async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.ps = Hangar_V1_AgentListProcesses()
        let reply = try await connection.withSandbox(id, owner, name: "hangar-cli-ps") { sandbox in
            try await sandbox.operation("ps", request, about: "ps")
        }
        if output.isJSON {
            try printJSON(reply.processes)
            return
        }
        var rows = [["PID", "BACKGROUND", "COMMAND"]]
        for process in reply.processes.processes {
            rows.append([
                String(process.pid), process.background ? "yes" : "no",
                process.argv.joined(separator: " ").terminalSafe,
            ])
        }
        print(formatTable(rows, style: .stdout))
    }
}

struct SandboxSignalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signal",
        abstract: "Send a signal to a command running in a sandbox (its process group).",
        discussion:
            "PID is the command's pid in the sandbox (`hangar sandbox ps`). Example: hangar sandbox signal $id 12 --signal INT"
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Option(help: "The signal: a name (TERM, KILL, INT, HUP, USR1, USR2, STOP, CONT, QUIT) or a number.")
    var signal: String = "TERM"
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The command's pid in the sandbox.")
    var pid: UInt32

    static let names: [String: Int32] = [
        "TERM": SIGTERM, "KILL": SIGKILL, "INT": SIGINT, "HUP": SIGHUP, "USR1": SIGUSR1, "USR2": SIGUSR2,
        "STOP": SIGSTOP, "CONT": SIGCONT, "QUIT": SIGQUIT,
    ]

    var number: Int32? {
        let name = signal.uppercased()
        return Self.names[name.hasPrefix("SIG") ? String(name.dropFirst(3)) : name] ?? Int32(signal)
    }

    func validate() throws {
        guard let number, number > 0, number < 65 else {
            throw ValidationError(
                "--signal must be a signal name (\(Self.names.keys.sorted().joined(separator: ", "))) or 1-64"
            )
        }
    }

    func run() async throws {
        try await connection.withSandbox(id, owner, name: "hangar-cli-signal") { sandbox in
            try await sandbox.commands.signal(pid: pid, number ?? SIGTERM)
        }
    }
}
