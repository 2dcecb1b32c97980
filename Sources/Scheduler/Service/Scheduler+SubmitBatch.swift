import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// A `SubmitBatchRequest` (header `Hangar-Submit: batch`): each request is admitted as if sent
    /// alone, and the answers go back together (see `SubmitBatches`).
    nonisolated func handleSubmitBatch(_ message: NATSMessage, tenant: String) async {
        guard let replyTo = message.replyTo else { return }
        let batch: Hangar_V1_SubmitBatchRequest
        do {
            batch = try Hangar_V1_SubmitBatchRequest(serializedBytes: message.payload, options: Self.decoding)
        } catch {
            refuse(
                batchTo: replyTo,
                tenant: tenant,
                Rejection(.invalidRequest, "payload", "the payload is not a hangar.v1.SubmitBatchRequest: \(error)")
            )
            return
        }
        if message.payload.count > maxRequestBytes {
            // Only a batch this large can hold a request too large to forward.
            let sizes = batch.requests.map { (try? $0.serializedData())?.count ?? 0 }
            if let index = sizes.firstIndex(where: { $0 > maxRequestBytes }) {
                refuse(batchTo: replyTo, tenant: tenant, tooLarge("requests[\(index)]", sizes[index]))
                return
            }
        }
        guard batch.requests.count <= SubmitBatch.maxCount else {
            let rejection = Rejection(
                .invalidRequest,
                "requests",
                "a batch holds at most \(SubmitBatch.maxCount) submissions, this one \(batch.requests.count)"
            )
            counters.rejected(tenant: tenant, reason: rejection.rejected.reason)
            var answer = Hangar_V1_SubmitBatchReply()
            var one = Hangar_V1_SubmitReply()
            one.outcome = .rejected(rejection.rejected)
            answer.replies = Array(repeating: one, count: batch.requests.count)
            publish(answer, to: replyTo)
            return
        }
        if batch.requests.isEmpty {
            publish(Hangar_V1_SubmitBatchReply(), to: replyTo)
            return
        }
        let trace = TraceContext(traceparent: message.header(TraceContext.header)) ?? .start()
        let subjects = submitBatches.open(count: batch.requests.count, replyTo: replyTo)
        await admitBatch(batch.requests, tenant: tenant, replyTo: subjects, trace: trace)
    }

    /// Admits each request on the actor, without waiting for one's commit before the next. Requests
    /// without a request id are checked one after the other and then published together (one wait
    /// for all); those with one are admitted side by side, each on its own. A request that repeats
    /// the id of an earlier one in the same batch goes after the others are answered, so that it is
    /// the one answered as the duplicate (run side by side, either could win).
    private func admitBatch(
        _ requests: [Hangar_V1_SubmitRequest],
        tenant: String,
        replyTo subjects: [String],
        trace: TraceContext
    ) async {
        var seen = Set<String>()
        var first: [(Hangar_V1_SubmitRequest, String)] = []
        var repeats: [(Hangar_V1_SubmitRequest, String)] = []
        for (request, subject) in zip(requests, subjects) {
            if !request.requestID.isEmpty && !seen.insert(request.requestID).inserted {
                repeats.append((request, subject))
            } else {
                first.append((request, subject))
            }
        }
        for round in [first, repeats] where !round.isEmpty {
            await withDiscardingTaskGroup { group in
                var admitted: [PendingAdmission] = []
                var entries: [IntakeOutbox.Entry] = []
                for (request, subject) in round {
                    let childTrace = trace.child()
                    guard request.requestID.isEmpty else {
                        group.addTask { await self.admit(request, tenant: tenant, replyTo: subject, trace: childTrace) }
                        continue
                    }
                    guard let pending = await admission(request, tenant: tenant, replyTo: subject, trace: childTrace)
                    else { continue }
                    entries.append(intakeEntry(pending.encoded, tenant: tenant, jobID: pending.id, trace: childTrace))
                    admitted.append(pending)
                }
                let outcomes = await intakeOutbox.publish(entries)
                for (pending, outcome) in zip(admitted, outcomes) {
                    await settleAdmission(pending, outcome)
                }
            }
        }
    }

    /// Takes an answer meant for one request of a batch; true if `replyTo` was such a subject. The
    /// batch's reply goes out once complete, within the server's `max_payload` (see `ReplyFitting`).
    nonisolated func answerBatched(_ replyTo: String, _ reply: Data) -> Bool {
        guard replyTo.hasPrefix(SubmitBatches.prefix) else { return false }
        if let complete = submitBatches.answer(replyTo, reply) {
            publish(ReplyFitting.batch(complete.replies, limit: maxReplyBytes), to: complete.replyTo)
        }
        return true
    }

    /// Refuses a whole batch: a `SubmitBatchReply` whose `rejected` says why; nothing was admitted.
    private nonisolated func refuse(batchTo replyTo: String, tenant: String, _ rejection: Rejection) {
        counters.rejected(tenant: tenant, reason: rejection.rejected.reason)
        var answer = Hangar_V1_SubmitBatchReply()
        answer.rejected = rejection.rejected
        publish(answer, to: replyTo)
    }

    private nonisolated func publish(_ reply: Hangar_V1_SubmitBatchReply, to replyTo: String) {
        guard let payload = try? reply.serializedData() else { return }
        publish(payload, to: replyTo)
    }

    private nonisolated func publish(_ payload: Data, to replyTo: String) {
        do {
            try nats.publish(replyTo, payload: payload)
        } catch {
            logger.warning("could not reply", metadata: ["nats.subject": "\(replyTo)", "error": "\(error)"])
        }
    }
}
