import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Whether the scheduler may answer `message` (sent on `tenant`'s subject) on its reply subject.
    /// A reply subject in another tenant's inbox (`_INBOX.t.<other>.…`, see `Principal.inboxPrefix`)
    /// would let one tenant push answers into another's inbox: such a request is dropped unanswered,
    /// logged and audited (`access.denied`). Other reply subjects (no authorization, custom clients)
    /// are answered as before.
    nonisolated func mayAnswer(_ message: NATSMessage, tenant: String) -> Bool {
        guard let replyTo = message.replyTo, replyTo.hasPrefix("_INBOX.t.") else { return true }
        if Subjects.token(replyTo, at: 2).map(String.init) == tenant { return true }
        logger.warning(
            "a tenant asked for replies in another tenant's inbox; dropped",
            metadata: ["tenant": "\(tenant)", "nats.subject": "\(message.subject)", "reply": "\(replyTo)"]
        )
        store.enqueue(
            .audit(
                actor: "tenant:\(tenant)",
                event: "access.denied",
                jobID: nil,
                detail: "reply subject \(replyTo.prefix(200)) is in another tenant's inbox (on \(message.subject))"
            ),
            onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
        )
        return false
    }
}
