import Foundation
import HangarShared

/// A send to a node decided while this scheduler did not hold the leader lease by its own clock
/// (its lease suspended: a renewal failed or came late, e.g. while the lease bucket's stream
/// elected a leader). It is sent once the lease is held again in the same term; if the lease goes
/// to another scheduler instead, this one exits and the new leader recovers the job or sandbox
/// from the store.
enum HeldSend: Sendable, Equatable {
    case assignment(jobID: String, attempt: UInt32, nodeID: String)
    case sandboxStart(sandboxID: String, nodeID: String)
}

extension Scheduler {
    /// Keeps `send` until the lease is held again.
    func hold(_ send: HeldSend) {
        if heldSends.isEmpty {
            logger.warning(
                "the leader lease is not held by this scheduler's clock: holding assignments until it is",
                metadata: ["term": "\(config.term)"]
            )
        }
        heldSends.append(send)
    }

    /// Sends what was held, if the lease is held again; each only if the core still waits for it
    /// (a held start of a sandbox whose creation deadline passed meanwhile is not sent).
    func sendHeldIfLeading() {
        guard !heldSends.isEmpty, config.holdsLease?() ?? true else { return }
        let held = heldSends
        heldSends = []
        logger.notice("the leader lease is held again: sending held assignments", metadata: ["count": "\(held.count)"])
        for send in held {
            switch send {
            case .assignment(let jobID, let attempt, let nodeID):
                guard core.jobs[jobID]?.phase == .running(attempt: attempt, node: nodeID, admitted: false) else {
                    continue
                }
                assign(jobID, attempt: attempt, on: nodeID)
            case .sandboxStart(let id, let nodeID):
                guard case .starting(nodeID, _) = core.sandboxes[id]?.phase else { continue }
                perform(.start(sandboxID: id, nodeID: nodeID))
            }
        }
    }
}
