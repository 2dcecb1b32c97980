import ArgumentParser
import Foundation
import HangarNATS
import HangarShared

struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract:
            "Stop placing new jobs on a node; running jobs finish (or are stopped and retried elsewhere at the deadline)."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Option(
        help: "Seconds to let running jobs finish; then they are stopped and retried elsewhere. Default: no deadline."
    )
    var deadline: Double?
    @Flag(help: "Undo: the node takes new work again.")
    var undo = false
    @Argument(help: "The node id (or a unique prefix).")
    var node: String

    func validate() throws {
        if let deadline, !(deadline > 0 && deadline < 86_400 * 7) {
            throw ValidationError("--deadline must be between 0 and 604800 seconds")
        }
    }

    func run() async throws {
        var request = Hangar_V1_DrainRequest()
        request.nodeID = try await resolveNodeID(node, connection: connection)
        request.drain = !undo
        if let deadline { request.deadlineMs = UInt32((deadline * 1000).rounded(.up)) }
        request.actor = operatorName()
        try await sendAdmin("drain", request, connection: connection, output: output)
    }
}

struct EligibilityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eligibility",
        abstract: "Switch a node on or off for new jobs (running jobs are not touched)."
    )

    enum Setting: String, ExpressibleByArgument, CaseIterable { case on, off }

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Argument(help: "The node id (or a unique prefix).")
    var node: String
    @Argument(help: "on or off.")
    var setting: Setting

    func run() async throws {
        var request = Hangar_V1_EligibilityRequest()
        request.nodeID = try await resolveNodeID(node, connection: connection)
        request.eligible = setting == .on
        request.actor = operatorName()
        try await sendAdmin("eligibility", request, connection: connection, output: output)
    }
}

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel one of your queued or running jobs; its sandbox is killed and it ends CANCELLED."
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions
    @Option(help: "Tenant the job belongs to. Env: HANGAR_TENANT. Default: the context's, else default.")
    var tenant: String?
    @Argument(help: "The job id.")
    var id: String

    func run() async throws {
        let tenantName = try connection.tenant(tenant)
        guard Subjects.isValidToken(tenantName) else {
            throw ValidationError("--tenant must be 1-64 characters of A-Z a-z 0-9 _ -, got '\(tenantName)'")
        }
        var request = Hangar_V1_CancelRequest()
        request.jobID = id
        let answer = try await connection.withConnection(
            name: "hangar-cli-cancel",
            logger: cliLogger(),
            as: .tenant(tenantName)
        ) { nats in
            do {
                return try await nats.request(
                    Subjects.cancel(tenant: tenantName),
                    payload: try request.serializedData(),
                    timeout: .seconds(5)
                )
            } catch let error as NATSError where error.kind == .noResponders {
                throw CLIError(
                    "no scheduler is listening on \(Subjects.cancel(tenant: tenantName)); start one with `hangar dev`"
                )
            }
        }
        let reply = try Hangar_V1_CancelReply(serializedBytes: answer.payload)
        if output.isJSON {
            try printJSON(reply)
        } else if reply.cancelled {
            print(reply.message.terminalSafe)
        }
        if !reply.cancelled {
            printError(reply.message)
            throw ExitCode(1)
        }
    }
}

/// The full id of the node `prefix` names (exact id or unique prefix).
func resolveNodeID(_ prefix: String, connection: ConnectionOptions) async throws -> String {
    let reply = try await adminQuery(
        "nodes",
        Hangar_V1_NodesRequest(),
        as: Hangar_V1_NodesReply.self,
        connection: connection
    )
    return try resolveNode(prefix, in: reply.nodes).lastHeartbeat.nodeID
}

/// Sends an operator request and prints the answer; exits 1 if the scheduler refused it.
func sendAdmin(
    _ verb: String,
    _ request: some SwiftProtobufMessage,
    connection: ConnectionOptions,
    output: OutputOptions
) async throws {
    let reply = try await adminQuery(verb, request, as: Hangar_V1_AdminReply.self, connection: connection)
    if output.isJSON {
        try printJSON(reply)
    } else if reply.ok {
        print(reply.message.terminalSafe)
    }
    if !reply.ok {
        printError(reply.message)
        throw ExitCode(1)
    }
}

/// Who runs this command, for the audit trail: `user@host`.
func operatorName() -> String {
    let environment = ProcessInfo.processInfo.environment
    let user = environment["USER"] ?? environment["LOGNAME"] ?? "uid\(getuid())"
    return "\(user)@\(ProcessInfo.processInfo.hostName)"
}
