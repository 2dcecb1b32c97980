import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// `hangar.cancel.<tenant>`: a tenant stops its own queued or running job.
    func handleCancel(_ message: NATSMessage) async {
        let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
        guard mayAnswer(message, tenant: tenant) else { return }
        var reply = Hangar_V1_CancelReply()
        if let request = try? Hangar_V1_CancelRequest(serializedBytes: message.payload) {
            reply = await cancel(jobID: request.jobID, tenant: tenant)
        } else {
            reply.message = "the payload is not a hangar.v1.CancelRequest"
        }
        if let replyTo = message.replyTo, let payload = try? reply.serializedData() {
            try? nats.publish(replyTo, payload: payload)
        }
    }

    func cancel(jobID: String, tenant: String) async -> Hangar_V1_CancelReply {
        var reply = Hangar_V1_CancelReply()
        if let entry = jobs[jobID], entry.tenant == tenant, let job = core.jobs[jobID] {
            if case .finishing(let outcome, _, _) = job.phase {
                reply.status = outcome.status
                reply.message = "job \(jobID) already finished as \(outcome.status.displayName)"
                return reply
            }
            // Not yet committed (still on its way from the intake stream to SQLite): the core ends
            // it CANCELLED once it is.
            let committed = core.jobs.isCommitted(jobID)
            handle(.cancel(jobID: jobID, reason: "cancelled by tenant \(tenant)"))
            if committed {
                try? await store.write(.audit(actor: "tenant:\(tenant)", event: "job.cancel", jobID: jobID, detail: ""))
            }
            reply.cancelled = true
            reply.status = .cancelled
            reply.message = "job \(jobID) cancelled"
            return reply
        }
        // Not in flight: finished, someone else's, or unknown. Never reveal another tenant's job.
        if let lookup = try? await store.job(id: jobID), lookup.tenant == tenant {
            reply.status = lookup.result?.status ?? .unspecified
            reply.message = "job \(jobID) already finished as \(lookup.status)"
        } else {
            reply.message = "tenant '\(tenant)' has no job '\(jobID)'"
        }
        return reply
    }
}
