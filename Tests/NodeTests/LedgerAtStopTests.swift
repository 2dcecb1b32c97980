import Foundation
import Glibc
import HangarShared
import Logging
import Testing

@testable import HangarNode

// Issue 14, item 12: a clean stop leaves no sandbox ledger behind.
private typealias H = Hostile

@Suite("SandboxLedger at a clean stop", .serialized)
struct LedgerAtStopTests {
    @Test("a clean stop after jobs and warm pools leaves no ledger behind")
    func cleanStopLeavesNoLedger() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-ledger-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ledger = SandboxLedger()
        try ledger.open(in: directory)
        let file = try #require(try FileManager.default.contentsOfDirectory(atPath: directory).first)
        let path = directory + "/" + file
        let container = OCIKind.runc.runtime
        try await SandboxLedger.$current.withValue(ledger) {
            let pools = WarmPools(
                specs: [
                    WarmPoolSpec(runtime: "process", template: "host", min: 1, max: 1),
                    WarmPoolSpec(runtime: "container", template: "host", min: 1, max: 1),
                ],
                runtimes: [ProcessRuntime(), container],
                logger: Logger(label: "test")
            )
            let running = Task { await pools.run(available: ["process", "container"]) }
            // Cold jobs in both runtimes (the container's user namespace comes from the stock,
            // which refills in the background), and one warm job.
            var cold = H.spec(["/bin/echo", "cold"])
            #expect(await ProcessRuntime().run(cold, jobID: "stop-p-\(uniqueTag())").status == .succeeded)
            cold.runtime = "container"
            #expect(await container.run(cold, jobID: "stop-c-\(uniqueTag())").status == .succeeded)
            try #require(
                await eventually(within: .seconds(30)) { pools.status().allSatisfy { $0.ready == 1 } },
                "\(pools.status())"
            )
            let warm = job(["/bin/echo", "warm"])
            let sandbox = try #require(pools.take(warm))
            #expect(await sandbox.run(warm, jobID: "stop-w-\(uniqueTag())").status == .succeeded)
            // Stop as the node does: pools drained, then what the node keeps for containers.
            running.cancel()
            await running.value
            await NodeAgent.releaseSandboxResources(.standard, logger: Logger(label: "test"))
        }
        let outstanding = SandboxLedger.outstandingResources(in: path)
        #expect(outstanding == [], "never marked gone: \(outstanding)")
        #expect(!FileManager.default.fileExists(atPath: path), "the ledger outlived a clean stop")
    }
}
