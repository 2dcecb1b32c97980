import Foundation
import HangarNATS
import HangarShared
import Synchronization

/// Publishes admitted submissions into the intake stream, grouped: while one round of publishes is
/// in flight (until its PubAcks), submissions admitted meanwhile wait and go in the next round, one
/// message per tenant (`IntakeBatch`, header `Hangar-Intake: batch`). Under load one publish, one
/// PubAck, one stream delivery and one acknowledgement serve many jobs; when idle a submission goes
/// at once, alone, as a plain `SubmitRequest` (headers `Hangar-Job-Id`, `traceparent`,
/// `Hangar-Submitted-At`).
///
/// Submissions with a request id do not come here: they are published alone with the message id
/// `<tenant>/<request id>`, so that the stream de-duplicates them across scheduler instances.
final class IntakeOutbox: Sendable {
    /// One admitted submission.
    struct Entry: Sendable {
        var tenant: String
        var jobID: String
        /// The serialized `SubmitRequest`.
        var request: Data
        var traceparent: String
        var submittedAtMs: Int64
    }

    private struct Item {
        let entry: Entry
        let waiter: Waiter
        let index: Int
    }

    /// Whoever waits for some entries: hears every outcome, in order, once the last is known.
    private final class Waiter: Sendable {
        private let state: Mutex<(outcomes: [Result<JetStreamPublishAck, any Error>?], remaining: Int)>
        private let done: @Sendable ([Result<JetStreamPublishAck, any Error>]) -> Void

        init(count: Int, done: @escaping @Sendable ([Result<JetStreamPublishAck, any Error>]) -> Void) {
            state = Mutex((Array(repeating: nil, count: count), count))
            self.done = done
        }

        func finish(_ index: Int, _ outcome: Result<JetStreamPublishAck, any Error>) {
            let all: [Result<JetStreamPublishAck, any Error>]? = state.withLock { state in
                state.outcomes[index] = outcome
                state.remaining -= 1
                return state.remaining == 0 ? state.outcomes.map { $0! } : nil
            }
            if let all { done(all) }
        }
    }

    private struct State {
        var items: [Item] = []
        var sending = false
    }

    private let nats: NATSConnection
    private let timeout: Duration
    private let state = Mutex(State())

    init(nats: NATSConnection, timeout: Duration) {
        self.nats = nats
        self.timeout = timeout
    }

    /// Returns the server's PubAck for the message that carried `entry`; throws what its publish threw.
    func publish(_ entry: Entry) async throws -> JetStreamPublishAck {
        try await withCheckedThrowingContinuation { continuation in
            enqueue([entry], Waiter(count: 1) { continuation.resume(with: $0[0]) })
        }
    }

    /// Publishes several entries (a batch submission's), waiting once for all: each one's PubAck
    /// or error, in order.
    func publish(_ entries: [Entry]) async -> [Result<JetStreamPublishAck, any Error>] {
        guard !entries.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            enqueue(entries, Waiter(count: entries.count) { continuation.resume(returning: $0) })
        }
    }

    private func enqueue(_ entries: [Entry], _ waiter: Waiter) {
        let startSending = state.withLock { state in
            for (index, entry) in entries.enumerated() {
                state.items.append(Item(entry: entry, waiter: waiter, index: index))
            }
            if state.sending { return false }
            state.sending = true
            return true
        }
        if startSending { Task.detached { await self.sendAll() } }
    }

    private func sendAll() async {
        while let round = nextRound() {
            await withDiscardingTaskGroup { group in
                for items in round {
                    group.addTask {
                        let outcome: Result<JetStreamPublishAck, any Error>
                        do {
                            outcome = .success(try await self.send(items))
                        } catch {
                            outcome = .failure(error)
                        }
                        for item in items { item.waiter.finish(item.index, outcome) }
                    }
                }
            }
        }
    }

    /// Everything waiting, as messages: per tenant in admission order, each message within
    /// `IntakeBatch.maxCount` and `maxBytes` (a larger submission alone). Nil, and sending ends,
    /// when nothing waits.
    private func nextRound() -> [[Item]]? {
        state.withLock { state in
            guard !state.items.isEmpty else {
                state.sending = false
                return nil
            }
            var messages: [[Item]] = []
            var open: [String: (index: Int, bytes: Int)] = [:]
            for item in state.items {
                let size =
                    item.entry.request.count + item.entry.jobID.utf8.count + item.entry.traceparent.utf8.count + 32
                if let (index, bytes) = open[item.entry.tenant],
                    messages[index].count < IntakeBatch.maxCount, bytes + size <= IntakeBatch.maxBytes
                {
                    messages[index].append(item)
                    open[item.entry.tenant] = (index, bytes + size)
                } else {
                    open[item.entry.tenant] = (messages.count, size)
                    messages.append([item])
                }
            }
            state.items.removeAll(keepingCapacity: true)
            return messages
        }
    }

    private func send(_ items: [Item]) async throws -> JetStreamPublishAck {
        let tenant = items[0].entry.tenant
        if items.count == 1 {
            let entry = items[0].entry
            return try await nats.jetStreamPublish(
                Subjects.intake(tenant: tenant),
                payload: entry.request,
                headers: [
                    Streams.jobIDHeader: entry.jobID, TraceContext.header: entry.traceparent,
                    Streams.submittedAtHeader: String(entry.submittedAtMs),
                ],
                timeout: timeout,
                waitForLeader: true
            )
        }
        var batch = Hangar_V1_IntakeBatch()
        batch.entries = items.map { item in
            var entry = Hangar_V1_IntakeEntry()
            entry.jobID = item.entry.jobID
            entry.request = item.entry.request
            entry.traceparent = item.entry.traceparent
            entry.submittedAtMs = item.entry.submittedAtMs
            return entry
        }
        return try await nats.jetStreamPublish(
            Subjects.intake(tenant: tenant),
            payload: try batch.serializedData(),
            headers: [IntakeBatch.header: IntakeBatch.value],
            timeout: timeout,
            waitForLeader: true
        )
    }
}
