import Foundation
import HangarNATS
import HangarShared
import Synchronization

/// Stateful sandboxes' lifecycle events: published in order into the `HANGAR_SANDBOX_EVENTS` stream
/// on `hangar.sbxevents.<tenant>.<sandbox>` (live subscribers get them too), and replayed to their
/// tenant from a stream sequence by the `events` verb.
extension Scheduler {
    // MARK: Events

    /// Queues one lifecycle event for the events stream (published in order by `publishSandboxEvents`).
    func publishSandboxEvent(_ sandbox: StoredSandbox, kind: Hangar_V1_SandboxEventKind, seq: UInt64, message: String) {
        var event = Hangar_V1_SandboxEvent()
        event.sandboxID = sandbox.id
        event.tenant = sandbox.tenant
        event.seq = seq
        event.kind = kind
        event.message = message
        event.atMs = unixMilliseconds()
        event.nodeID = sandbox.nodeID
        if kind == .sandboxEventEnded {
            event.endReason = sandbox.endReason
        } else {
            event.endsAtMs = sandbox.endsAtMs
        }
        guard let payload = try? event.serializedData() else { return }
        sandboxEventsOutbox.add(
            OutgoingSandboxEvent(
                subject: Subjects.sandboxEvents(tenant: sandbox.tenant, sandbox: sandbox.id),
                payload: payload,
                messageID: "\(sandbox.id)/\(seq)"
            )
        )
    }

    /// Publishes the queued events into the stream one after another (so each sandbox's events are
    /// stored in order) until the scheduler stops; then what is still queued (see
    /// `publishRemainingSandboxEvents`). A failed publish is logged; that event is missing from the
    /// stream (its state change is in the store and the audit, and the next event's `seq` shows the gap).
    nonisolated func publishSandboxEvents() async {
        for await _ in sandboxEventsOutbox.wakeUps {
            for event in sandboxEventsOutbox.takeAll() { await publish(event) }
        }
    }

    /// Publishes what the outbox still holds, at a stop (the connection is still open).
    nonisolated func publishRemainingSandboxEvents() async {
        for event in sandboxEventsOutbox.takeAll() { await publish(event) }
    }

    private nonisolated func publish(_ event: OutgoingSandboxEvent) async {
        let nats = self.nats
        // Not cancelled with the scheduler's tasks: an event taken from the outbox goes out.
        let outcome = await Task {
            try await nats.jetStreamPublish(
                event.subject,
                payload: event.payload,
                messageID: event.messageID,
                timeout: .seconds(5)
            )
        }.result
        if case .failure(let error) = outcome {
            logger.warning(
                "could not publish a sandbox event into its stream",
                metadata: ["nats.subject": "\(event.subject)", "error": "\(error)"]
            )
        }
    }

    /// `events`: the tenant's events (of one sandbox, or all of its own) stored after a stream
    /// sequence, read through the JetStream API on the scheduler's own permissions.
    nonisolated func sandboxEvents(
        _ request: Hangar_V1_SandboxEventsRequest,
        tenant: String
    ) async
        -> Hangar_V1_SandboxEventsReply
    {
        var reply = Hangar_V1_SandboxEventsReply()
        guard request.sandboxID.isEmpty || Subjects.isValidToken(request.sandboxID) else {
            reply.error = "sandbox_id '\(request.sandboxID.prefix(80))' is not a sandbox id"
            return reply
        }
        let filter =
            request.sandboxID.isEmpty
            ? "hangar.sbxevents.\(tenant).>" : Subjects.sandboxEvents(tenant: tenant, sandbox: request.sandboxID)
        let limit = request.limit == 0 ? SandboxStreams.defaultPage : min(Int(request.limit), SandboxStreams.maxPage)
        var next = request.afterSeq &+ 1
        while reply.events.count < limit {
            let found: (sequence: UInt64, payload: Data)?
            do {
                found = try await nextStreamMessage(Streams.sandboxEvents, from: next, subject: filter)
            } catch {
                reply.error = "the events stream is unavailable: \(error)"
                return reply
            }
            guard let found else { break }
            if var event = try? Hangar_V1_SandboxEvent(serializedBytes: found.payload), event.tenant == tenant {
                event.streamSeq = found.sequence
                reply.events.append(event)
            }
            next = found.sequence + 1
        }
        return reply
    }

    /// The first message of `stream` at or after `sequence` on `subject` (wildcards allowed), by the
    /// JetStream API's `next_by_subj`; nil when there is none.
    private nonisolated func nextStreamMessage(
        _ stream: String,
        from sequence: UInt64,
        subject: String
    ) async throws -> (sequence: UInt64, payload: Data)? {
        struct Request: Encodable {
            var seq: UInt64
            var next_by_subj: String
        }
        struct Answer: Decodable {
            struct Message: Decodable {
                var seq: UInt64
                var data: String?
            }
            struct Failure: Decodable {
                var code: Int?
                var description: String?
            }
            var message: Message?
            var error: Failure?
        }
        let answer = try await nats.request(
            "$JS.API.STREAM.MSG.GET.\(stream)",
            payload: try JSONEncoder().encode(Request(seq: sequence, next_by_subj: subject)),
            timeout: .seconds(5)
        )
        let decoded = try JSONDecoder().decode(Answer.self, from: answer.payload)
        if let error = decoded.error {
            if error.code == 404 { return nil }
            throw NATSError(
                kind: .status(Int32(error.code ?? 0)),
                operation: "stream message get",
                message: error.description ?? "refused"
            )
        }
        guard let message = decoded.message else { return nil }
        return (message.seq, Data(base64Encoded: message.data ?? "") ?? Data())
    }
}

/// A lifecycle event on its way into the `HANGAR_SANDBOX_EVENTS` stream.
struct OutgoingSandboxEvent: Sendable {
    let subject: String
    let payload: Data
    let messageID: String
}

/// The sandbox events on their way to the stream, in the order the actor queued them: one task
/// drains them (woken by `wakeUps`), and a stopping scheduler publishes what is left.
final class SandboxEventsOutbox: Sendable {
    private let pending = Mutex<[OutgoingSandboxEvent]>([])
    let wakeUps: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    init() {
        (wakeUps, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func add(_ event: OutgoingSandboxEvent) {
        pending.withLock { $0.append(event) }
        wake.yield()
    }

    /// Everything queued so far, oldest first; the queue is empty afterwards.
    func takeAll() -> [OutgoingSandboxEvent] {
        pending.withLock { pending in
            defer { pending = [] }
            return pending
        }
    }
}
