import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    nonisolated func handleNodeResult(_ message: NATSMessage) async {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init),
            let attemptResult = try? Hangar_V1_AttemptResult(serializedBytes: message.payload)
        else {
            logger.warning("ignored a malformed node result", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        guard let ack = await finish(attemptResult, from: nodeID) else { return }  // not stored: the node resends
        if let replyTo = message.replyTo, let payload = try? ack.serializedData() {
            try? nats.publish(replyTo, payload: payload)
        }
    }

    /// Stores the result of the current attempt and answers the tenant. A result of any other
    /// attempt (a node presumed dead, a cancelled job) is recorded in the audit and ignored. Returns
    /// nil if the result could not be stored (the node will send it again).
    func finish(_ report: Hangar_V1_AttemptResult, from nodeID: String) async -> Hangar_V1_ResultAck? {
        var ack = Hangar_V1_ResultAck()
        ack.jobID = report.jobID
        ack.attempt = report.attempt
        guard var entry = jobs[report.jobID], entry.attempt == report.attempt, entry.nodeID == nodeID else {
            if let stored = try? await store.job(id: report.jobID)?.result, stored.attempt == report.attempt,
                stored.nodeID == nodeID
            {
                return ack  // a resend of a result we already have
            }
            if let entry = jobs[report.jobID], entry.finishing, entry.attempt == report.attempt {
                return ack  // the same result is being stored right now
            }
            ack.stale = true
            logger.info(
                "stale result ignored",
                metadata: ["job.id": "\(report.jobID)", "attempt": "\(report.attempt)", "node.id": "\(nodeID)"]
            )
            try? await store.write(
                .staleResult(
                    jobID: report.jobID,
                    attempt: report.attempt,
                    nodeID: nodeID,
                    status: report.status.displayName
                )
            )
            return ack
        }
        if entry.finishing { return ack }
        entry.finishing = true
        jobs[report.jobID] = entry
        let result = makeResult(entry, report, nodeID: nodeID)
        do {
            try await store.write(.jobFinished(result))
        } catch {
            logger.error("could not store result", metadata: ["job.id": "\(report.jobID)", "error": "\(error)"])
            jobs[report.jobID]?.finishing = false
            return nil
        }
        if var current = jobs[report.jobID] {
            releaseAttempt(&current)
            complete(current, with: result)
        }
        pump()
        return ack
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

    /// Ends a job that never got (or lost) its node: REJECTED, LOST or CANCELLED, decided here.
    func finishWithoutNode(
        _ entry: JobEntry,
        status: Hangar_V1_JobStatus,
        message: String,
        rejected: Hangar_V1_Rejected? = nil
    ) {
        var entry = entry
        releaseAttempt(&entry)
        var result = baseResult(entry)
        result.status = status
        result.message = message
        if let rejected { result.rejected = rejected }
        complete(entry, with: result)
        let store = self.store
        let logger = self.logger
        Task {
            do {
                if status == .rejected {
                    try await store.write(.jobRejected(result))
                } else {
                    try await store.write(.jobFinished(result))
                }
            } catch {
                logger.error(
                    "could not store the end of a job",
                    metadata: ["job.id": "\(entry.id)", "error": "\(error)"]
                )
            }
        }
    }

    func finishRejected(_ entry: JobEntry, _ rejection: Rejection) {
        finishWithoutNode(entry, status: .rejected, message: rejection.rejected.message, rejected: rejection.rejected)
    }

    /// Forgets the finished job and delivers its result to every waiter and the result subject.
    func complete(_ entry: JobEntry, with result: Hangar_V1_Result) {
        jobs.removeValue(forKey: entry.id)
        counters.finished(
            tenant: entry.tenant,
            status: result.status,
            reason: result.rejected.reason,
            totalMs: result.timings.totalMs
        )
        if let key = entry.requestKey { byRequest.removeValue(forKey: key) }
        for waiter in entry.waiters {
            send(waiter, submitReply: .result(result))
        }
        if let payload = try? result.serializedData() {
            try? nats.publish(Subjects.result(tenant: entry.tenant, job: entry.id), payload: payload)
        }
        logger.debug(
            "finished",
            metadata: [
                "job.id": "\(entry.id)", "status": "\(result.status.displayName)", "node.id": "\(result.nodeID)",
            ]
        )
    }
}
