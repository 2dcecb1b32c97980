import ArgumentParser
import Foundation
import HangarNATS
import HangarShared
import Synchronization

struct JobStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a job (its state, or its stored result), or list the newest jobs."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Option(
        help:
            "With an id: look the job up as this tenant (its own credentials, hangar.job.<tenant>). Without: list only its jobs."
    )
    var tenant: String?
    @Option(help: "List at most this many jobs (1-1000).")
    var limit: UInt32 = 50
    @Argument(help: "The job id (as printed by `hangar submit`); omit to list the newest jobs.")
    var id: String?

    func validate() throws {
        guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1...1000") }
    }

    func run() async throws {
        guard let id else { return try await list() }
        let reply = try await jobQuery(id, tenant: tenant, connection: connection)
        if output.isJSON {
            try printJSON(reply)
            if case .error(let message) = reply.outcome {
                printError(message)
                throw ExitCode(1)
            }
            return
        }
        switch reply.outcome {
        case .result(let result):
            let style = Style.stdout
            print("job       \(result.jobID.terminalSafe)")
            print("tenant    \(result.tenant.terminalSafe)")
            print("status    \(style.state(result.status.displayName))")
            print("exit code \(result.exitCode)\(result.signal != 0 ? " (signal \(result.signal))" : "")")
            print("node      \(result.nodeID.isEmpty ? "-" : result.nodeID.terminalSafe) (attempt \(result.attempt))")
            print(
                "timings   queued \(result.timings.queuedMs) ms, placement \(result.timings.placementMs) ms, start \(result.timings.startMs) ms, run \(result.timings.runMs) ms, total \(result.timings.totalMs) ms"
            )
            if !result.message.isEmpty { print("message   \(result.message.terminalSafe)") }
            print(
                "output    \(result.stdout.count) bytes stdout, \(result.stderr.count) bytes stderr (`hangar job logs \(result.jobID.terminalSafe)`)"
            )
        case .status(let status):
            print("job       \(id.terminalSafe)")
            print("tenant    \(reply.tenant.terminalSafe)")
            print("status    \(Style.stdout.state(status.displayName))")
            if !reply.nodeID.isEmpty { print("node      \(reply.nodeID.terminalSafe) (attempt \(reply.attempt))") }
        case .error(let message):
            printError(message)
            throw ExitCode(1)
        case nil:
            throw CLIError("the scheduler sent an empty reply")
        }
    }

    private func list() async throws {
        var request = Hangar_V1_JobsRequest()
        request.tenant = tenant ?? ""
        request.limit = limit
        let reply = try await adminQuery("jobs", request, as: Hangar_V1_JobsReply.self, connection: connection)
        if !reply.error.isEmpty {
            printError(reply.error)
            throw ExitCode(1)
        }
        if output.isJSON {
            try printJSON(reply)
            return
        }
        let style = Style.stdout
        var header = ["JOB", "TENANT", "STATUS", "EXIT", "NODE", "SUBMITTED"]
        if output.isWide { header += ["RUNTIME", "ATTEMPT", "DURATION"] }
        var rows = [header]
        let formatter = ISO8601DateFormatter()
        for job in reply.jobs {
            let finished = job.finishedAtMs > 0
            var row = [
                job.jobID.terminalSafe, job.tenant.terminalSafe, style.state(job.status),
                finished ? String(job.exitCode) : "-", job.nodeID.isEmpty ? "-" : job.nodeID.terminalSafe,
                formatter.string(from: Date(timeIntervalSince1970: Double(job.submittedAtMs) / 1000)),
            ]
            if output.isWide {
                row += [
                    job.runtime.terminalSafe, String(job.attempt),
                    finished ? "\(max(0, job.finishedAtMs - job.submittedAtMs)) ms" : "-",
                ]
            }
            rows.append(row)
        }
        print(formatTable(rows, style: style))
        if reply.jobs.isEmpty { printError("no jobs yet") }
    }
}

struct JobLogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "Print a job's output: its stdout to stdout, its stderr to stderr.",
        discussion: """
            Output is stored when the job ends. With -f, follows a queued or running job: its output
            is printed as the node reads it (process, container and gvisor jobs started cold; others
            print when they end), and what was missed is printed from the stored result at the end.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Flag(name: .shortAndLong, help: "Follow the output while the job runs, until it ends.")
    var follow = false
    @Option(help: "Look the job up as this tenant (its own credentials, hangar.job.<tenant>); default: as operator.")
    var tenant: String?
    @Argument(help: "The job id.")
    var id: String

    func run() async throws {
        let principal: Principal = tenant.map { .tenant($0) } ?? .operator(AuthDefaults.operatorName)
        try await connection.withConnection(name: "hangar-cli-logs", logger: cliLogger(), as: principal) { nats in
            try await show(nats)
        }
    }

    /// Prints the job's output (following it with `-f`) from what the scheduler answers on `nats`.
    private func show(_ nats: NATSConnection) async throws {
        var request = Hangar_V1_JobRequest()
        request.jobID = id
        func query() async throws -> Hangar_V1_JobReply {
            let answer =
                if let tenant {
                    try await tenantJobRequest(nats, tenant: tenant, request)
                } else {
                    try await adminRequest(nats, "job", request)
                }
            do {
                return try Hangar_V1_JobReply(serializedBytes: answer.payload)
            } catch {
                throw CLIError("the scheduler's answer to job is not a hangar.v1.JobReply: \(error)")
            }
        }
        var reply = try await query()
        var announced = false
        var follower: LogFollower?
        var streaming: Task<Void, Never>?
        var subscription: NATSSubscription?
        if follow, case .status = reply.outcome, !output.isJSON {
            let owner = reply.tenant.isEmpty ? (tenant ?? "*") : reply.tenant
            let live = try nats.subscribe(Subjects.logs(tenant: owner, job: id))
            let printer = LogFollower()
            streaming = Task { for await message in live { printer.take(message) } }
            (follower, subscription) = (printer, live)
        }
        defer { subscription?.unsubscribe() }
        while follow, case .status(let status) = reply.outcome {
            if !announced && !output.isJSON {
                printError(
                    "job \(id) is \(status.displayName)\(reply.nodeID.isEmpty ? "" : " on \(reply.nodeID)"); waiting for it to end"
                )
                announced = true
            }
            try await Task.sleep(for: .milliseconds(500))
            reply = try await query()
        }
        subscription?.unsubscribe()
        await streaming?.value
        switch reply.outcome {
        case .result(let result):
            if output.isJSON {
                try printJSON(result)
            } else if let follower {
                follower.finish(with: result)
            } else {
                writeOut(result.stdout)
                writeErr(result.stderr)
                if result.stdoutTruncated || result.stderrTruncated {
                    printError("job \(id): output was truncated at the job's output limit")
                }
            }
        case .status(let status):
            printError("job \(id) is \(status.displayName): its output is stored when it ends; -f waits for that")
            throw ExitCode(1)
        case .error(let message):
            printError(message)
            throw ExitCode(1)
        case nil:
            throw CLIError("the scheduler sent an empty reply")
        }
    }
}

/// Asks the scheduler for one job: as `tenant` on its own subject, or as the operator.
func jobQuery(_ id: String, tenant: String?, connection: ConnectionOptions) async throws -> Hangar_V1_JobReply {
    var request = Hangar_V1_JobRequest()
    request.jobID = id
    guard let tenant else {
        return try await adminQuery("job", request, as: Hangar_V1_JobReply.self, connection: connection)
    }
    guard Subjects.isValidToken(tenant) else {
        throw ValidationError("--tenant must be 1-64 characters of A-Z a-z 0-9 _ -, got '\(tenant)'")
    }
    let answer = try await connection.withConnection(
        name: "hangar-cli-job",
        logger: cliLogger(),
        as: .tenant(tenant)
    ) { nats in
        try await tenantJobRequest(nats, tenant: tenant, request)
    }
    do {
        return try Hangar_V1_JobReply(serializedBytes: answer.payload)
    } catch {
        throw CLIError("the scheduler's answer to a job lookup is not a hangar.v1.JobReply: \(error)")
    }
}

/// Prints a running job's output chunks (`hangar.logs.<tenant>.<job>`) in order: a chunk is printed
/// only if it starts where the printed part of its stream ends; after a gap (chunks missed before
/// the subscription, or dropped) that stream waits for the stored result, which fills in the rest.
final class LogFollower: Sendable {
    private struct State {
        var printed: [String: Int] = ["stdout": 0, "stderr": 0]
        var gap: Set<String> = []
        var attempt: String?
    }
    private let state = Mutex(State())

    func take(_ message: NATSMessage) {
        guard let stream = message.header("Hangar-Stream"), ["stdout", "stderr"].contains(stream),
            let offset = message.header("Hangar-Offset").flatMap(Int.init)
        else { return }
        let attempt = message.header("Hangar-Attempt") ?? ""
        let print: Bool = state.withLock { state in
            if state.attempt == nil { state.attempt = attempt }
            guard state.attempt == attempt, !state.gap.contains(stream) else { return false }
            guard offset == state.printed[stream] else {
                state.gap.insert(stream)
                return false
            }
            state.printed[stream, default: 0] += message.payload.count
            return true
        }
        guard print else { return }
        if stream == "stdout" { writeOut(message.payload) } else { writeErr(message.payload) }
    }

    /// Prints what the chunks did not: the rest of each stream of the stored result (all of it if
    /// the job ran again on another attempt).
    func finish(with result: Hangar_V1_Result) {
        let (printed, attempt) = state.withLock { ($0.printed, $0.attempt) }
        if let attempt, attempt != String(result.attempt), printed.values.contains(where: { $0 > 0 }) {
            printError("the job ran again (attempt \(result.attempt)); its output from the start:")
            writeOut(result.stdout)
            writeErr(result.stderr)
            return
        }
        writeOut(result.stdout.dropFirst(min(printed["stdout"] ?? 0, result.stdout.count)))
        writeErr(result.stderr.dropFirst(min(printed["stderr"] ?? 0, result.stderr.count)))
    }
}
