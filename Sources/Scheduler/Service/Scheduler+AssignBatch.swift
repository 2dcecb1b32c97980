import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Queues an assignment to leave with the others decided in this round: a flush queued on the
    /// actor runs after the work already waiting there (e.g. every submission a group commit just
    /// accepted), so under load each node gets one request for many jobs. When idle a round holds
    /// one job, which goes out as a plain `Assignment`, as before.
    func send(
        _ assignment: Hangar_V1_Assignment,
        to nodeID: String,
        decidedAt: ContinuousClock.Instant,
        trace: TraceContext
    ) {
        var traced = assignment
        traced.traceparent = trace.traceparent
        let encoded = (try? traced.serializedData()) ?? Data()
        outbox.add(
            AssignmentOutbox.Pending(
                assignment: assignment,
                encoded: encoded,
                nodeID: nodeID,
                decidedAt: decidedAt,
                trace: trace
            )
        )
        guard !outbox.flushScheduled else { return }
        outbox.flushScheduled = true
        Task { self.flushAssignments() }
    }

    /// Sends every queued assignment: one request per node (more if a batch would be too large).
    func flushAssignments() {
        outbox.flushScheduled = false
        for (nodeID, batch) in outbox.take() {
            if batch.count == 1 {
                let item = batch[0]
                Task { await self.dispatch(item.assignment, to: nodeID, decidedAt: item.decidedAt, trace: item.trace) }
            } else {
                Task { await self.dispatchBatch(batch, to: nodeID) }
            }
        }
    }

    /// Sends several assignments to one node in one request; each is acknowledged or refused on its
    /// own. A failed request (timeout, no reply, a reply of the wrong length) fails them all, and
    /// each is placed again as after a refusal.
    nonisolated func dispatchBatch(_ batch: [AssignmentOutbox.Pending], to nodeID: String) async {
        // Framed from each assignment's own bytes (encoded once, when it was decided).
        let payload = ProtobufFraming.repeated(field: ProtobufFraming.batchItems, batch.map(\.encoded))
        var outcomes: [String?]  // nil: acknowledged; else why it failed
        do {
            let answer = try await control.request(
                Subjects.assign(node: nodeID),
                payload: payload,
                headers: [AssignBatch.header: AssignBatch.value],
                timeout: config.assignTimeout
            )
            let reply = try Hangar_V1_AssignBatchReply(serializedBytes: answer.payload)
            if reply.replies.count == batch.count {
                outcomes = zip(batch, reply.replies).map { item, reply in
                    switch reply.outcome {
                    case .ack(let ack):
                        return ack.jobID == item.assignment.jobID && ack.attempt == item.assignment.attempt
                            ? nil : "the node acknowledged \(ack.jobID) attempt \(ack.attempt) in its place"
                    case .refused(let refused):
                        if refused.reason == .staleTerm { self.deposed(refused.message) }
                        return "refused (\(refused.reason)): \(refused.message)"
                    case nil: return "empty reply"
                    }
                }
            } else {
                outcomes = Array(
                    repeating: "the node answered \(reply.replies.count) of \(batch.count) batched assignments",
                    count: batch.count
                )
            }
        } catch {
            outcomes = Array(repeating: "\(error)", count: batch.count)
        }
        await settle(batch, outcomes, on: nodeID)
    }

    /// Applies the node's answers to a batch, in order.
    private func settle(_ batch: [AssignmentOutbox.Pending], _ outcomes: [String?], on nodeID: String) {
        var events: [CoreEvent] = []
        events.reserveCapacity(batch.count)
        for (item, failure) in zip(batch, outcomes) {
            let jobID = item.assignment.jobID
            let attempt = item.assignment.attempt
            // In place: a copy of the entry and a second lookup cost more than the rest here.
            if failure == nil, let index = jobs.index(forKey: jobID) {
                let milliseconds = item.decidedAt.milliseconds(until: .now)
                jobs.values[index].placementMilliseconds = milliseconds
                counters.dispatched(milliseconds: milliseconds)
            }
            events.append(.assignAnswered(jobID: jobID, attempt: attempt, refusal: failure))
        }
        handle(events)
    }
}
