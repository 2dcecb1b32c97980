import Foundation
import Glibc

extension NodeAgent {
    /// Before serving: re-adopts the stateful sandboxes an earlier process of this node left
    /// running (``SandboxHost/readopt(nodeID:died:)``), opens this node's ledger (noting theirs
    /// there), then takes down everything else that node processes that died without cleaning up
    /// left on this host (containers still running tenant code, cgroups, scratch mounts, network
    /// namespaces), from their ``SandboxLedger`` files in the directory of this node's ledger
    /// (``NodeResources/ledger``). Only a root node makes such things, so only a root node sweeps.
    func reclaimLeftovers() async {
        guard geteuid() == 0 else { return }
        // First what can live on: sandboxes an earlier process of this node left running.
        let readoption =
            await sandboxHost?.readopt(nodeID: config.nodeID, died: sandboxDeathReport()) ?? SandboxReadoption()
        for failure in readoption.failures {
            logger.warning(
                "a sandbox an earlier process of this node held could not be re-adopted: it is swept",
                metadata: ["sandbox.id": "\(failure.id)", "reason": "\(failure.reason)"]
            )
        }
        do {
            try resources.ledger.open()
            for resource in readoption.resources { resources.ledger.made(resource) }
        } catch {
            logger.warning(
                "no sandbox ledger: a crash of this node would leave its sandboxes for the operator to remove",
                metadata: ["error": "\(error)"]
            )
        }
        for sandbox in readoption.sandboxes {
            guard let unixMs = sandbox.deadlineUnixMs else { continue }
            sandboxDeadlines.withLock { $0[sandbox.id] = Self.instant(unixMilliseconds: unixMs) }
        }
        // Sandboxes that still run for other node ids on this host are spared by the sweep itself
        // (``SandboxLedger/sweep(directory:sparing:forgetting:)``).
        let report = await resources.ledger.sweep(forgetting: readoption.resources)
        if !report.processes.isEmpty {
            logger.notice(
                "took down what crashed node processes left",
                metadata: [
                    "processes": "\(report.processes.map(String.init).joined(separator: ","))",
                    "removed": "\(report.removed.count)",
                    "containers": "\(report.removed.filter { if case .container = $0 { true } else { false } }.count)",
                    "readopted": "\(readoption.sandboxes.count)",
                ]
            )
        }
        for problem in report.problems {
            logger.error("could not take down a crashed node's leftover", metadata: ["problem": "\(problem)"])
        }
    }
}
