import Foundation
import HangarShared
import Synchronization

/// Batched submissions waiting for all their answers. Each request of a batch is admitted as if it
/// came alone, with a reply subject of its own that no NATS subject can equal (it holds spaces);
/// the scheduler's `send` hands answers on such subjects here, and the whole `SubmitBatchReply`
/// goes out once the last request has its answer. Thread-safe.
final class SubmitBatches: Sendable {
    /// Starts every per-request reply subject: `" batch <batch> <index>"`.
    static let prefix = " batch "

    private struct Pending {
        let replyTo: String
        /// Each request's serialized `SubmitReply`, once answered.
        var replies: [Data?]
        var remaining: Int
    }

    private let state = Mutex<(next: UInt64, pending: [UInt64: Pending])>((0, [:]))

    /// Opens a batch of `count` requests answered on `replyTo`; returns their reply subjects.
    func open(count: Int, replyTo: String) -> [String] {
        let id = state.withLock { state in
            state.next += 1
            state.pending[state.next] = Pending(
                replyTo: replyTo,
                replies: Array(repeating: nil, count: count),
                remaining: count
            )
            return state.next
        }
        return (0..<count).map { "\(Self.prefix)\(id) \($0)" }
    }

    /// Records the answer (a serialized `SubmitReply`) on one request's reply subject (the first
    /// answer counts); returns the batch's reply subject and every request's serialized reply, in
    /// order, when that was the last one missing.
    func answer(_ subject: String, _ reply: Data) -> (replyTo: String, replies: [Data])? {
        let parts = subject.dropFirst(Self.prefix.count).split(separator: " ")
        guard parts.count == 2, let id = UInt64(parts[0]), let index = Int(parts[1]) else { return nil }
        return state.withLock { state in
            // Changed in place: a copy of the batch would copy its replies on every answer.
            guard let slot = state.pending[id]?.replies.indices.contains(index), slot,
                state.pending[id]?.replies[index] == nil
            else { return nil }
            state.pending[id]!.replies[index] = reply
            state.pending[id]!.remaining -= 1
            guard state.pending[id]!.remaining == 0, let batch = state.pending.removeValue(forKey: id) else {
                return nil
            }
            // A missing answer cannot happen here (remaining counts them); it would be an empty reply.
            return (batch.replyTo, batch.replies.map { $0 ?? Data() })
        }
    }

    /// Batches still waiting for answers.
    var pendingCount: Int { state.withLock { $0.pending.count } }
}
