import Foundation
import HangarShared

extension Scheduler {
    /// Audits a job's grants as decided at admission: `grant.granted` with what was asked and what
    /// the job got (the tenant's denies added, network grants as the network policy that enforces
    /// them).
    func auditGrantGranted(
        _ request: Hangar_V1_SubmitRequest,
        _ spec: Hangar_V1_JobSpec,
        tenant: String,
        jobID: String
    ) {
        let detail =
            "asked: \(Self.describe(request.grants, alias: request.network.allow)); "
            + "granted: \(Self.describe(spec.grants, alias: spec.network.allow))"
        enqueueAudit(actor: "tenant:\(tenant)", event: "grant.granted", jobID: jobID, detail: detail)
    }

    /// Audits a submission refused because of its grants (`grant.denied`, with the grant named).
    func auditGrantDenied(_ request: Hangar_V1_SubmitRequest, tenant: String, rejection: Rejection) {
        let field = rejection.rejected.field
        guard field.hasPrefix("grants") || field.hasPrefix("network.allow") else { return }
        let detail =
            "asked: \(Self.describe(request.grants, alias: request.network.allow)); "
            + "\(rejection.rejected.reason) \(field): \(rejection.rejected.message)"
        enqueueAudit(actor: "tenant:\(tenant)", event: "grant.denied", jobID: nil, detail: detail)
    }

    /// Queues one audit row for the group commit (a failure is logged: nothing waits for it).
    func enqueueAudit(actor: String, event: String, jobID: String?, detail: String) {
        let logger = self.logger
        store.enqueue(.audit(actor: actor, event: event, jobID: jobID, detail: String(detail.prefix(4000)))) { error in
            logger.error("could not audit", metadata: ["event": "\(event)", "error": "\(error)"])
        }
    }

    /// `allow_read=/a,/b allow_net=… network.allow=…`, the lists that are not empty.
    static func describe(_ grants: Hangar_V1_Grants, alias: [String]) -> String {
        let lists: [(String, [String])] = [
            ("allow_read", grants.allowRead), ("allow_write", grants.allowWrite), ("allow_net", grants.allowNet),
            ("deny_read", grants.denyRead), ("deny_write", grants.denyWrite), ("deny_net", grants.denyNet),
            ("network.allow", alias),
        ]
        let text = lists.filter { !$0.1.isEmpty }.map { "\($0.0)=\($0.1.joined(separator: ","))" }
        return text.isEmpty ? "nothing" : text.joined(separator: " ")
    }
}
