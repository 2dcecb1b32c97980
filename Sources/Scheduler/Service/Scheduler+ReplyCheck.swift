import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Whether the scheduler may answer `message` (sent on `tenant`'s subject) on its reply subject,
    /// by `replyRule`: only the tenant's own inbox (`_INBOX.t.<tenant>.`) when authorization is on.
    /// Anything else (another tenant's inbox or results, the intake stream) is dropped unanswered,
    /// logged and audited (`access.denied`). A message without a reply subject needs no answer.
    nonisolated func mayAnswer(_ message: NATSMessage, tenant: String) -> Bool {
        mayAnswer(message, principal: .tenant(tenant), actor: "tenant:\(tenant)")
    }

    /// The same rule for `hangar.admin.*`: answers go only to an operator's inbox.
    nonisolated func mayAnswerOperator(_ message: NATSMessage) -> Bool {
        mayAnswer(message, principal: .operator("any"), actor: "operator")
    }

    private nonisolated func mayAnswer(_ message: NATSMessage, principal: Principal, actor: String) -> Bool {
        guard let replyTo = message.replyTo, let refusal = replyRule.refusal(replyTo: replyTo, principal: principal)
        else { return true }
        logger.warning(
            "a request asked for its answer outside the requester's own inbox; dropped",
            metadata: ["actor": "\(actor)", "nats.subject": "\(message.subject)", "reply": "\(replyTo.prefix(200))"]
        )
        store.enqueue(
            .audit(
                actor: actor,
                event: "access.denied",
                jobID: nil,
                detail: "\(refusal) (on \(message.subject))"
            ),
            onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
        )
        return false
    }
}
