import ArgumentParser
import Foundation
import HangarNATS
import HangarShared
import Logging
@preconcurrency import SwiftProtobuf

typealias SwiftProtobufMessage = SwiftProtobuf.Message

/// What a job runs and under which limits, shared by `run` and `submit`.
struct JobSpecOptions: ParsableArguments {
    @Option(help: "Tenant to submit as. Env: HANGAR_TENANT. Default: the context's, else default.")
    var tenant: String?
    @Option(
        help: "Runtime: process (bubblewrap), container (runc), gvisor (runsc), microvm (qemu), wasm (WasmKit), null."
    )
    var runtime: String = "process"
    @Option(help: "Template (root filesystem) to run in; see `hangar template list` on a node.")
    var template: String = "host"
    @Option(help: "Wall-clock limit in seconds (default: the scheduler's, 10 s).")
    var timeout: Double?
    @Option(help: "Memory limit in MiB (default: the node's for the runtime).")
    var memoryMib: UInt64?
    @Option(help: "CPU share in thousandths of a core, 1000 = one core (default: the node's).")
    var cpuMillis: UInt32?
    @Option(name: .customLong("env"), help: "Environment variable KEY=VALUE for the job (repeatable).")
    var env: [String] = []
    @Option(help: "Working directory inside the sandbox.")
    var cwd: String?
    @Option(help: "Idempotency key: a repeat returns the original job.")
    var requestId: String?
    @Flag(help: "Send this command's standard input to the job.")
    var stdin = false
    @Option(help: "W3C traceparent to continue (00-<32 hex>-<16 hex>-<2 hex>); default: a new trace.")
    var traceparent: String?
    @Option(
        name: .customLong("file-out"),
        help: "Return files matching this glob, relative to the working directory under /tmp (repeatable)."
    )
    var filesOut: [String] = []
    @OptionGroup var access: GrantOptions
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after -- (flags before -- are hangar's).")
    var command: [String] = []

    /// The trace the submission continues, or a new one.
    func trace() throws -> TraceContext {
        guard let traceparent else { return .start() }
        guard let trace = TraceContext(traceparent: traceparent) else {
            throw ValidationError("--traceparent must be 00-<32 hex>-<16 hex>-<2 hex> (W3C), got '\(traceparent)'")
        }
        return trace
    }

    func request(wait: Bool) throws -> Hangar_V1_SubmitRequest {
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard !argv.isEmpty else {
            throw ValidationError("give the command to run after --, e.g. hangar run -- /bin/echo hi")
        }
        var request = Hangar_V1_SubmitRequest()
        request.argv = argv
        request.runtime = runtime
        request.template = template
        request.requestID = requestId ?? ""
        request.wait = wait
        if let timeout {
            guard timeout > 0, timeout < 86_400 else {
                throw ValidationError("--timeout must be between 0 and 86400 seconds")
            }
            request.limits.timeoutMs = UInt32((timeout * 1000).rounded(.up))
        }
        if let memoryMib {
            guard memoryMib > 0, memoryMib <= 1 << 20 else { throw ValidationError("--memory-mib must be 1...1048576") }
            request.limits.memoryBytes = memoryMib << 20
        }
        if let cpuMillis {
            guard cpuMillis > 0, cpuMillis <= 1_000_000 else {
                throw ValidationError("--cpu-millis must be 1...1000000 (1000 = one core)")
            }
            request.limits.cpuMillis = cpuMillis
        }
        request.env = try parseLabels(env, flag: "--env")
        if let cwd { request.cwd = cwd }
        request.filesOut = filesOut
        let grants = access.grants
        if grants != Hangar_V1_Grants() { request.grants = grants }
        request.network = try access.networkPolicy()
        if stdin { request.stdin = FileHandle.standardInput.readDataToEndOfFile() }
        return request
    }
}

/// What a job or sandbox may touch beyond its own image (`--allow-read`, `--allow-write`,
/// `--allow-net`, the `--deny-*` and `--network`), shared by `run`, `submit` and `sandbox create`.
struct GrantOptions: ParsableArguments {
    @Option(help: "Network: none (default) or loopback; --allow-net implies an allowlist.")
    var network: String?
    @Option(
        name: .customLong("allow-read"),
        help: "Host paths the job or sandbox may read, at the same path in the sandbox (comma-separated, repeatable)."
    )
    var allowRead: [String] = []
    @Option(
        name: .customLong("allow-write"),
        help: "Host paths the job or sandbox may read and write (comma-separated, repeatable)."
    )
    var allowWrite: [String] = []
    @Option(
        name: [.customLong("allow-net"), .customLong("allow")],
        help:
            "Destinations the job or sandbox may reach: IPv4 addresses or CIDRs; host names, *.domain and :port are refused until a runtime enforces them (comma-separated, repeatable; --allow is the older name)."
    )
    var allowNet: [String] = []
    @Option(name: .customLong("deny-read"), help: "Host paths never readable, even under an allow (comma-separated).")
    var denyRead: [String] = []
    @Option(name: .customLong("deny-write"), help: "Host paths never writable, even under --allow-write.")
    var denyWrite: [String] = []
    @Option(name: .customLong("deny-net"), help: "Destinations never reachable, even under --allow-net.")
    var denyNet: [String] = []

    /// The grants the flags ask for (each flag a comma-separated list, repeatable).
    var grants: Hangar_V1_Grants {
        func split(_ values: [String]) -> [String] {
            values.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
                .filter { !$0.isEmpty }
        }
        var grants = Hangar_V1_Grants()
        grants.allowRead = split(allowRead)
        grants.allowWrite = split(allowWrite)
        grants.allowNet = split(allowNet)
        grants.denyRead = split(denyRead)
        grants.denyWrite = split(denyWrite)
        grants.denyNet = split(denyNet)
        return grants
    }

    /// The network policy `--network` asks for; `--allow-net` makes it an allowlist (the scheduler
    /// folds the allowed destinations into it).
    func networkPolicy() throws -> Hangar_V1_NetworkPolicy {
        var policy = Hangar_V1_NetworkPolicy()
        switch (network, allowNet.isEmpty) {
        case (nil, _), ("none", _): policy.mode = .networkNone  // allow_net makes it an allowlist
        case ("loopback", true): policy.mode = .networkLoopback
        case ("allowlist", false): policy.mode = .networkAllowlist
        default:
            throw ValidationError(
                "--network must be none or loopback, or give --allow-net CIDR (with --network allowlist)"
            )
        }
        return policy
    }
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a sandbox, print its output and exit with its exit code.",
        discussion: """
            Example: hangar run -- /usr/bin/python3 -c 'print(6*7)'
            Exit codes: the job's own; 124 timed out; 128+N killed by signal N; 2 no capacity or
            placement failure; 1 any other failure (rejected request, output limit, internal error).
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var spec: JobSpecOptions
    @Flag(help: "Submit, print the job id and return without waiting (the same as `hangar submit`).")
    var detach = false
    @Option(help: "Folder to write the files the job returns (--file-out) into; created if missing.")
    var outDir: String?
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let request = try spec.request(wait: !detach)
        let waitFor = Duration.seconds(Int64((spec.timeout ?? 300).rounded(.up)) + 60)
        let tenant = try connection.tenant(spec.tenant)
        let reply = try await submitJob(
            request,
            tenant: tenant,
            waitFor: waitFor,
            connection: connection,
            trace: try spec.trace()
        )
        if case .result(let result) = reply.outcome, !result.files.isEmpty {
            if let outDir {
                try saveFiles(result.files, into: outDir)
            } else if !output.isJSON {
                printError("the job returned \(result.files.count) file(s); give --out-dir DIR to save them")
            }
        }
        try await printSubmitReply(reply, output: output)
    }
}

/// Writes returned files below `directory`, refusing any path that is absolute or has `..` (the
/// node never sends one; the CLI does not rely on that) and never following a link at the target.
func saveFiles(_ files: [Hangar_V1_FileOut], into directory: String) throws {
    for file in files {
        let parts = file.path.split(separator: "/", omittingEmptySubsequences: false)
        guard !file.path.hasPrefix("/"), !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            throw CLIError("refusing to write returned file '\(file.path)': not a plain relative path")
        }
        let target = URL(fileURLWithPath: directory).appendingPathComponent(file.path)
        try FileManager.default.createDirectory(
            at: target.deletingLastPathComponent(),
            withIntermediateDirectories: true
        )
        let fd = open(target.path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode_t(file.mode & 0o777))
        guard fd >= 0 else { throw CLIError("cannot write \(target.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let complete = Descriptor.writeAll(fd, file.content)
        guard complete else { throw CLIError("cannot write \(target.path): \(String(cString: strerror(errno)))") }
        if file.truncated { printError("\(file.path): cut off at the job's files-out size cap") }
    }
}

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit a command to run in a sandbox; print the job id and return at once.",
        discussion: """
            Example: id=$(hangar submit -- sleep 1); hangar job logs -f $id
            Exit codes: 0 accepted; 2 no node could ever run it (e.g. a runtime no node offers); 1 rejected.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var spec: JobSpecOptions
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let request = try spec.request(wait: false)
        let tenant = try connection.tenant(spec.tenant)
        let reply = try await submitJob(
            request,
            tenant: tenant,
            waitFor: .seconds(30),
            connection: connection,
            trace: try spec.trace()
        )
        try await printSubmitReply(reply, output: output)
    }
}

/// Sends a submission on the tenant's subject and decodes the answer.
func submitJob(
    _ request: Hangar_V1_SubmitRequest,
    tenant: String,
    waitFor: Duration,
    connection: ConnectionOptions,
    trace: TraceContext = .start()
) async throws -> Hangar_V1_SubmitReply {
    guard Subjects.isValidToken(tenant) else {
        throw ValidationError("--tenant must be 1-64 characters of A-Z a-z 0-9 _ -, got '\(tenant)'")
    }
    let answer = try await connection.withConnection(
        name: "hangar-cli-submit",
        logger: cliLogger(),
        as: .tenant(tenant)
    ) { nats in
        do {
            return try await nats.request(
                Subjects.submit(tenant: tenant),
                payload: try request.serializedData(),
                headers: [TraceContext.header: trace.traceparent],
                timeout: waitFor
            )
        } catch let error as NATSError where error.kind == .noResponders {
            throw CLIError(
                "no scheduler is listening on \(Subjects.submit(tenant: tenant)); start one with `hangar dev`"
            )
        }
    }
    do {
        return try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
    } catch {
        throw CLIError("the scheduler sent a reply that is not a hangar.v1.SubmitReply: \(error)")
    }
}

/// Prints what the scheduler answered and exits as documented: the job's own code for a result,
/// 2 for no capacity, 1 for any other rejection.
func printSubmitReply(_ reply: Hangar_V1_SubmitReply, output: OutputOptions) async throws {
    switch reply.outcome {
    case .accepted(let accepted):
        if output.isJSON { try printJSON(accepted) } else { print(accepted.jobID.terminalSafe) }
    case .rejected(let rejected):
        if output.isJSON { try printJSON(rejected) }
        printError(
            "rejected (\(rejected.reason.code)\(rejected.field.isEmpty ? "" : ", \(rejected.field)")): \(rejected.message)"
        )
        throw ExitCode(rejected.reason == .noCapacity ? 2 : 1)
    case .result(let result):
        if output.isJSON {
            try printJSON(result)
        } else {
            writeOut(result.stdout)
            writeErr(result.stderr)
            if result.status != .succeeded && result.status != .failed || result.stdoutTruncated
                || result.stderrTruncated
            {
                let detail = result.message.isEmpty ? "" : ": \(result.message)"
                printError("job \(result.jobID) \(result.status.displayName)\(detail)")
            }
        }
        let code = result.cliExitCode
        if code != 0 { throw ExitCode(code) }
    case nil:
        throw CLIError("the scheduler sent an empty reply")
    }
}

func adminRequest(
    _ nats: NATSConnection,
    _ verb: String,
    _ message: some SwiftProtobuf.Message
) async throws -> NATSMessage {
    do {
        return try await nats.request(Subjects.admin(verb), payload: try message.serializedData(), timeout: .seconds(5))
    } catch let error as NATSError where error.kind == .noResponders {
        throw CLIError("no scheduler is listening on \(Subjects.admin(verb)); start one with `hangar dev`")
    } catch let error as NATSError where error.kind == .timeout {
        throw CLIError("the scheduler did not answer \(Subjects.admin(verb)) within 5 s")
    }
}

/// Connects, sends one admin request and decodes the reply as `Reply`.
func adminQuery<Reply: SwiftProtobuf.Message>(
    _ verb: String,
    _ request: some SwiftProtobuf.Message,
    as: Reply.Type,
    connection: ConnectionOptions
) async throws -> Reply {
    let answer = try await connection.withConnection(name: "hangar-cli-\(verb)", logger: cliLogger()) { nats in
        try await adminRequest(nats, verb, request)
    }
    do {
        return try Reply(serializedBytes: answer.payload)
    } catch {
        throw CLIError("the scheduler's answer to \(verb) is not a \(Reply.protoMessageName): \(error)")
    }
}

/// Sends a job lookup on the tenant's own subject (`hangar.job.<tenant>`).
func tenantJobRequest(
    _ nats: NATSConnection,
    tenant: String,
    _ message: some SwiftProtobuf.Message
) async throws -> NATSMessage {
    do {
        return try await nats.request(
            Subjects.job(tenant: tenant),
            payload: try message.serializedData(),
            timeout: .seconds(5)
        )
    } catch let error as NATSError where error.kind == .noResponders {
        throw CLIError("no scheduler is listening on \(Subjects.job(tenant: tenant)); start one with `hangar dev`")
    } catch let error as NATSError where error.kind == .permissionDenied {
        throw CLIError("NATS refused a job lookup as tenant '\(tenant)' (use that tenant's credentials): \(error)")
    }
}

func cliLogger() -> Logger {
    var logger = Logger(label: "hangar.cli")
    logger.logLevel = .error
    return logger
}

/// A message for the user on stderr, prefixed `hangar:`, on one line: control characters in it
/// (from a tenant's file name, a scheduler's message) are shown escaped (`String.terminalSafe`).
func printError(_ text: String) {
    writeErr(Data("hangar: \(text.terminalSafe)\n".utf8))
}

/// Writes raw bytes to stdout in order with what `print` buffered before.
func writeOut(_ data: Data) {
    fflush(nil)
    FileHandle.standardOutput.write(data)
}

func writeErr(_ data: Data) {
    fflush(nil)
    FileHandle.standardError.write(data)
}
