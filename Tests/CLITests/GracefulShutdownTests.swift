import Foundation
import GRDB
import HangarTestSupport
import Testing

/// Issue 15, lifecycle of the daemons: `hangar scheduler` and `hangar dev` run as service groups
/// that stop gracefully on SIGTERM: exit 0 in a bound, the store flushed, NATS closed without error.
@Suite("graceful shutdown of the daemons", .serialized)
struct GracefulShutdownTests {
    @Test("hangar scheduler on SIGTERM: exits 0, the jobs it accepted are in its SQLite file, no error logged")
    func schedulerStopsOnSIGTERM() async throws {
        try await withNATSServer { server in
            let folder = try makeTemporaryDirectory("hangar-cli-sigterm")
            defer { try? FileManager.default.removeItem(at: folder) }
            let db = folder.appendingPathComponent("db.sqlite").path
            let log = folder.appendingPathComponent("log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let work = folder.appendingPathComponent("work")
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: false)
            let process = try hangarProcess(
                ["scheduler", "--nats", server.url, "--db", db, "--log-format", "json", "--log-level", "info"],
                directory: work
            )
            process.standardOutput = try FileHandle(forWritingTo: log)
            process.standardError = try FileHandle(forWritingTo: log)
            try process.run()
            defer {
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
            }
            try await waitFor("scheduler serving", in: log, while: process)

            // Accepted (no node: they wait in the queue), then SIGTERM at once.
            var ids: [String] = []
            for _ in 0..<3 {
                let submitted = try await runHangar(
                    ["submit", "--nats", server.url, "--", "/bin/true"],
                    timeout: .seconds(30)
                )
                #expect(submitted.status == 0, "\(submitted.stderr)")
                ids.append(submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            kill(process.processIdentifier, SIGTERM)
            let text = try await waitForExit(process, within: .seconds(15), log: log)
            #expect(process.terminationReason == .exit && process.terminationStatus == 0, "\(text)")

            let stored = try await DatabaseQueue(path: db).read { db in
                try String.fetchAll(db, sql: "SELECT id FROM jobs")
            }
            #expect(Set(stored) == Set(ids), "stored \(stored), accepted \(ids)")
            let errors = logLines(text).filter { ["error", "critical"].contains($0["level"] as? String) }
            #expect(errors.isEmpty, "errors in the scheduler's log: \(errors)")
        }
    }

    @Test("hangar dev on SIGTERM: exits 0; the job its node killed has its result stored; no error logged")
    func devStopsOnSIGTERM() async throws {
        let cluster = try await CLICluster.start(nodes: 1)
        defer { cluster.stop() }
        let submitted = try await cluster.hangar(["submit", "--", "/bin/sleep", "60"])
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // Running on the node before the signal.
        let deadline = ContinuousClock.now + .seconds(20)
        var running = false
        while !running, ContinuousClock.now < deadline {
            let job = try await cluster.hangar(["job", "status", id, "-o", "json"])
            running = job.status == 0 && job.stdout.contains("RUNNING")
            if !running { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(running, "the job did not start:\n\(cluster.log)")

        kill(cluster.process.processIdentifier, SIGTERM)
        let log = cluster.state.appendingPathComponent("dev.log")
        let text = try await waitForExit(cluster.process, within: .seconds(20), log: log)
        #expect(
            cluster.process.terminationReason == .exit && cluster.process.terminationStatus == 0,
            "\(text)"
        )
        let database = cluster.state.appendingPathComponent("hangar.sqlite").path
        let result = try await DatabaseQueue(path: database).read { db in
            try String.fetchOne(db, sql: "SELECT status FROM results WHERE job_id = ?", arguments: [id])
        }
        #expect(result != nil, "no result stored for the job the node killed:\n\(text)")
        // `hangar dev --log-level warning`: text lines; none at error level.
        let errors = text.split(separator: "\n").filter { $0.contains(" error ") || $0.contains(" critical ") }
        #expect(errors.isEmpty, "errors in hangar dev's log:\n\(text)")
    }
}

/// Waits until `log` holds `text` (while `process` runs, at most 30 s).
func waitFor(_ text: String, in log: URL, while process: Process) async throws {
    let deadline = ContinuousClock.now + .seconds(30)
    while ContinuousClock.now < deadline {
        let content = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        if content.contains(text) { return }
        guard process.isRunning else { throw CLITestError("the process ended before logging '\(text)':\n\(content)") }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw CLITestError("'\(text)' not logged within 30 s")
}

/// Waits at most `bound` for `process` to end and returns its log; throws if it is still running.
func waitForExit(_ process: Process, within bound: Duration, log: URL) async throws -> String {
    let deadline = ContinuousClock.now + bound
    while process.isRunning, ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(20))
    }
    let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    guard !process.isRunning else { throw CLITestError("still running \(bound) after SIGTERM:\n\(text)") }
    process.waitUntilExit()
    return text
}

/// The JSON objects of a JSON log.
private func logLines(_ text: String) -> [[String: Any]] {
    text.split(separator: "\n").compactMap {
        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
    }
}
