import ArgumentParser

@main
struct Hangar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hangar",
        abstract: "Hangar: a distributed sandbox scheduler for untrusted code.",
        discussion: """
            Start a local cluster with `hangar dev`, then submit with `hangar run -- CMD ARGS...`.
            Exit codes: 0 success; 1 error; 2 placement failure or no capacity; `run` exits with the
            job's own exit code (124 when it timed out, 128+N when killed by signal N).
            """,
        version: "0.1.0",
        subcommands: [
            DevCommand.self, SchedulerCommand.self, NodeCommand.self, RunCommand.self, CancelCommand.self,
            NodesCommand.self, JobCommand.self, DrainCommand.self, EligibilityCommand.self, AuditCommand.self,
            TenantCommand.self,
            TemplateCommand.self,
        ]
    )
}
