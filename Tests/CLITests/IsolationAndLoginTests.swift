import Foundation
import HangarShared
import HangarTestSupport
import Testing

/// Issue 14, item 13: the tests do not depend on the folder they run from, and a failed NATS login
/// says which credentials were used and why it failed.
@Suite("test isolation and login errors", .serialized)
struct IsolationAndLoginTests {
    @Test("a stale .hangar/ in the folder the tests run from reaches no spawned command")
    func staleStateIsNotUsed() async throws {
        // What `hangar dev` leaves behind after Ctrl-C (a URL, logins of another cluster), planted
        // where the test process runs (the package folder) unless a real one is there already.
        let here = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        let stale = here.appendingPathComponent(".hangar")
        let planted = !FileManager.default.fileExists(atPath: stale.path)
        if planted {
            let auth = AuthDirectory(path: stale.appendingPathComponent("auth").path)
            try auth.prepareLocalCluster(nodes: [], tenants: ["default"], operators: ["admin"])
            _ = try auth.ensure(.scheduler)
            try "nats://127.0.0.1:9\n".write(to: stale.appendingPathComponent("url"), atomically: true, encoding: .utf8)
        }
        defer { if planted { try? FileManager.default.removeItem(at: stale) } }

        // A client command: neither the stale URL nor its credentials.
        let status = try await runHangar(["node", "status"], timeout: .seconds(30))
        #expect(status.status == 1)
        #expect(!status.stderr.contains(stale.path), "\(status.stderr)")
        #expect(!status.stderr.contains("127.0.0.1:9"), "\(status.stderr)")
        #expect(status.stderr.contains("no credentials"), "\(status.stderr)")

        // The scheduler of the issue, against a test nats-server: it starts (it picked up the
        // stale login before and failed with `connect(…): Error`).
        try await withNATSServer { server in
            let folder = try makeTemporaryDirectory("hangar-cli-stale")
            defer { try? FileManager.default.removeItem(at: folder) }
            let file = folder.appendingPathComponent("scheduler.yaml")
            let db = folder.appendingPathComponent("db.sqlite").path
            try "nats: \(server.url)\ndb: \(db)\nmetrics_port: 0\nmetrics_address: 127.0.0.1\n"
                .write(to: file, atomically: true, encoding: .utf8)
            let log = folder.appendingPathComponent("log")
            FileManager.default.createFile(atPath: log.path, contents: nil)
            let work = folder.appendingPathComponent("work")
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: false)
            let process = try hangarProcess(["scheduler", "--config", file.path], directory: work)
            process.standardOutput = try FileHandle(forWritingTo: log)
            process.standardError = try FileHandle(forWritingTo: log)
            try process.run()
            defer {
                if process.isRunning { process.interrupt() }
                process.waitUntilExit()
            }
            let deadline = ContinuousClock.now + .seconds(20)
            var text = ""
            while ContinuousClock.now < deadline, process.isRunning, metricsURL(in: text) == nil {
                try await Task.sleep(for: .milliseconds(50))
                text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            }
            #expect(metricsURL(in: text) != nil, "the scheduler did not start:\n\(text)")
        }
    }

    @Test("a refused login names the credentials file and says authorization; no server says nothing listens")
    func loginErrors() async throws {
        let folder = try makeTemporaryDirectory("hangar-cli-login")
        defer { try? FileManager.default.removeItem(at: folder) }
        let auth = AuthDirectory(path: folder.appendingPathComponent("auth").path)
        try auth.prepareLocalCluster(nodes: [], tenants: ["default"], operators: ["admin"])
        _ = try auth.ensure(.scheduler)
        // Credentials of another cluster: a key this server does not know.
        let other = AuthDirectory(path: folder.appendingPathComponent("other").path)
        _ = try other.ensure(.scheduler)
        let wrong = other.credentialsPath(for: .scheduler)
        let server = try await startAuthorizedServer(auth, in: folder)
        defer { server.stop() }

        let db = folder.appendingPathComponent("db.sqlite").path
        let refused = try await runHangar(
            ["scheduler", "--nats", server.url, "--creds", wrong, "--db", db],
            timeout: .seconds(30)
        )
        #expect(refused.status == 1)
        #expect(refused.stderr.contains(wrong), "\(refused.stderr)")
        #expect(refused.stderr.contains("authorization violation"), "\(refused.stderr)")
        #expect(!refused.stderr.contains("hangar dev"), "\(refused.stderr)")

        // A client command says the same.
        let status = try await runHangar(
            ["node", "status", "--nats", server.url, "--creds", wrong, "-o", "json"],
            timeout: .seconds(30)
        )
        #expect(status.stderr.contains(wrong) && status.stderr.contains("authorization"), "\(status.stderr)")

        // The case: a login at a server with authorization off (it sends no nonce to sign).
        try await withNATSServer { open in
            let noAuth = try await runHangar(
                ["scheduler", "--nats", open.url, "--creds", wrong, "--db", db],
                timeout: .seconds(30)
            )
            #expect(noAuth.status == 1)
            #expect(noAuth.stderr.contains(wrong) && noAuth.stderr.contains("authorization"), "\(noAuth.stderr)")
            #expect(noAuth.stderr.contains("sent no nonce"), "\(noAuth.stderr)")
        }

        let nobody = try await runHangar(["node", "status", "--nats", "nats://127.0.0.1:9"], timeout: .seconds(30))
        #expect(nobody.status == 1)
        #expect(nobody.stderr.contains("nothing is listening"), "\(nobody.stderr)")
        #expect(nobody.stderr.contains("no credentials"), "\(nobody.stderr)")
    }
}
