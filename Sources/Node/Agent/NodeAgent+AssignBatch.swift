import HangarNATS
import HangarShared

extension NodeAgent {
    /// Several assignments in one request (header `Hangar-Assign: batch`): each is admitted or
    /// refused on its own, in order, and the reply carries one `AssignReply` per assignment. A payload
    /// that is not an `AssignmentBatch` gets an empty reply, which the scheduler counts as refusing all.
    func handleAssignmentBatch(_ message: NATSMessage) {
        var reply = Hangar_V1_AssignBatchReply()
        if var assignments = (try? Hangar_V1_AssignmentBatch(serializedBytes: message.payload))?.assignments {
            reply.replies.reserveCapacity(assignments.count)
            for index in assignments.indices {
                // Taken out of the array, so that admit() owns the only reference and resolves its
                // limits in place instead of copying the message.
                var assignment = Hangar_V1_Assignment()
                swap(&assignment, &assignments[index])
                let traceparent = assignment.traceparent
                reply.replies.append(assignReply(admit(assignment), traceparent: traceparent))
            }
        } else {
            logger.warning("ignored a malformed assignment batch")
        }
        if let payload = try? reply.serializedData() {
            try? nats.reply(to: message, payload: payload)
        }
    }
}
