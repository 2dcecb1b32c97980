import Foundation
import HangarShared

/// Assignments decided in one round of the scheduler actor, waiting to leave together: every node
/// gets its share as one request (an `AssignmentBatch`) instead of one request per job. Pure.
struct AssignmentOutbox {
    /// One decided assignment.
    struct Pending: Sendable {
        var assignment: Hangar_V1_Assignment
        /// `assignment` with its traceparent, serialized: how it travels in a batch.
        var encoded: Data
        var nodeID: String
        @StoredAsMoment var decidedAt: ContinuousClock.Instant
        var trace: TraceContext
    }

    /// At most this many assignments go in one batch.
    static let maxBatchCount = 256
    /// A batch stays under this many payload bytes (NATS' default max_payload is 1 MiB); a larger
    /// assignment travels alone.
    static let maxBatchBytes = 256 * 1024

    private var pending: [Pending] = []
    /// A flush is queued on the actor; later decisions of this round join it.
    var flushScheduled = false

    var isEmpty: Bool { pending.isEmpty }

    mutating func add(_ item: Pending) { pending.append(item) }

    /// Takes every waiting assignment, split per node (nodes and assignments in the order decided)
    /// into batches of at most `maxBatchCount` and about `maxBatchBytes`.
    mutating func take() -> [(nodeID: String, batch: [Pending])] {
        var order: [String] = []
        var byNode: [String: [[Pending]]] = [:]
        var bytes: [String: Int] = [:]
        for item in pending {
            let itemSize = item.encoded.count
            if byNode[item.nodeID] == nil {
                order.append(item.nodeID)
                byNode[item.nodeID] = [[]]
                bytes[item.nodeID] = 0
            }
            let current = byNode[item.nodeID]!.last!
            if !current.isEmpty
                && (current.count >= Self.maxBatchCount || bytes[item.nodeID]! + itemSize > Self.maxBatchBytes)
            {
                byNode[item.nodeID]!.append([])
                bytes[item.nodeID] = 0
            }
            byNode[item.nodeID]![byNode[item.nodeID]!.count - 1].append(item)
            bytes[item.nodeID]! += itemSize
        }
        pending = []
        return order.flatMap { node in byNode[node]!.map { (node, $0) } }
    }
}
