import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import HangarTestSupport
import Testing

@Suite("Templates and warm pools through scheduler and nodes", .serialized)
struct TemplatePoolTests {
    /// The scheduler's view of `node`'s last heartbeat.
    static func heartbeat(_ cluster: TestCluster, _ node: String) async throws -> Hangar_V1_NodeHeartbeat? {
        let reply = try await cluster.admin("nodes", Hangar_V1_NodesRequest(), as: Hangar_V1_NodesReply.self)
        return reply.nodes.first { $0.lastHeartbeat.nodeID == node }?.lastHeartbeat
    }

    /// The `process:host` pool of `node` as the scheduler last heard of it.
    static func pool(_ cluster: TestCluster, _ node: String) async throws -> Hangar_V1_WarmPool? {
        try await heartbeat(cluster, node)?.pools.first { $0.runtime == "process" && $0.template == "host" }
    }

    /// Polls the scheduler's view of `node`'s `process:host` pool until `condition` holds and returns
    /// that pool; throws, naming `what` and the last pool seen, when it does not hold within `timeout`.
    @discardableResult
    static func waitForPool(
        _ cluster: TestCluster,
        _ node: String,
        _ what: String,
        within timeout: Duration = .seconds(20),
        until condition: (Hangar_V1_WarmPool) -> Bool
    ) async throws -> Hangar_V1_WarmPool {
        let deadline = ContinuousClock.now + timeout
        var pool = try await Self.pool(cluster, node)
        while ContinuousClock.now < deadline {
            if let pool, condition(pool) { return pool }
            try await Task.sleep(for: .milliseconds(20))
            pool = try await Self.pool(cluster, node)
        }
        if let pool, condition(pool) { return pool }
        throw PoolWaitTimedOut(
            description: "\(node)'s pool was not \(what) within \(timeout); last seen: \(String(describing: pool))"
        )
    }

    struct PoolWaitTimedOut: Error, CustomStringConvertible {
        let description: String
    }

    @Test("placement prefers the node with a ready warm sandbox of the job's template and runtime")
    func warmFirst() async throws {
        let cluster = try await TestCluster.start(nodes: 2) { index, config in
            if index == 2 { config.pools = [WarmPoolSpec(runtime: "process", template: "host", min: 1, max: 1)] }
        }
        try await Self.stopping(cluster) { try await Self.warmFirst(cluster) }
    }

    /// Runs `body`, then stops `cluster` whether it threw or not.
    static func stopping(_ cluster: TestCluster, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    static func warmFirst(_ cluster: TestCluster) async throws {
        var placed: [String] = []
        for done in 0..<6 {
            // Until the scheduler has a heartbeat sent after the previous job took its sandbox, and
            // the pool has a ready one again.
            try await Self.waitForPool(cluster, "node-2", "served \(done) and has 1 ready") { pool in
                pool.servedWarm + pool.servedCold == done && pool.ready == 1
            }
            let result = try await cluster.run(command("/bin/echo", "warm"))
            #expect(result.status == .succeeded, "\(result.message)")
            #expect(String(decoding: result.stdout, as: UTF8.self) == "warm\n")
            placed.append(result.nodeID)
        }
        #expect(placed == Array(repeating: "node-2", count: 6))
        let pool = try await Self.waitForPool(cluster, "node-2", "served 6", within: .seconds(5)) { pool in
            pool.servedWarm + pool.servedCold >= 6
        }
        #expect(pool.servedWarm == 6, "\(pool)")
        #expect(try await Self.heartbeat(cluster, "node-1")?.pools.isEmpty == true)
    }

    @Test("a template no node holds is rejected at once; one a node holds runs there, in that root")
    func templates() async throws {
        let state = try makeTemporaryDirectory("hangar-tmpl")
        chmod(state.path, 0o755)
        defer { try? FileManager.default.removeItem(at: state) }
        let source = state.appendingPathComponent("src").path
        try FileManager.default.createDirectory(atPath: source + "/bin", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: source + "/bin/busybox")
        try FileManager.default.createSymbolicLink(atPath: source + "/bin/sh", withDestinationPath: "busybox")
        try Data("in-template".utf8).write(to: URL(fileURLWithPath: source + "/marker"))
        let store = TemplateStore(stateDirectory: state.appendingPathComponent("node").path)
        let manifest = try store.importDirectory(source, name: "bb")

        let cluster = try await TestCluster.start(nodes: 2, runtimes: [ProcessRuntime(templates: store)]) {
            index,
            config in
            if index == 1 { config.templates = store }
        }
        try await Self.stopping(cluster) { try await Self.templates(cluster, manifest) }
    }

    static func templates(_ cluster: TestCluster, _ manifest: TemplateManifest) async throws {
        var missing = command("/bin/true")
        missing.template = "nope"
        let started = ContinuousClock.now
        let reply = try await cluster.submit(missing)
        guard case .rejected(let rejected) = reply.outcome else {
            Issue.record("expected a rejection, got \(reply)")
            return
        }
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(rejected.reason == .unsupported)
        #expect(rejected.field == "template")
        #expect(rejected.message.contains("'nope' is not held by any node"), "\(rejected.message)")

        let node1 = try #require(try await Self.heartbeat(cluster, "node-1"))
        #expect(node1.templates == ["host", "bb"])
        #expect(node1.templateInfo.first?.hash == manifest.hash)
        var inTemplate = command("/bin/sh", "-c", "cat /marker")
        inTemplate.template = "bb"
        for _ in 0..<3 {
            let result = try await cluster.run(inTemplate)
            #expect(result.status == .succeeded, "\(result.message)")
            #expect(String(decoding: result.stdout, as: UTF8.self) == "in-template")
            #expect(result.nodeID == "node-1")
        }
    }
}
