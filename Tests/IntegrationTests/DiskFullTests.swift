import Foundation
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Logging
import Testing

/// Mounting a tmpfs needs root (CI runs as root).
private let isRoot = getuid() == 0

@Suite("Store robustness", .serialized)
struct DiskFullTests {
    @Test(
        "a full disk: submissions are refused (store unavailable), none acknowledged and lost; work resumes once there is room",
        .enabled(if: isRoot, "mounting a tmpfs needs root")
    )
    func fullDiskRefusesWork() async throws {
        let directory = try makeTemporaryDirectory("hangar-diskfull")
        let mount = directory.appendingPathComponent("db")
        try FileManager.default.createDirectory(at: mount, withIntermediateDirectories: true)
        try shell("/bin/mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount.path)
        defer {
            _ = try? shell("/bin/umount", "-l", mount.path)
            try? FileManager.default.removeItem(at: directory)
        }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name, logger: logger))
        }
        let databasePath = mount.appendingPathComponent("hangar.sqlite").path
        let store = try Store(path: databasePath)
        let scheduler = Scheduler(
            config: SchedulerConfig(databasePath: databasePath),
            nats: try await connect("scheduler"),
            store: store,
            logger: logger
        )
        var nodeConfig = NodeConfig(nodeID: "n1", slots: 4)
        nodeConfig.heartbeatInterval = .milliseconds(200)
        let agent = NodeAgent(
            config: nodeConfig,
            nats: try await connect("node"),
            runtimes: [NullRuntime()],
            logger: logger
        )
        let tasks = [Task { try await scheduler.run() }, Task { try await agent.run() }]
        defer { for task in tasks { task.cancel() } }
        let client = try await connect("client")
        defer { Task { await client.close() } }
        func submit(_ id: String, wait: Bool = true) async throws -> Hangar_V1_SubmitReply {
            var request = nullJob(wait: wait)
            request.requestID = id
            let answer = try await client.request(
                Subjects.submit(tenant: "acme"),
                payload: try request.serializedData(),
                timeout: .seconds(10)
            )
            return try Hangar_V1_SubmitReply(serializedBytes: answer.payload)
        }
        // Running first.
        var ready = false
        let deadline = ContinuousClock.now + .seconds(15)
        while !ready && ContinuousClock.now < deadline {
            if case .result = try? await submit("warm-up-\(UUID().uuidString)").outcome { ready = true }
        }
        try #require(ready, "the cluster never ran a job")

        // Fill the file system, then submit.
        let filler = mount.appendingPathComponent("filler")
        FileManager.default.createFile(atPath: filler.path, contents: nil)
        let handle = try FileHandle(forWritingTo: filler)
        let block = Data(repeating: 0x5A, count: 64 * 1024)
        while (try? handle.write(contentsOf: block)) != nil {}
        try? handle.close()

        // SQLite may still commit a few into pages its files already own: those are accepted and
        // must finish later; the first refusal must come soon.
        var accepted: [String] = []
        var refused: (id: String, rejected: Hangar_V1_Rejected)?
        for attempt in 0..<300 where refused == nil {
            let id = "full-\(attempt)"
            let reply = try await submit(id, wait: false)
            switch reply.outcome {
            case .rejected(let rejected): refused = (id, rejected)
            case .accepted(let job): accepted.append(job.jobID)
            default: Issue.record("unexpected reply \(reply)")
            }
        }
        let (refusedID, rejection) = try #require(refused, "300 submissions accepted on a full disk")
        #expect(rejection.reason == .shuttingDown)
        #expect(rejection.message.hasPrefix("store unavailable: "), "\(rejection.message)")
        #expect(rejection.message.contains("full"), "\(rejection.message)")
        #expect(rejection.retryAfterMs > 0)

        // Room again: the same request id is accepted (once the intake consumer's retry has
        // committed what waited in the stream, within a second or so), runs, and the database is sound.
        try FileManager.default.removeItem(at: filler)
        var reply = try await submit(refusedID)
        let roomBy = ContinuousClock.now + .seconds(10)
        while case .rejected(let still) = reply.outcome, still.reason == .shuttingDown, ContinuousClock.now < roomBy {
            try await Task.sleep(for: .milliseconds(Int(still.retryAfterMs) / 4))
            reply = try await submit(refusedID)
        }
        guard case .result(let result) = reply.outcome else {
            Issue.record("expected a result once the disk has room, got \(reply)")
            return
        }
        #expect(result.status == .succeeded)
        // What was accepted before the refusal finishes too (nodes resend results until stored).
        let settle = ContinuousClock.now + .seconds(20)
        var unfinished = accepted
        while !unfinished.isEmpty && ContinuousClock.now < settle {
            var still: [String] = []
            for id in unfinished where try await store.job(id: id)?.result == nil { still.append(id) }
            unfinished = still
            if !unfinished.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(unfinished.isEmpty, "accepted before the refusal and never finished: \(unfinished)")
        #expect(try await store.integrityCheck() == ["ok"])
        #expect(try await store.verifyAudit().firstBad == nil)
    }
}

/// Runs a command and fails with its output if it exits non-zero.
@discardableResult
private func shell(_ executable: String, _ arguments: String...) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    process.waitUntilExit()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    guard process.terminationStatus == 0 else {
        throw LocalNATSServerError("\(executable) \(arguments.joined(separator: " ")) failed: \(output)")
    }
    return output
}
