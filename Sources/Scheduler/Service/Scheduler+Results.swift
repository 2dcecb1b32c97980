import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// One batch from the `HANGAR_RESULTS` stream (each message one result or a node's batch of
    /// them): every result of a current attempt is stored, and
    /// stale ones audited, in ONE transaction (group commit); then each message is acknowledged and
    /// the tenants answered. A message that is not an `AttemptResult` is audited and terminated. A
    /// result of any other attempt (a node presumed dead, a cancelled job) is audited and ignored.
    /// Returns at once, with a task that ends once the batch is committed and settled: false if it
    /// could not be stored (its messages come again).
    func storeResults(_ messages: [JetStreamMessage]) async -> Task<Bool, Never> {
        var writes: [StoreWrite] = []
        var outcomes: [(JetStreamMessage, StreamOutcome)] = []
        var finished: [(jobID: String, result: Hangar_V1_Result, encoded: Data)] = []
        var inBatch: Set<String> = []
        for stream in messages {
            let message = stream.message
            guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init),
                let reports = Self.attemptResults(in: message)
            else {
                logger.warning("discarded a malformed node result", metadata: ["nats.subject": "\(message.subject)"])
                writes.append(
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
            var unencodable = false
            for report in reports {
                let key = "\(report.jobID)/\(report.attempt)"
                if let entry = jobs[report.jobID], entry.attempt == report.attempt, entry.nodeID == nodeID {
                    if entry.finishing || inBatch.contains(key) {
                        continue  // the same result, already being stored
                    }
                    let result = makeResult(entry, report, nodeID: nodeID)
                    // Encoded once: stored, published and put in the replies as these bytes.
                    guard let encoded = try? result.serializedData() else {
                        // Cannot happen with proto3; if it did, the message comes again rather
                        // than being acknowledged without its result.
                        logger.error("could not encode a result", metadata: ["job.id": "\(report.jobID)"])
                        unencodable = true
                        continue
                    }
                    jobs[report.jobID]?.finishing = true
                    inBatch.insert(key)
                    writes.append(.jobFinished(result, encoded: encoded))
                    finished.append((report.jobID, result, encoded))
                    continue
                }
                if var entry = jobs[report.jobID], entry.nodeID == nil, entry.lostOn == nodeID,
                    entry.attempt == report.attempt, !entry.finishing, !inBatch.contains(key),
                    let encoded = try? makeResult(entry, report, nodeID: nodeID).serializedData()
                {
                    // Declared LOST (its node went silent), but no later attempt was sent: the
                    // result is the job's outcome, and the pending retry is called off.
                    logger.notice(
                        "result of a lost attempt accepted: no later attempt was sent",
                        metadata: ["job.id": "\(report.jobID)", "attempt": "\(report.attempt)", "node.id": "\(nodeID)"]
                    )
                    delayed.removeAll { $0.jobID == report.jobID }
                    queue.remove(tenant: entry.tenant, jobID: entry.id)
                    entry.finishing = true  // nothing to release: the loss gave its reservation back
                    jobs[report.jobID] = entry
                    inBatch.insert(key)
                    let result = makeResult(entry, report, nodeID: nodeID)
                    writes.append(.jobFinished(result, encoded: encoded))
                    finished.append((report.jobID, result, encoded))
                    continue
                }
                if let stored = try? await store.job(id: report.jobID)?.result, stored.attempt == report.attempt,
                    stored.nodeID == nodeID
                {
                    continue  // a resend of a result we already have
                }
                logger.info(
                    "late result ignored: a later attempt was sent, or the job has ended",
                    metadata: ["job.id": "\(report.jobID)", "attempt": "\(report.attempt)", "node.id": "\(nodeID)"]
                )
                writes.append(
                    .staleResult(
                        jobID: report.jobID,
                        attempt: report.attempt,
                        nodeID: nodeID,
                        status: report.status.displayName
                    )
                )
            }
            // Stored (or deliberately ignored) once the batch commits.
            outcomes.append((stream, unencodable ? .retry : .ack))
        }
        return commitStreamBatch(writes, outcomes) { [outcomes, finished] scheduler, error in
            scheduler.resultsCommitted(error: error, outcomes: outcomes, finished: finished)
        }
    }

    /// After the commit of a results batch: acknowledge its messages and answer the tenants, or, if
    /// it failed, have its messages delivered again.
    private func resultsCommitted(
        error: (any Error)?,
        outcomes: [(JetStreamMessage, StreamOutcome)],
        finished: [(jobID: String, result: Hangar_V1_Result, encoded: Data)]
    ) -> Bool {
        if let error {
            logger.error("could not store results", metadata: ["count": "\(finished.count)", "error": "\(error)"])
            for (jobID, _, _) in finished { jobs[jobID]?.finishing = false }
            for (stream, outcome) in outcomes { settle(stream, outcome == .discard ? .discard : .retry) }
            return false
        }
        for (stream, outcome) in outcomes { settle(stream, outcome) }
        for (jobID, result, encoded) in finished {
            if var current = jobs[jobID] {
                releaseAttempt(&current)
                complete(current, with: result, encoded: encoded)
            }
        }
        pump()
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

    private func makeResult(_ entry: JobEntry, _ report: Hangar_V1_AttemptResult, nodeID: String) -> Hangar_V1_Result {
        var result = baseResult(entry)
        result.status = report.status
        result.exitCode = report.exitCode
        result.signal = report.signal
        result.stdout = report.stdout
        result.stderr = report.stderr
        result.stdoutTruncated = report.stdoutTruncated
        result.stderrTruncated = report.stderrTruncated
        result.usage = report.usage
        result.nodeID = nodeID
        result.message = report.message
        result.files = report.files
        result.timings.startMs = report.startMs
        result.timings.runMs = report.runMs
        return result
    }

    /// A result with the job's identity and timings filled in.
    func baseResult(_ entry: JobEntry) -> Hangar_V1_Result {
        var result = Hangar_V1_Result()
        result.jobID = entry.id
        result.tenant = entry.tenant
        result.requestID = entry.submission.requestID
        result.attempt = entry.attempt
        result.nodeID = entry.nodeID ?? ""
        let now = ContinuousClock.now
        result.timings.queuedMs = entry.acceptedAt.milliseconds(until: entry.placedAt ?? now)
        result.timings.placementMs = entry.placementMilliseconds
        result.timings.totalMs = entry.acceptedAt.milliseconds(until: now)
        result.finishedAtMs = unixMilliseconds()
        return result
    }

    /// Ends a job that never got (or lost) its node: LOST, CANCELLED, EXPIRED or ERROR, decided here.
    /// (An accepted job never ends REJECTED: that is only ever an answer to a submission.)
    func finishWithoutNode(_ entry: JobEntry, status: Hangar_V1_JobStatus, message: String) {
        var entry = entry
        releaseAttempt(&entry)
        var result = baseResult(entry)
        result.status = status
        result.message = message
        complete(entry, with: result)
        let store = self.store
        let logger = self.logger
        Task {
            do {
                try await store.write(.jobFinished(result, encoded: try result.serializedData()))
            } catch {
                logger.error(
                    "could not store the end of a job",
                    metadata: ["job.id": "\(entry.id)", "error": "\(error)"]
                )
            }
        }
    }

    /// Forgets the finished job and delivers its result to every waiter and the result subject.
    /// `encoded` is the result serialized, if it already was.
    func complete(_ entry: JobEntry, with result: Hangar_V1_Result, encoded: Data? = nil) {
        forget(entry.id)
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
