import Foundation
import HangarTestSupport
import Testing

/// Conventions that need no cluster or a small one: README agrees with `--help`, completions,
/// colors only on a terminal and never with NO_COLOR.
@Suite("hangar CLI conventions", .serialized)
struct CLIConventionsTests {
    /// The names under SUBCOMMANDS in a help text.
    private func subcommands(_ help: String) -> [String] {
        guard let start = help.range(of: "SUBCOMMANDS:\n") else { return [] }
        return help[start.upperBound...].split(separator: "\n").compactMap { line in
            guard line.hasPrefix("  "), !line.hasPrefix("   "), !line.contains("See '") else { return nil }
            return line.split(separator: " ").first.map(String.init)
        }
    }

    @Test("every command in hangar --help (and each group's subcommands) is in README's command table")
    func readmeMatchesHelp() async throws {
        let readme = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
                "../../README.md"
            ),
            encoding: .utf8
        )
        let root = try await runHangar(["--help"])
        #expect(root.status == 0)
        let commands = subcommands(root.stdout)
        #expect(commands.contains("top") && commands.contains("node"), "\(root.stdout)")
        for command in commands {
            let help = try await runHangar([command, "--help"])
            let children = subcommands(help.stdout)
            if children.isEmpty {
                #expect(readme.contains("| `hangar \(command)"), "README has no row for `hangar \(command)`")
            }
            for child in children {
                #expect(
                    readme.contains("`hangar \(command) \(child)"),
                    "README has no row for `hangar \(command) \(child)`"
                )
            }
        }
    }

    @Test("--help and -h of every command and subcommand print usage and exit 0, contacting no cluster")
    func helpEverywhere() async throws {
        // Nothing listens here: a command that tried to reach a cluster instead of printing help fails.
        let nowhere = ["HANGAR_URL": "nats://127.0.0.1:9"]
        var paths: [[String]] = [[]]
        var index = 0
        while index < paths.count {
            let path = paths[index]
            index += 1
            for flag in ["--help", "-h"] {
                let help = try await runHangar(path + [flag], environment: nowhere, timeout: .seconds(30))
                let name = (["hangar"] + path).joined(separator: " ")
                #expect(help.status == 0, "\(name) \(flag): \(help.stderr)")
                #expect(help.stdout.contains("USAGE: \(name)"), "\(name) \(flag): \(help.stdout)\(help.stderr)")
                if flag == "--help" { paths += subcommands(help.stdout).map { path + [$0] } }
            }
        }
        #expect(paths.contains(["run"]) && paths.contains(["node", "agent"]) && paths.count > 20, "\(paths)")
    }

    @Test("shell completion scripts are generated")
    func completions() async throws {
        for shell in ["bash", "zsh", "fish"] {
            let script = try await runHangar(["--generate-completion-script", shell])
            #expect(script.status == 0, "\(script.stderr)")
            #expect(script.stdout.contains("hangar"))
            #expect(script.stdout.contains("tenant"))
        }
    }

    @Test("colors only on a terminal, never with NO_COLOR")
    func colors() async throws {
        try await withCLICluster(nodes: 1) { cluster in
            let binary = try hangarBinary().path
            let command = "\(binary) node status --state \(cluster.state.path)"
            let plain = try await cluster.hangar(["node", "status"])
            #expect(plain.status == 0)
            #expect(!plain.stdout.contains("\u{1B}["), "no escapes when stdout is a file")
            // `script` gives the command a pseudo-terminal.
            let onTerminal = try await runScript(command, environment: ["TERM": "xterm"])
            #expect(onTerminal.contains("\u{1B}[32mready"), "\(onTerminal)")
            let noColor = try await runScript(command, environment: ["TERM": "xterm", "NO_COLOR": "1"])
            #expect(noColor.contains("ready"))
            #expect(!noColor.contains("\u{1B}["), "\(noColor)")
        }
    }

    /// Runs `command` under `script` (a pseudo-terminal) and returns what it printed.
    private func runScript(_ command: String, environment: [String: String]) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        process.arguments = ["-qec", command, "/dev/null"]
        // Its own empty folder as working folder and HOME, like every hangar the tests start.
        let folder = try makeTemporaryDirectory("hangar-cli-script")
        defer { try? FileManager.default.removeItem(at: folder) }
        var inherited = isolatedEnvironment(home: folder)
        inherited.removeValue(forKey: "NO_COLOR")
        process.environment = inherited.merging(environment) { $1 }
        process.currentDirectoryURL = folder
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = ContinuousClock.now + .seconds(30)
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                process.terminate()
                throw CLITestError("`script -c \(command)` did not end within 30 s")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }
}
