/// Where a responder (the scheduler, or any later service that answers requests) may send its answer.
///
/// A request's reply subject is chosen by the requester, and the responder publishes with its own,
/// much wider rights: answering wherever it is told would let one principal make the responder
/// write into another tenant's inbox, results subject or intake stream (a confused deputy). So an
/// answer goes only to the requesting principal's own inbox prefix (`Principal.inboxPrefix`), and
/// everything else is dropped by the caller and audited as `access.denied`.
public struct ReplySubjectRule: Sendable, Equatable {
    /// True when the cluster runs Hangar's authorization (every principal has its own inbox prefix);
    /// then a reply must start with the requester's `inboxPrefix` + ".". Without authorization nobody
    /// has an identity, so any `_INBOX.` subject outside another tenant's inbox prefix is allowed.
    public var ownInboxOnly: Bool

    /// A rule; `ownInboxOnly` as above.
    public init(ownInboxOnly: Bool) {
        self.ownInboxOnly = ownInboxOnly
    }

    /// Nil if `replyTo` may be answered for `principal`, else why not (for the log and the audit).
    /// For operators, any operator's inbox is accepted: admin subjects do not name the operator.
    public func refusal(replyTo: String, principal: Principal) -> String? {
        let own: String
        switch principal {
        case .operator: own = "_INBOX.o."
        default: own = principal.inboxPrefix + "."
        }
        if replyTo.hasPrefix(own) && replyTo.utf8.count > own.utf8.count { return nil }
        // A gateway (`Principal.gateway`) acts for tenants: answers to a tenant's request may go to
        // a gateway's inbox, which only gateways can subscribe to.
        if case .tenant = principal, replyTo.hasPrefix("_INBOX.g."), replyTo.utf8.count > 9 { return nil }
        if ownInboxOnly {
            return "reply subject \(replyTo.prefix(200)) is not in \(principal.user)'s own inbox (\(own)>)"
        }
        guard replyTo.hasPrefix("_INBOX.") else {
            return "reply subject \(replyTo.prefix(200)) is not an inbox (_INBOX.>)"
        }
        if replyTo.hasPrefix("_INBOX.t.") {
            return "reply subject \(replyTo.prefix(200)) is in another tenant's inbox"
        }
        return nil
    }
}
