import ArgumentParser
import Foundation
import HangarClient

/// The version `hangar version` and `hangar --version` print.
let hangarVersion = "0.1.0"

@main
struct Hangar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hangar",
        abstract: "Hangar: a distributed sandbox scheduler for untrusted code.",
        discussion: """
            Start a local cluster with `hangar dev`, then `hangar run -- CMD ARGS...`; watch it with \
            `hangar top`. Every command that prints data takes -o json (or --json); data goes to stdout, \
            messages to stderr.

            Exit codes: 0 success; 1 error; 2 placement failure or no capacity; `run` exits with the \
            job's own exit code (124 when it timed out, 128+N when killed by signal N).

            Shell completions: hangar --generate-completion-script bash|zsh|fish
            """,
        version: hangarVersion,
        subcommands: [
            DevCommand.self, SchedulerCommand.self, NodeGroup.self, JobGroup.self, RunCommand.self,
            SubmitCommand.self, TenantGroup.self, AuditCommand.self, TopCommand.self, VersionCommand.self,
            TemplateCommand.self, SandboxGroup.self, GatewayCommand.self, ClusterGroup.self,
        ]
    )

    /// Runs the command; usage errors exit 1 (argument-parser's default is 64) as the README says.
    static func main() async {
        do {
            var command = try await asyncParseAsRoot(nil)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            printError(error.description)
            Foundation.exit(1)
        } catch let error as HangarClientError {
            printError(error.message)
            Foundation.exit(1)
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure {
                printError(message(for: error))
                printError("see 'hangar help <command>' for its options")
                Foundation.exit(1)
            }
            // Help, --version and exit codes are argument-parser's to print; any other error's text
            // (a NATS error can quote the server) goes out escaped, like every message.
            if code == .success || error is ExitCode || error is CleanExit { exit(withError: error) }
            printError(message(for: error))
            Foundation.exit(code.rawValue)
        }
    }
}

struct NodeGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Nodes: status, drain, eligibility; `node agent` runs a node agent.",
        subcommands: [NodeStatusCommand.self, DrainCommand.self, EligibilityCommand.self, NodeCommand.self]
    )
}

struct JobGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Jobs: status, logs, cancel.",
        subcommands: [JobStatusCommand.self, JobLogsCommand.self, CancelCommand.self]
    )
}

struct TenantGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant",
        abstract: "Tenants: list, show, add (NATS credentials, E2B API keys), api-key.",
        subcommands: [TenantListCommand.self, TenantShowCommand.self, TenantAddCommand.self, TenantAPIKeyGroup.self]
    )
}
