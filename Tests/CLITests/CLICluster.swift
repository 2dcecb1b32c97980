import Foundation
import HangarTestSupport
import Testing

/// What one run of the `hangar` binary did.
struct CLIOutput {
    var status: Int32
    var stdout: String
    var stderr: String

    /// stdout parsed as a JSON object.
    func json() throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any] else {
            throw CLITestError("stdout is not a JSON object: \(stdout)")
        }
        return object
    }
}

struct CLITestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The environment every spawned `hangar` gets: this process's, with HOME and XDG_CONFIG_HOME set
/// to `home` (no developer's context file) and no HANGAR_* variable (no URL, credentials, tenant,
/// context or daemon setting leaks in), then `extra`.
func isolatedEnvironment(home: URL, extra: [String: String] = [:]) -> [String: String] {
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("HANGAR_") }
    environment["HOME"] = home.path
    environment["XDG_CONFIG_HOME"] = home.path
    return environment.merging(extra) { $1 }
}

/// A `hangar ARGS` process that does not depend on the folder the tests run from: it starts in
/// `directory` (its own empty folder: a `.hangar/` left by `hangar dev` in the package folder is
/// not seen), with `isolatedEnvironment(home: directory)`; `binary` replaces this build's `hangar`.
func hangarProcess(
    _ arguments: [String],
    directory: URL,
    environment: [String: String] = [:],
    binary: URL? = nil
) throws -> Process {
    let process = Process()
    process.executableURL = try binary ?? hangarBinary()
    process.arguments = arguments
    process.environment = isolatedEnvironment(home: directory, extra: environment)
    process.currentDirectoryURL = directory
    process.standardInput = FileHandle.nullDevice
    return process
}

/// Runs `hangar ARGS` in its own empty working folder (or `directory`) and waits at most `timeout`
/// for it (then kills it and throws).
func runHangar(
    _ arguments: [String],
    environment: [String: String] = [:],
    directory: URL? = nil,
    timeout: Duration = .seconds(60)
) async throws -> CLIOutput {
    let folder = try makeTemporaryDirectory("hangar-cli-run")
    defer { try? FileManager.default.removeItem(at: folder) }
    let outURL = folder.appendingPathComponent("stdout")
    let errURL = folder.appendingPathComponent("stderr")
    let home = folder.appendingPathComponent("home")
    try FileManager.default.createDirectory(at: home, withIntermediateDirectories: false)
    FileManager.default.createFile(atPath: outURL.path, contents: nil)
    FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let process = try hangarProcess(arguments, directory: directory ?? home, environment: environment)
    process.environment = isolatedEnvironment(home: home, extra: environment)
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    try process.run()
    let deadline = ContinuousClock.now + timeout
    while process.isRunning {
        if ContinuousClock.now > deadline {
            process.terminate()
            process.waitUntilExit()
            throw CLITestError("hangar \(arguments.joined(separator: " ")) did not end within \(timeout)")
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    process.waitUntilExit()
    return CLIOutput(
        status: process.terminationStatus,
        stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
    )
}

/// A live local cluster started the way a user starts one: `hangar dev` (its own nats-server on a
/// free loopback port, a scheduler, nodes) in a temp state folder. Commands find it through
/// `--state`.
final class CLICluster: Sendable {
    let state: URL
    let process: Process
    let nodes: Int

    /// `hangar dev --state TMP --nodes N --runtimes RUNTIMES EXTRA...`, ready once N nodes are up;
    /// `runtimes` nil leaves hangar dev's default, `binary` replaces this build's `hangar`.
    static func start(
        nodes: Int = 2,
        runtimes: String? = "process,null",
        extra: [String] = [],
        binary: URL? = nil
    ) async throws -> CLICluster {
        let state = try makeTemporaryDirectory("hangar-cli-cluster")
        let process = try hangarProcess(
            [
                "dev", "--state", state.path, "--nodes", String(nodes), "--log-level", "warning", "--gateway-listen",
                "127.0.0.1:0",
            ]
                + (runtimes.map { ["--runtimes", $0] } ?? []) + extra,
            directory: state,
            binary: binary
        )
        let log = state.appendingPathComponent("dev.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: log)
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()
        let cluster = CLICluster(state: state, process: process, nodes: nodes)
        do {
            try await cluster.waitUntilReady()
            // `hangar dev` runs NATS with authorization and logins for the tenant `default`; the
            // tests also submit as `acme`.
            let added = try await cluster.hangar(["tenant", "add", "acme", "--auth-dir", cluster.authDirectory])
            guard added.status == 0 else { throw CLITestError("hangar tenant add acme failed: \(added.stderr)") }
        } catch {
            cluster.stop()
            throw error
        }
        return cluster
    }

    private init(state: URL, process: Process, nodes: Int) {
        self.state = state
        self.process = process
        self.nodes = nodes
    }

    /// Where `hangar dev` keeps the NATS logins (`creds/tenant-NAME.json`, `creds/operator-admin.json`).
    var authDirectory: String { state.appendingPathComponent("auth").path }

    var log: String { (try? String(contentsOf: state.appendingPathComponent("dev.log"), encoding: .utf8)) ?? "" }

    /// The last 40 lines of the cluster's nats-server log (why a login was refused, for one).
    var natsLog: String {
        let text =
            (try? String(contentsOf: state.appendingPathComponent("nats/nats-server.log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(40).joined(separator: "\n")
    }

    /// `hangar ARGS --state STATE` (`--state` goes before a `--` that starts the job's command).
    func hangar(_ arguments: [String], environment: [String: String] = [:]) async throws -> CLIOutput {
        var arguments = arguments
        if arguments.starts(with: ["tenant", "add"]) {
            return try await runHangar(arguments, environment: environment)
        }
        arguments.insert(contentsOf: ["--state", state.path], at: arguments.firstIndex(of: "--") ?? arguments.count)
        return try await runHangar(arguments, environment: environment)
    }

    private func waitUntilReady() async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            guard process.isRunning else {
                throw CLITestError("hangar dev exited at start:\n\(log)\nnats-server's log:\n\(natsLog)")
            }
            if FileManager.default.fileExists(atPath: state.appendingPathComponent("url").path),
                let output = try? await hangar(["node", "status", "-o", "json"], environment: [:]),
                output.status == 0,
                let nodes = (try? output.json())?["nodes"] as? [[String: Any]],
                nodes.filter({ $0["state"] as? String == "NODE_STATE_UP" }).count >= self.nodes
            {
                return
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw CLITestError("the cluster did not report \(nodes) nodes up within 30 s:\n\(log)")
    }

    /// Ctrl-C to `hangar dev`; SIGKILL if it has not stopped after 10 s. Returns whether Ctrl-C
    /// alone stopped it.
    @discardableResult
    func stop() -> Bool {
        if process.isRunning { process.interrupt() }
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        let graceful = !process.isRunning
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: state)
        return graceful
    }
}

/// Runs `body` against a fresh cluster and always stops it.
func withCLICluster<T>(
    nodes: Int = 2,
    runtimes: String? = "process,null",
    extra: [String] = [],
    binary: URL? = nil,
    _ body: (CLICluster) async throws -> T
) async throws -> T {
    let cluster = try await CLICluster.start(nodes: nodes, runtimes: runtimes, extra: extra, binary: binary)
    let result: T
    do {
        result = try await body(cluster)
    } catch {
        cluster.stop()
        throw error
    }
    let log = cluster.log
    if !cluster.stop() {
        Issue.record("hangar dev did not stop within 10 s of Ctrl-C:\n\(log)")
    }
    return result
}
