import HangarNATS
import HangarShared

extension NodeAgent {
    /// Several assignments in one request (header `Hangar-Assign: batch`): each is admitted or
    /// refused on its own, in order, and the reply carries one `AssignReply` per assignment. A payload
    /// that is not an `AssignmentBatch` gets an empty reply, which the scheduler counts as refusing all.
    func handleAssignmentBatch(_ message: NATSMessage) {
        var reply = Hangar_V1_AssignBatchReply()
        if let batch = try? Hangar_V1_AssignmentBatch(serializedBytes: message.payload) {
            reply.replies = batch.assignments.map { assignment in
                assignReply(admit(assignment), traceparent: assignment.traceparent)
            }
        } else {
            logger.warning("ignored a malformed assignment batch")
        }
        if let payload = try? reply.serializedData() {
            try? nats.reply(to: message, payload: payload)
        }
    }
}
