import ArgumentParser
import Foundation
import HangarNATS
import HangarShared
import Logging
@preconcurrency import SwiftProtobuf

typealias SwiftProtobufMessage = SwiftProtobuf.Message

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
    @Option(help: "Tenant to submit as. Env: HANGAR_TENANT. Default: default.")
    var tenant: String?
    @Option(help: "Runtime: process (bubblewrap), container (runc), gvisor (runsc), null.")
    var runtime: String = "process"
    @Option(help: "Template (root filesystem) to run in; see `hangar template list` on a node.")
    var template: String = "host"
    @Option(help: "Wall-clock limit in seconds (default: the scheduler's, 10 s).")
    var timeout: Double?
    @Option(name: .customLong("env"), help: "Environment variable KEY=VALUE for the job (repeatable).")
    var env: [String] = []
    @Option(help: "Working directory inside the sandbox.")
    var cwd: String?
    @Option(help: "Idempotency key: a repeat returns the original job.")
    var requestId: String?
    @Flag(help: "Send this command's standard input to the job.")
    var stdin = false
    @Flag(help: "Submit, print the job id and return without waiting.")
    var detach = false
    @Flag(help: "Print the result as JSON (protobuf JSON; stdout/stderr are base64).")
    var json = false
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (after --).")
    var command: [String] = []

    func run() async throws {
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard !argv.isEmpty else {
            throw ValidationError("give the command to run after --, e.g. hangar run -- /bin/echo hi")
        }
        var request = Hangar_V1_SubmitRequest()
        request.argv = argv
        request.runtime = runtime
        request.template = template
        request.requestID = requestId ?? ""
        request.wait = !detach
        if let timeout {
            guard timeout > 0, timeout < 86_400 else {
                throw ValidationError("--timeout must be between 0 and 86400 seconds")
            }
            request.limits.timeoutMs = UInt32((timeout * 1000).rounded(.up))
        }
        request.env = try parseLabels(env)
        if let cwd { request.cwd = cwd }
        if stdin { request.stdin = FileHandle.standardInput.readDataToEndOfFile() }
        let tenantName = tenant ?? ProcessInfo.processInfo.environment["HANGAR_TENANT"] ?? "default"
        let nats = try await connection.connect(name: "hangar-cli-run", logger: cliLogger(), as: .tenant(tenantName))
        defer { Task { [nats] in await nats.close() } }
        let waitFor = Duration.seconds(Int64((timeout ?? 300).rounded(.up)) + 60)
        let answer: NATSMessage
        do {
            answer = try await nats.request(
                Subjects.submit(tenant: tenantName),
                payload: try request.serializedData(),
                timeout: waitFor
            )
        } catch let error as NATSError where error.kind == .noResponders {
            throw CLIError(
                "no scheduler is listening on \(Subjects.submit(tenant: tenantName)); start one with `hangar dev`"
            )
        }
        let reply = try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
        switch reply.outcome {
        case .accepted(let accepted):
            if json { print(try accepted.jsonString()) } else { print(accepted.jobID) }
        case .rejected(let rejected):
            if json { print(try rejected.jsonString()) }
            printError(
                "rejected (\(rejected.reason.code)\(rejected.field.isEmpty ? "" : ", \(rejected.field)")): \(rejected.message)"
            )
            throw ExitCode(rejected.reason == .noCapacity ? 2 : 1)
        case .result(let result):
            if json {
                print(try result.jsonString())
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
}

struct NodesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodes",
        abstract: "Show the nodes and their capacity."
    )

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let nats = try await connection.connect(name: "hangar-cli-nodes", logger: cliLogger())
        defer { Task { [nats] in await nats.close() } }
        let answer = try await adminRequest(nats, "nodes", Hangar_V1_NodesRequest())
        let reply = try Hangar_V1_NodesReply(serializedBytes: answer.payload)
        if json {
            print(try reply.jsonString())
            return
        }
        var rows = [
            [
                "NODE", "STATE", "SLOTS USED/RESERVED/TOTAL", "CPU RESERVED/ALLOCATABLE", "MEMORY RESERVED/TOTAL",
                "RUNTIMES",
                "POOLS READY/WARMING/MAX",
                "SEEN",
            ]
        ]
        for node in reply.nodes {
            let heartbeat = node.lastHeartbeat
            let capacity = heartbeat.capacity
            var state: String
            switch node.state {
            case .up: state = "ready"
            case .draining: state = "draining"
            case .down: state = "down"
            default: state = "unknown"
            }
            if !node.eligible { state += ",ineligible" }
            if node.drainDeadlineMs > 0 {
                state += "(deadline \(max(0, node.drainDeadlineMs - unixMilliseconds()) / 1000)s)"
            }
            rows.append([
                heartbeat.nodeID,
                state,
                "\(capacity.slotsUsed)/\(node.slotsReserved)/\(capacity.slotsTotal)",
                String(
                    format: "%.1f/%.1f cores",
                    Double(node.cpuMillisReserved) / 1000,
                    Double(node.cpuMillisAllocatable) / 1000
                ),
                String(
                    format: "%.1f/%.1f GiB",
                    Double(node.memoryBytesReserved) / 1_073_741_824,
                    Double(capacity.memoryBytes) / 1_073_741_824
                ),
                heartbeat.runtimes.map { $0.available ? $0.name : "\($0.name)(unavailable)" }.joined(separator: ","),
                poolSummary(heartbeat),
                String(format: "%.1fs ago", Double(node.lastSeenMsAgo) / 1000),
            ])
        }
        print(formatTable(rows))
        if reply.nodes.isEmpty { printError("no node has reported yet") }
    }
}

struct JobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "job", abstract: "Show a job's stored result.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Tenant the job belongs to. Env: HANGAR_TENANT. Default: default.")
    var tenant: String?
    @Flag(help: "Print JSON.")
    var json = false
    @Argument(help: "The job id (as printed by `hangar run --detach` or in a result).")
    var id: String

    func run() async throws {
        let tenantName = tenant ?? ProcessInfo.processInfo.environment["HANGAR_TENANT"] ?? "default"
        let nats = try await connection.connect(name: "hangar-cli-job", logger: cliLogger(), as: .tenant(tenantName))
        defer { Task { [nats] in await nats.close() } }
        var request = Hangar_V1_JobRequest()
        request.jobID = id
        let answer = try await tenantJobRequest(nats, tenant: tenantName, request)
        let reply = try Hangar_V1_JobReply(serializedBytes: answer.payload)
        if json {
            print(try reply.jsonString())
            if case .error = reply.outcome { throw ExitCode(1) }
            return
        }
        switch reply.outcome {
        case .result(let result):
            print("job       \(result.jobID)")
            print("tenant    \(result.tenant)")
            print("status    \(result.status.displayName)")
            print("exit code \(result.exitCode)\(result.signal != 0 ? " (signal \(result.signal))" : "")")
            print("node      \(result.nodeID) (attempt \(result.attempt))")
            print(
                "timings   queued \(result.timings.queuedMs) ms, placement \(result.timings.placementMs) ms, start \(result.timings.startMs) ms, run \(result.timings.runMs) ms, total \(result.timings.totalMs) ms"
            )
            if !result.message.isEmpty { print("message   \(result.message)") }
            print("--- stdout\(result.stdoutTruncated ? " (truncated)" : "")")
            writeOut(result.stdout)
            print("--- stderr\(result.stderrTruncated ? " (truncated)" : "")")
            writeOut(result.stderr)
        case .status(let status):
            print("job \(id) (tenant \(reply.tenant)) is \(status.displayName)")
        case .error(let message):
            printError(message)
            throw ExitCode(1)
        case nil:
            throw CLIError("the scheduler sent an empty reply")
        }
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

func printError(_ text: String) {
    writeErr(Data("hangar: \(text)\n".utf8))
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

func formatTable(_ rows: [[String]]) -> String {
    guard let width = rows.first?.count else { return "" }
    let widths = (0..<width).map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
            .trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n")
}
