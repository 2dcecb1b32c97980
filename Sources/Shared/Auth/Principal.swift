/// Who connects to NATS, and what the server lets them do. Tenant isolation is enforced by the
/// server: a tenant's user may publish only on its own submit, cancel, job and sandbox subjects and
/// subscribe only to its own results, logs, sandbox events and its own inbox prefix; a node only to
/// its own assignments, cancels and sandbox starts and kills.
public enum Principal: Sendable, Hashable, CustomStringConvertible {
    /// A tenant submitting jobs.
    case tenant(String)
    /// A node agent.
    case node(String)
    /// The scheduler (every scheduler instance shares this user).
    case scheduler
    /// An operator (admin commands, any tenant's job lookup).
    case `operator`(String)
    /// An E2B-compatible HTTP gateway (`hangar gateway`): acts for any tenant on the sandbox control
    /// and data-plane subjects (the tenant is a token of every subject it uses, so the scheduler and
    /// nodes check it against the sandbox as for the tenant itself), and looks up API keys.
    case gateway(String)
    /// The scheduler's second login, in nats-server's system account: it hears the server's
    /// authentication failures (`$SYS.SERVER.*.CLIENT.AUTH.ERR`) and audits them.
    case system

    /// The role names accepted by `hangar tenant add --role`.
    public static let roles = ["tenant", "node", "scheduler", "operator", "system", "gateway"]

    /// Makes a principal from a role name and a name; nil if either is invalid.
    public init?(role: String, name: String) {
        guard Subjects.isValidToken(name) else { return nil }
        switch role {
        case "tenant": self = .tenant(name)
        case "node": self = .node(name)
        case "scheduler": self = .scheduler
        case "operator": self = .operator(name)
        case "system": self = .system
        case "gateway": self = .gateway(name)
        default: return nil
        }
    }

    /// `tenant`, `node`, `scheduler`, `operator` or `system`.
    public var role: String {
        switch self {
        case .tenant: "tenant"
        case .node: "node"
        case .scheduler: "scheduler"
        case .operator: "operator"
        case .system: "system"
        case .gateway: "gateway"
        }
    }

    /// The tenant, node or operator name (`scheduler` and `system` for those).
    public var name: String {
        switch self {
        case .tenant(let name), .node(let name), .operator(let name), .gateway(let name): name
        case .scheduler: "scheduler"
        case .system: "system"
        }
    }

    /// The NATS user name.
    public var user: String {
        switch self {
        case .scheduler: "scheduler"
        case .system: "system"
        default: "\(role)-\(name)"
        }
    }

    public var description: String { user }

    /// The first tokens of this principal's reply subjects. The one-letter second token keeps the
    /// prefixes of different roles apart (a tenant and a node may share a name) and away from
    /// libnats' default `_INBOX.<22-character nuid>`.
    public var inboxPrefix: String {
        switch self {
        case .tenant(let name): "_INBOX.t.\(name)"
        case .node(let name): "_INBOX.n.\(name)"
        case .scheduler: "_INBOX.s"
        case .operator(let name): "_INBOX.o.\(name)"
        case .system: "_INBOX.y"
        case .gateway(let name): "_INBOX.g.\(name)"
        }
    }

    /// The gateway whose inbox `replySubject` is (`_INBOX.g.<name>.…`), if it is one: the gateway that
    /// sent a request for a tenant, for the audit trail.
    public static func gatewayName(ofReplySubject replySubject: String?) -> String? {
        guard let replySubject, replySubject.hasPrefix("_INBOX.g."),
            let name = Subjects.token(replySubject, at: 2), Subjects.isValidToken(name)
        else { return nil }
        return String(name)
    }

    /// The subjects this principal may publish on and subscribe to.
    public var permissions: Permissions {
        switch self {
        case .tenant(let tenant):
            Permissions(
                // Stateful sandboxes: its own control verbs, and its own sandboxes' live events (their
                // replay goes through the scheduler's `events` verb: the JetStream API cannot be
                // confined to one tenant's subjects of a shared stream).
                // The data plane: its own sandboxes' verbs, straight to any node (the node answers only for
                // a sandbox it holds for this tenant).
                publish: [
                    Subjects.submit(tenant: tenant), Subjects.cancel(tenant: tenant), Subjects.job(tenant: tenant),
                    "hangar.sandbox.\(tenant).*", Subjects.sandboxDataOfTenant(tenant),
                ],
                subscribe: [
                    "hangar.result.\(tenant).>", "hangar.logs.\(tenant).>", "hangar.sbxevents.\(tenant).>",
                    inboxPrefix + ".>",
                ]
            )
        case .node(let node):
            // Replies to the scheduler's assignments: only to requests the node received
            // (`allow_responses`), so a node cannot answer for another node.
            Permissions(
                // Output chunks of the jobs it runs, for `job logs -f` (a node runs the tenant's code and
                // holds its output anyway).
                // Its own sandboxes: told to start (request/reply) and kill them, reports their deaths.
                // Their data plane: tenants' requests for this node, answered into tenants' inboxes.
                // An exec answers with a stream of messages, which `allow_responses` (one reply per
                // request) does not allow; the node checks each reply subject is the requesting
                // tenant's own inbox (ReplySubjectRule), as the scheduler does, and it runs and holds
                // the tenants' code and output anyway (as with hangar.logs.>).
                publish: [
                    Subjects.heartbeat(node: node), Subjects.nodeResult(node: node), "hangar.logs.>",
                    Subjects.sandboxDied(node: node), Subjects.sandboxAudit(node: node), "_INBOX.t.>", "_INBOX.g.>",
                ],
                subscribe: [
                    Subjects.assign(node: node), Subjects.nodeCancel(node: node), Subjects.sandboxStart(node: node),
                    Subjects.sandboxKill(node: node), Subjects.sandboxTimeout(node: node),
                    Subjects.sandboxDataWildcard(node: node), inboxPrefix + ".>",
                ],
                allowResponses: true
            )
        case .scheduler:
            // Results reach it through the HANGAR_RESULTS stream (a pull consumer), not a subscription.
            Permissions(
                publish: [
                    "hangar.result.>", "hangar.node.*.assign", "hangar.node.*.cancel",
                    "hangar.node.*.sandbox.start", "hangar.node.*.sandbox.kill", "hangar.node.*.sandbox.timeout",
                    Subjects.sandboxEventsWildcard,
                    // Answers only into tenants', operators' and gateways' inboxes (see ReplySubjectRule).
                    "_INBOX.t.>", "_INBOX.o.>", "_INBOX.g.>",
                    Subjects.intakeWildcard, Subjects.schedulerPresence, Subjects.storeLog,
                ] + Self.schedulerJetStreamAPI,
                subscribe: [
                    Subjects.submitWildcard, Subjects.cancelWildcard, Subjects.jobWildcard,
                    Subjects.heartbeatWildcard, "hangar.admin.>", inboxPrefix + ".>",
                    Subjects.sandboxWildcard, Subjects.sandboxDiedWildcard, Subjects.sandboxAuditWildcard,
                    Subjects.gatewayAPIKey, Subjects.schedulerPresence,
                ]
            )
        case .operator:
            Permissions(
                // Job lookups go through hangar.admin.job; hangar.job.<tenant> answers only that
                // tenant's own inbox (see ReplySubjectRule).
                publish: ["hangar.admin.>"],
                subscribe: ["hangar.logs.>", inboxPrefix + ".>"]
            )
        case .gateway:
            // Any tenant's sandbox control verbs and data plane (never jobs, nodes or admin), the
            // scheduler's API-key lookup, and answers in its own inbox only; sandboxes' live lifecycle
            // events, which the client library watches while a command or cell streams (so a stream
            // ends when its sandbox does).
            Permissions(
                publish: [Subjects.sandboxWildcard, "hangar.sbx.*.*.>", Subjects.gatewayAPIKey],
                subscribe: [inboxPrefix + ".>", Subjects.sandboxEventsWildcard]
            )
        case .system:
            // Lives in the system account, which none of the others can reach: reads server events only.
            Permissions(publish: [], subscribe: ["$SYS.SERVER.*.CLIENT.AUTH.ERR"])
        }
    }

    /// The JetStream API calls the scheduler makes, on its own streams only: create or update them,
    /// bind its durable pull consumers, pull batches, acknowledge, and read one message back (the
    /// original of a de-duplicated submission); and the leader lease's key-value bucket: create or
    /// bind it, read its key, write it (a publish on `$KV.<bucket>.>`).
    public static var schedulerJetStreamAPI: [String] {
        let lease = "KV_\(Streams.schedulerBucket)"
        return ["$JS.API.INFO"]
            + [
                "$JS.API.STREAM.CREATE.\(lease)", "$JS.API.STREAM.UPDATE.\(lease)", "$JS.API.STREAM.INFO.\(lease)",
                "$JS.API.STREAM.MSG.GET.\(lease)", "$JS.API.DIRECT.GET.\(lease)", "$JS.API.DIRECT.GET.\(lease).>",
                "$KV.\(Streams.schedulerBucket).>",
            ]
            + Streams.all.flatMap { stream in
                [
                    "$JS.API.STREAM.CREATE.\(stream)", "$JS.API.STREAM.UPDATE.\(stream)",
                    "$JS.API.STREAM.INFO.\(stream)", "$JS.API.STREAM.MSG.GET.\(stream)",
                    "$JS.API.CONSUMER.CREATE.\(stream)", "$JS.API.CONSUMER.CREATE.\(stream).>",
                    "$JS.API.CONSUMER.DURABLE.CREATE.\(stream).\(Streams.consumer)",
                    "$JS.API.CONSUMER.INFO.\(stream).\(Streams.consumer)",
                    "$JS.API.CONSUMER.MSG.NEXT.\(stream).\(Streams.consumer)", "$JS.ACK.\(stream).>",
                ]
            }
    }

    /// Publish and subscribe allow-lists (everything else is denied).
    public struct Permissions: Sendable, Hashable {
        /// Subjects (wildcards allowed) this principal may publish on.
        public var publish: [String]
        /// Subjects (wildcards allowed) this principal may subscribe to.
        public var subscribe: [String]
        /// May answer requests it received, whatever their reply subject.
        public var allowResponses = false
    }
}
