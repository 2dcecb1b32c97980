import ArgumentParser
import Foundation
import HangarNATS
import HangarScheduler
import HangarShared

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read or verify the tamper-evident audit trail.",
        subcommands: [AuditVerifyCommand.self, AuditListCommand.self]
    )
}

struct AuditVerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the audit hash chain; report the first row that was edited, deleted or moved (exit 1)."
    )

    @OptionGroup var connection: ConnectionOptions
    @Option(
        help:
            "Verify this SQLite store file directly instead of asking the leading scheduler (e.g. a standby's own store, a replica of the store log)."
    )
    var db: String?
    @OptionGroup var output: OutputOptions

    func run() async throws {
        let reply: Hangar_V1_AuditReply
        if let db {
            guard FileManager.default.fileExists(atPath: db) else { throw CLIError("there is no store at \(db)") }
            let store = try openStore(db)
            var verification = try await store.auditVerification()
            let position = try await store.logPosition()
            if position.sequence > 0 {
                verification.message += "; store log entry \(position.sequence) (term \(position.term))"
            }
            reply = verification
        } else {
            var request = Hangar_V1_AuditRequest()
            request.verify = true
            reply = try await auditRequest(request, connection: connection)
        }
        if output.isJSON { try printJSON(reply) }
        if reply.verified {
            if !output.isJSON { print(reply.message.terminalSafe) }
        } else {
            printError(reply.message)
            throw ExitCode(1)
        }
    }
}

struct AuditListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List audit events, oldest first.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only events of this tenant (its own actions and its jobs).")
    var tenant: String?
    @Option(help: "Only events of this job.")
    var job: String?
    @Option(help: "Only events of the last N seconds.")
    var since: Double?
    @Option(help: "At most this many events (the newest).")
    var limit: UInt32 = 100
    @OptionGroup var output: OutputOptions

    func run() async throws {
        var request = Hangar_V1_AuditRequest()
        request.tenant = tenant ?? ""
        request.jobID = job ?? ""
        if let since { request.sinceMs = unixMilliseconds() - Int64(since * 1000) }
        request.limit = limit
        let reply = try await auditRequest(request, connection: connection)
        if !reply.message.isEmpty {
            printError(reply.message)
            throw ExitCode(1)
        }
        if output.isJSON {
            try printJSON(reply)
            return
        }
        var rows = [["SEQ", "TIME", "ACTOR", "EVENT", "JOB", "DETAIL"]]
        let formatter = ISO8601DateFormatter()
        for event in reply.events {
            rows.append([
                String(event.seq),
                formatter.string(from: Date(timeIntervalSince1970: Double(event.atMs) / 1000)),
                event.actor.terminalSafe, event.event.terminalSafe, event.jobID.terminalSafe,
                event.detail.terminalSafe,
            ])
        }
        print(formatTable(rows, style: .stdout))
    }
}

func auditRequest(_ request: Hangar_V1_AuditRequest, connection: ConnectionOptions) async throws -> Hangar_V1_AuditReply
{
    try await adminQuery("audit", request, as: Hangar_V1_AuditReply.self, connection: connection)
}
