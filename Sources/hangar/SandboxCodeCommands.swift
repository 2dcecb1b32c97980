import ArgumentParser
import Foundation
import HangarClient
import HangarShared

struct SandboxRunCodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run-code",
        abstract: "Run a cell of code in a sandbox's code context; state persists between cells.",
        discussion: """
            Reads the cell from standard input (or --code). Output streams as the cell runs; the
            value of the last expression and every result's text/plain are printed; images
            (matplotlib figures, image/png and image/jpeg results) are saved under --images.
            Without --code-context the sandbox's default context of --language is used (made on first
            use). Exit 0 when the cell ran, 1 when it raised or could not run, 124 at its timeout.
            Example: echo 'x = 41' | hangar sandbox run-code $id; echo 'x + 1' | hangar sandbox run-code $id
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Option(
        name: .customLong("code-context"),
        help: "The code context (from `hangar sandbox contexts create`); default: the language's default context."
    )
    var codeContext: String?
    @Option(help: "Language of the default context: python, bash or javascript (needs node in the sandbox).")
    var language: String = "python"
    @Option(help: "The cell's code (default: read standard input).")
    var code: String?
    @Option(help: "Interrupt the cell after this many seconds (default 300); its context keeps its state.")
    var timeout: Double?
    @Option(help: "Folder to save image results in (created if missing).")
    var images: String = "."
    @Argument(help: "The sandbox id.")
    var id: String

    func validate() throws {
        guard CodeLanguages.all.contains(language) else { throw ValidationError(CodeLanguages.refusal) }
        if let timeout, !(timeout > 0 && timeout <= 86_400) {
            throw ValidationError("--timeout must be more than 0 and at most 86400 seconds")
        }
    }

    func run() async throws {
        var request = Hangar_V1_CodeRunRequest()
        request.contextID = codeContext ?? ""
        request.language = language
        request.code = code ?? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        if let timeout { request.timeoutMs = UInt32((timeout * 1000).rounded(.up)) }
        let status = try await connection.withSandbox(id, owner, name: "hangar-cli-run-code") { sandbox in
            // The node ends a cell at its timeout (300 s unless given).
            let within = Duration.milliseconds(request.timeoutMs == 0 ? 300_000 : request.timeoutMs)
            return try await printCell(
                sandbox.stream("code.run", request, within: within + sandbox.hangar.timeouts.streamGrace),
                sandbox: sandbox
            )
        }
        if status != 0 { throw ExitCode(status) }
    }

    /// Prints the events of a cell until it is done: 0 when it ran, 1 when it raised or could not
    /// run, 124 at its timeout.
    private func printCell(_ events: AsyncThrowingStream<Data, any Error>, sandbox: Sandbox) async throws -> Int32 {
        var saved = 0
        var status: Int32 = 0
        for try await payload in events {
            let event = try Hangar_V1_CodeRunEvent(serializedBytes: payload)
            if output.isJSON { try printJSON(event) }
            switch event.kind {
            case .stream(let stream):
                guard !output.isJSON else { continue }
                (stream.stderr ? FileHandle.standardError : FileHandle.standardOutput).write(Data(stream.text.utf8))
            case .result(let result):
                saved += try save(result, number: saved)
                if !output.isJSON, let text = result.data["text/plain"] { print(text) }
            case .error(let error):
                status = 1
                guard !output.isJSON else { continue }
                let traceback = error.traceback.isEmpty ? "\(error.name): \(error.value)" : error.traceback
                FileHandle.standardError.write(Data((traceback.hasSuffix("\n") ? traceback : traceback + "\n").utf8))
            case .done(let done):
                switch done.end {
                case .codeCellOk, .codeCellError: break
                case .codeCellTimedOut: status = 124
                default: status = 1
                }
                if !done.message.isEmpty && !output.isJSON { printError(done.message) }
                return status
            case .failure(let failure):
                if !output.isJSON { printError(failure.message) }
                return 1
            case .agentError(let error):
                if !output.isJSON { printError("the sandbox refused the kernel: \(error.message)") }
                return 1
            case nil:
                continue
            }
        }
        throw CLIError("node \(sandbox.nodeID) stopped answering")
    }

    /// Saves the images of `result` under ``images``; returns how many.
    private func save(_ result: Hangar_V1_CodeResult, number: Int) throws -> Int {
        var count = 0
        for (mime, suffix) in [("image/png", "png"), ("image/jpeg", "jpg")] {
            guard let base64 = result.data[mime] else { continue }
            guard let bytes = Data(base64Encoded: base64, options: .ignoreUnknownCharacters) else {
                printError("a \(mime) result is not base64; not saved")
                continue
            }
            try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
            let path = (images as NSString).appendingPathComponent(
                "result-\(UUID().uuidString.prefix(8))-\(number + count).\(suffix)"
            )
            try bytes.write(to: URL(fileURLWithPath: path))
            printError("saved \(mime) (\(bytes.count) bytes) to \(path)")
            count += 1
        }
        return count
    }
}

struct SandboxContextsGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "contexts",
        abstract: "A sandbox's code contexts: list, create, restart, remove.",
        discussion:
            "Example: ctx=$(hangar sandbox contexts create $id --language bash); hangar sandbox run-code $id --code-context $ctx",
        subcommands: [
            SandboxContextsListCommand.self, SandboxContextsCreateCommand.self, SandboxContextsRestartCommand.self,
            SandboxContextsRemoveCommand.self,
        ]
    )
}

struct SandboxContextsListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List a sandbox's code contexts.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The sandbox id.")
    var id: String

    func run() async throws {
        let reply = try await codeContextCall(.list(.init()), id: id, owner: owner, connection: connection)
        if output.isJSON { return try printJSON(reply) }
        let rows = reply.list.contexts.map {
            [
                $0.id.terminalSafe, $0.language.terminalSafe, $0.alive ? "alive" : "ended", "\($0.executionCount)",
                $0.cwd.isEmpty ? "~" : $0.cwd.terminalSafe,
            ]
        }
        print(formatTable([["CONTEXT", "LANGUAGE", "STATE", "CELLS", "CWD"]] + rows, style: .stdout))
    }
}

struct SandboxContextsCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a code context (its own interpreter and state); prints its id."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @OptionGroup var output: OutputOptions
    @Option(help: "python, bash or javascript (needs node in the sandbox).")
    var language: String = "python"
    @Option(help: "Working directory in the sandbox (default: /home/user).")
    var cwd: String?
    @Option(name: .customLong("env"), help: "Environment variable KEY=VALUE for the context (repeatable).")
    var env: [String] = []
    @Argument(help: "The sandbox id.")
    var id: String

    func validate() throws {
        guard CodeLanguages.all.contains(language) else { throw ValidationError(CodeLanguages.refusal) }
    }

    func run() async throws {
        var create = Hangar_V1_CodeContextCreate()
        create.language = language
        create.cwd = cwd ?? ""
        create.env = try parseLabels(env, flag: "--env")
        let reply = try await codeContextCall(.create(create), id: id, owner: owner, connection: connection)
        if output.isJSON { return try printJSON(reply) }
        print(reply.context.id)
    }
}

struct SandboxContextsRestartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restart",
        abstract: "Restart a code context: a new interpreter, its state cleared, the same id."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The code context's id.")
    var codeContext: String

    func run() async throws {
        _ = try await codeContextCall(.restart(codeContext), id: id, owner: owner, connection: connection)
    }
}

struct SandboxContextsRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Remove a code context (its interpreter is killed)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var owner: SandboxTenantOptions
    @Argument(help: "The sandbox id.")
    var id: String
    @Argument(help: "The code context's id.")
    var codeContext: String

    func run() async throws {
        _ = try await codeContextCall(.remove(codeContext), id: id, owner: owner, connection: connection)
    }
}

/// Sends one code-context request to the node that holds the sandbox; prints its error and exits
/// 1 when it failed.
private func codeContextCall(
    _ op: Hangar_V1_CodeContextRequest.OneOf_Op,
    id: String,
    owner: SandboxTenantOptions,
    connection: ConnectionOptions
) async throws -> Hangar_V1_CodeContextReply {
    var request = Hangar_V1_CodeContextRequest()
    request.op = op
    return try await connection.withSandbox(id, owner, name: "hangar-cli-contexts") { sandbox in
        let reply = try await sandbox.hangar.request(
            sandbox.subject("code.contexts"),
            request,
            as: Hangar_V1_CodeContextReply.self,
            who: "node \(sandbox.nodeID)",
            timeout: sandbox.hangar.timeouts.contexts
        )
        switch reply.outcome {
        case .error(let error):
            throw await sandbox.nodeError(error)
        case .agentError(let error):
            printError("the sandbox refused: \(error.message)")
            throw ExitCode(1)
        default:
            return reply
        }
    }
}

/// The languages of code contexts, as `--language` takes them.
enum CodeLanguages {
    static let all = ["python", "bash", "javascript"]
    static let refusal = "--language must be python, bash or javascript (javascript needs node in the sandbox)"
}
