import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    nonisolated func dispatch(
        _ assignment: Hangar_V1_Assignment,
        to nodeID: String,
        decidedAt: ContinuousClock.Instant,
        trace: TraceContext? = nil
    ) async {
        let jobID = assignment.jobID
        let attempt = assignment.attempt
        // The attempt's record was queued for the store when the core decided it (before the
        // assignment leaves, so it is applied before the attempt's result).
        do {
            let answer = try await control.request(
                Subjects.assign(node: nodeID),
                payload: try assignment.serializedData(),
                headers: trace.map { [TraceContext.header: $0.traceparent] } ?? [:],
                timeout: config.assignTimeout
            )
            let decoded = try Hangar_V1_AssignReply(serializedBytes: answer.payload)
            switch decoded.outcome {
            case .ack:
                await assigned(jobID: jobID, attempt: attempt, decidedAt: decidedAt)
            case .refused(let refused):
                if refused.reason == .staleTerm { deposed(refused.message) }
                await assignmentFailed(
                    jobID: jobID,
                    attempt: attempt,
                    nodeID: nodeID,
                    reason: "refused (\(refused.reason)): \(refused.message)"
                )
            case nil:
                await assignmentFailed(jobID: jobID, attempt: attempt, nodeID: nodeID, reason: "empty reply")
            }
        } catch {
            await assignmentFailed(jobID: jobID, attempt: attempt, nodeID: nodeID, reason: "\(error)")
        }
    }

    /// A node refused this scheduler's term: a newer scheduler leads. Tells ``SchedulerConfig/onDeposed``
    /// (once is enough: it stops the process).
    nonisolated func deposed(_ message: String) {
        logger.critical(
            "a node refused this scheduler's term: a newer scheduler leads",
            metadata: ["term": "\(config.term)", "node.message": "\(message)"]
        )
        config.onDeposed?(message)
    }

    func assigned(jobID: String, attempt: UInt32, decidedAt: ContinuousClock.Instant) {
        guard core.jobs.attempts(of: jobID) == attempt else { return }
        guard let index = jobs.index(forKey: jobID) else { return }
        let milliseconds = decidedAt.milliseconds(until: .now)
        jobs.values[index].placementMilliseconds = milliseconds
        counters.dispatched(milliseconds: milliseconds)
        handle(.assignAnswered(jobID: jobID, attempt: attempt, refusal: nil))
    }

    /// The node refused or did not answer: the core skips it until its next heartbeat and places
    /// the job again.
    func assignmentFailed(jobID: String, attempt: UInt32, nodeID: String, reason: String) {
        handle(.assignAnswered(jobID: jobID, attempt: attempt, refusal: reason))
    }
}
