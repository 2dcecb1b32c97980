import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// `hangar.job.<tenant>`: a tenant looks up one of its own jobs. The tenant is the subject's
    /// token (NATS permissions let a tenant publish only on its own); another tenant's job is
    /// answered exactly like an unknown one, and the attempt is logged and audited.
    nonisolated func handleTenantJob(_ message: NATSMessage) async {
        let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
        guard mayAnswer(message, tenant: tenant) else { return }
        var reply = Hangar_V1_JobReply()
        if let request = try? Hangar_V1_JobRequest(serializedBytes: message.payload) {
            reply = await tenantJobReply(request.jobID, tenant: tenant)
        } else {
            reply.error = "the payload is not a hangar.v1.JobRequest"
        }
        if let replyTo = message.replyTo, let payload = try? reply.serializedData() {
            try? nats.publish(replyTo, payload: payload)
        }
    }

    func tenantJobReply(_ id: String, tenant: String) async -> Hangar_V1_JobReply {
        let reply = await jobReply(id)
        if case .error(let message) = reply.outcome, reply.tenant.isEmpty {
            var unknown = Hangar_V1_JobReply()
            unknown.error = message.hasPrefix("no job") ? "tenant '\(tenant)' has no job '\(id)'" : message
            return unknown
        }
        guard reply.tenant == tenant else {
            logger.warning(
                "a tenant asked for another tenant's job",
                metadata: ["tenant": "\(tenant)", "job.id": "\(id)", "owner": "\(reply.tenant)"]
            )
            store.enqueue(
                .audit(
                    actor: "tenant:\(tenant)",
                    event: "access.denied",
                    jobID: id,
                    detail: "job lookup of another tenant's job"
                ),
                onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
            )
            var unknown = Hangar_V1_JobReply()
            unknown.error = "tenant '\(tenant)' has no job '\(id)'"
            return unknown
        }
        return reply
    }
}
