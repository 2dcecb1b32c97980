import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// One batch from the `HANGAR_RESULTS` stream (each message one result or a node's batch of
    /// them): each result is fed to the core, and what it decides (the ends of jobs, late results
    /// audited) is stored in ONE transaction (group commit); then each message is acknowledged and
    /// the tenants answered. A message that is not an `AttemptResult` is audited and terminated.
    /// Returns at once, with a task that ends once the batch is committed and settled: false if it
    /// could not be stored (its messages come again).
    func storeResults(_ messages: [JetStreamMessage]) async -> Task<Bool, Never> {
        var writes: [StoreWrite]? = []  // never nil: the core's writes join it (see `perform`)
        var outcomes: [(JetStreamMessage, StreamOutcome)] = []
        var finished: [String] = []
        var events: [CoreEvent] = []
        for stream in messages {
            let message = stream.message
            guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init),
                let reports = Self.attemptResults(in: message)
            else {
                logger.warning("discarded a malformed node result", metadata: ["nats.subject": "\(message.subject)"])
                writes!.append(
                    .audit(
                        actor: "node:\(Subjects.token(message.subject, at: 2) ?? "?")",
                        event: "result.malformed",
                        jobID: nil,
                        detail:
                            "stream sequence \(stream.sequence): not a hangar.v1.AttemptResult or AttemptResultBatch (\(message.payload.count) bytes)"
                    )
                )
                outcomes.append((stream, .discard))
                continue
            }
            for report in reports {
                if !core.jobs.knows(report.jobID), !core.endedJobs.remembers(report.jobID),
                    let stored = try? await store.job(id: report.jobID)?.result, stored.attempt == report.attempt,
                    stored.nodeID == nodeID
                {
                    continue  // a resend of a result the store has (from before a restart)
                }
                // Kept while the core decides: if this report is the job's outcome, it is the result.
                reportsInFlight[ReportKey(jobID: report.jobID, attempt: report.attempt, nodeID: nodeID)] = report
                events.append(
                    .result(jobID: report.jobID, attempt: report.attempt, nodeID: nodeID, status: report.status)
                )
            }
            // Stored (or deliberately ignored) once the batch commits.
            outcomes.append((stream, .ack))
        }
        // One pass of the core for the whole batch; the ends it decides join the batch's writes.
        let actions = core.handle(events, now: .now)
        for case .log(.finished(let jobID, _)) in actions { finished.append(jobID) }
        perform(actions, into: &writes)
        reportsInFlight.removeAll(keepingCapacity: true)
        return commitStreamBatch(writes ?? [], outcomes) { [outcomes, finished] scheduler, error in
            scheduler.resultsCommitted(error: error, outcomes: outcomes, finished: finished)
        }
    }

    /// After the commit of a results batch: acknowledge its messages and tell the core its jobs'
    /// ends are stored (their waiters are answered then), or, if it failed, have its messages
    /// delivered again (the core writes the ends it decided again at its next tick).
    private func resultsCommitted(
        error: (any Error)?,
        outcomes: [(JetStreamMessage, StreamOutcome)],
        finished: [String]
    ) -> Bool {
        if let error {
            logger.error("could not store results", metadata: ["count": "\(finished.count)", "error": "\(error)"])
            handle(finished.map { .finishFailed(jobID: $0) })
            for (stream, outcome) in outcomes { settle(stream, outcome == .discard ? .discard : .retry) }
            return false
        }
        for (stream, outcome) in outcomes { settle(stream, outcome) }
        handle(finished.map { .finishCommitted(jobID: $0) })
        return true
    }

    /// The results one stream message carries: one `AttemptResult`, or an `AttemptResultBatch`
    /// (header `Hangar-Results: batch`); nil if the payload is neither.
    nonisolated static func attemptResults(in message: NATSMessage) -> [Hangar_V1_AttemptResult]? {
        if message.header(ResultBatch.header) == ResultBatch.value {
            return try? Hangar_V1_AttemptResultBatch(serializedBytes: message.payload).results
        }
        return (try? Hangar_V1_AttemptResult(serializedBytes: message.payload)).map { [$0] }
    }

    /// The job's result from the node's report of attempt `attempt`.
    static func makeResult(_ entry: JobEntry, _ report: Hangar_V1_AttemptResult, nodeID: String) -> Hangar_V1_Result {
        var result = baseResult(entry, attempt: report.attempt, nodeID: nodeID)
        result.status = report.status
        result.exitCode = report.exitCode
        result.signal = report.signal
        result.stdout = report.stdout
        result.stderr = report.stderr
        result.stdoutTruncated = report.stdoutTruncated
        result.stderrTruncated = report.stderrTruncated
        result.usage = report.usage
        result.message = report.message
        result.files = report.files
        result.timings.startMs = report.startMs
        result.timings.runMs = report.runMs
        return result
    }

    /// A result with the job's identity and timings filled in.
    static func baseResult(_ entry: JobEntry, attempt: UInt32, nodeID: String?) -> Hangar_V1_Result {
        var result = Hangar_V1_Result()
        result.jobID = entry.id
        result.tenant = entry.tenant
        result.requestID = entry.submission.requestID
        result.attempt = attempt
        result.nodeID = nodeID ?? ""
        let now = ContinuousClock.now
        result.timings.queuedMs = entry.acceptedAt.milliseconds(until: entry.placedAt ?? now)
        result.timings.placementMs = entry.placementMilliseconds
        result.timings.totalMs = entry.acceptedAt.milliseconds(until: now)
        result.finishedAtMs = unixMilliseconds()
        return result
    }

    /// Delivers the result of a finished job (forgotten already) to every waiter and the result
    /// subject. `encoded` is the result serialized, if it already was.
    func complete(_ entry: JobEntry, with result: Hangar_V1_Result, encoded: Data? = nil) {
        counters.finished(
            tenant: entry.tenant,
            status: result.status,
            reason: result.rejected.reason,
            totalMs: result.timings.totalMs
        )
        if let key = entry.requestKey { byRequest.removeValue(forKey: key) }
        if let payload = encoded ?? (try? result.serializedData()) {
            let reply = ProtobufFraming.message(field: ProtobufFraming.submitReplyResult, payload)
            for waiter in entry.waiters { send(waiter, encodedReply: reply) }
            // A waiter has it already: no hurry (see `notifications`).
            let connection = entry.waiters.isEmpty ? nats : notifications ?? nats
            try? connection.publish(
                Subjects.result(tenant: entry.tenant, job: entry.id),
                payload: ReplyFitting.fit(result: payload, limit: maxReplyBytes)
            )
        } else {
            // Cannot happen with proto3; the stored result stays readable with `hangar job status`.
            logger.error("could not encode a result to send", metadata: ["job.id": "\(entry.id)"])
        }
        logger.debug(
            "finished",
            metadata: [
                "job.id": "\(entry.id)", "status": "\(result.status.displayName)", "node.id": "\(result.nodeID)",
            ]
        )
    }
}
