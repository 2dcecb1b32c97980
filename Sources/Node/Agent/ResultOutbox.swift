import Foundation
import HangarNATS
import HangarShared
import Logging
import Synchronization

/// Sends attempt results into the results stream, grouped: while one message is being published
/// (until its PubAck), results that finish meanwhile wait and go together in the next message
/// (`AttemptResultBatch`, header `Hangar-Results: batch`). Under load one publish, one PubAck, one
/// stream delivery and one acknowledgement serve many results; when idle a result goes at once,
/// alone, as a plain `AttemptResult` with the message id `<job>/<attempt>`.
///
/// A message is published until the server acknowledges it (nats-server may be restarting), with
/// the same message id each time, so a resend whose first copy did arrive is dropped by the stream.
/// It gives up only after `retryFor`, or `retryOnShutdown` once the node is stopping.
final class ResultOutbox: Sendable {
    private struct Item {
        let result: Hangar_V1_AttemptResult
        /// The result serialized alone (its size bounds a batch; sent as is when alone).
        let payload: Data
        let sent: CheckedContinuation<Void, Never>
    }

    private struct State {
        var items: [Item] = []
        var sending = false
        var messages: UInt64 = 0
    }

    private let nats: NATSConnection
    private let nodeID: String
    private let incarnation: String
    private let retryFor: Duration
    private let retryOnShutdown: Duration
    private let logger: Logger
    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)

    init(
        nats: NATSConnection,
        nodeID: String,
        incarnation: String,
        retryFor: Duration,
        retryOnShutdown: Duration,
        logger: Logger
    ) {
        self.nats = nats
        self.nodeID = nodeID
        self.incarnation = incarnation
        self.retryFor = retryFor
        self.retryOnShutdown = retryOnShutdown
        self.logger = logger
    }

    /// Returns once `result` is in the stream (or sending it was given up, which is logged).
    func send(_ result: Hangar_V1_AttemptResult) async {
        guard let payload = try? result.serializedData() else { return }
        await withCheckedContinuation { (sent: CheckedContinuation<Void, Never>) in
            let startSending = state.withLock { state in
                state.items.append(Item(result: result, payload: payload, sent: sent))
                if state.sending { return false }
                state.sending = true
                return true
            }
            // Detached: a result is still sent while the job's task is being cancelled.
            if startSending { Task.detached { await self.sendAll() } }
        }
    }

    /// The node is stopping: retry for at most `retryOnShutdown` from now on.
    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
    }

    private func sendAll() async {
        while let (items, number) = nextMessage() {
            await publish(items, number: number)
            for item in items { item.sent.resume() }
        }
    }

    /// The results of the next message: as many waiting ones as fit, at least one; nil (and
    /// sending ends) when none wait.
    private func nextMessage() -> ([Item], UInt64)? {
        state.withLock { state in
            guard !state.items.isEmpty else {
                state.sending = false
                return nil
            }
            var count = 0
            var bytes = 0
            for item in state.items {
                let size = item.payload.count + 8  // the field's tag and length
                if count > 0 && (count == ResultBatch.maxCount || bytes + size > ResultBatch.maxBytes) { break }
                count += 1
                bytes += size
            }
            let items = Array(state.items.prefix(count))
            state.items.removeFirst(count)
            state.messages += 1
            return (items, state.messages)
        }
    }

    /// An `AttemptResultBatch` made of results serialized alone: the encoding of a repeated message
    /// field 1 is each message's bytes behind its tag and length, so nothing is encoded twice.
    static func batchPayload(_ results: [Data]) -> Data {
        ProtobufFraming.repeated(field: ProtobufFraming.batchItems, results)
    }

    private func publish(_ items: [Item], number: UInt64) async {
        let payload: Data
        let messageID: String
        var headers: [String: String] = [:]
        if items.count == 1 {
            payload = items[0].payload
            messageID = "\(items[0].result.jobID)/\(items[0].result.attempt)"
        } else {
            payload = Self.batchPayload(items.map(\.payload))
            messageID = "\(nodeID)/\(incarnation)/\(number)"
            headers[ResultBatch.header] = ResultBatch.value
        }
        var deadline = ContinuousClock.now + retryFor
        var delay = Duration.milliseconds(100)
        while ContinuousClock.now < deadline {
            if stopping.load(ordering: .sequentiallyConsistent) {
                // Shutting down: keep trying a little while, then give up rather than hang.
                deadline = min(deadline, ContinuousClock.now + retryOnShutdown)
            }
            do {
                // Its PubAck means stored on the server; the message id keeps a resend whose first
                // copy did arrive from counting twice.
                _ = try await nats.jetStreamPublish(
                    Subjects.nodeResult(node: nodeID),
                    payload: payload,
                    messageID: messageID,
                    headers: headers,
                    timeout: .seconds(5),
                    waitForLeader: true
                )
                return
            } catch {
                logger.warning(
                    "results not acknowledged; retrying",
                    metadata: ["results": "\(items.count)", "error": "\(error)", "retry.in": "\(delay)"]
                )
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
        logger.error(
            "gave up sending results",
            metadata: ["results": "\(items.count)", "after": "\(retryFor)", "jobs": "\(items.map(\.result.jobID))"]
        )
    }
}
