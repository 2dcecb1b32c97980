import Foundation
import Glibc

extension NodeAgent {
    /// Before serving: takes down what node processes that died without cleaning up left on this
    /// host (containers still running tenant code, cgroups, scratch mounts, network namespaces),
    /// from their ``SandboxLedger`` files in the directory of this node's ledger
    /// (``NodeResources/ledger``), then opens that ledger. Only a root node makes such things, so
    /// only a root node sweeps.
    func reclaimLeftovers() async {
        guard geteuid() == 0 else { return }
        let report = await resources.ledger.sweep()
        if !report.processes.isEmpty {
            logger.notice(
                "took down what crashed node processes left",
                metadata: [
                    "processes": "\(report.processes.map(String.init).joined(separator: ","))",
                    "removed": "\(report.removed.count)",
                    "containers": "\(report.removed.filter { if case .container = $0 { true } else { false } }.count)",
                ]
            )
        }
        for problem in report.problems {
            logger.error("could not take down a crashed node's leftover", metadata: ["problem": "\(problem)"])
        }
        do {
            try resources.ledger.open()
        } catch {
            logger.warning(
                "no sandbox ledger: a crash of this node would leave its sandboxes for the operator to remove",
                metadata: ["error": "\(error)"]
            )
        }
    }
}
