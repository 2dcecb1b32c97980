/// The NATS subjects of protocol v1. The tenant and node tokens come from the subject, never from a
/// payload: NATS permissions decide who may publish where.
public enum Subjects {
    /// tenant → scheduler (request/reply): `SubmitRequest` → `SubmitReply`.
    public static func submit(tenant: String) -> String { "hangar.submit.\(tenant)" }
    /// Everything the scheduler listens to for submissions.
    public static let submitWildcard = "hangar.submit.*"
    /// scheduler → tenant: the final `Result` of an asynchronous job.
    public static func result(tenant: String, job: String) -> String { "hangar.result.\(tenant).\(job)" }
    /// tenant → scheduler (request/reply): `CancelRequest` → `CancelReply`.
    public static func cancel(tenant: String) -> String { "hangar.cancel.\(tenant)" }
    public static let cancelWildcard = "hangar.cancel.*"
    /// scheduler → node: `CancelAttempt` (kill that sandbox).
    public static func nodeCancel(node: String) -> String { "hangar.node.\(node).cancel" }
    /// scheduler → node (request/reply): `Assignment` → `AssignReply`.
    public static func assign(node: String) -> String { "hangar.node.\(node).assign" }
    /// node → scheduler: `NodeHeartbeat` every second.
    public static func heartbeat(node: String) -> String { "hangar.node.\(node).heartbeat" }
    public static let heartbeatWildcard = "hangar.node.*.heartbeat"
    /// node → scheduler through the `HANGAR_RESULTS` stream: `AttemptResult` (JetStream publish; the
    /// PubAck is the delivery receipt; message id `<job>/<attempt>`).
    public static func nodeResult(node: String) -> String { "hangar.node.\(node).result" }
    public static let nodeResultWildcard = "hangar.node.*.result"
    /// node → tenant: chunks of a running job's output (`stream` and `offset` headers), for
    /// `hangar job logs -f`; best effort, the Result holds the whole capped output.
    public static func logs(tenant: String, job: String) -> String { "hangar.logs.\(tenant).\(job)" }
    /// operator → scheduler (request/reply).
    public static func admin(_ verb: String) -> String { "hangar.admin.\(verb)" }
    /// tenant → scheduler (request/reply): `JobRequest` → `JobReply` for one of the tenant's own jobs.
    public static func job(tenant: String) -> String { "hangar.job.\(tenant)" }
    public static let jobWildcard = "hangar.job.*"

    /// tenant → scheduler (request/reply): a stateful sandbox's control verb (`create`, `get`,
    /// `list`, `timeout`, `kill`, `events`; see `SandboxVerb`), answered in the scheduler's queue group.
    public static func sandbox(tenant: String, verb: String) -> String { "hangar.sandbox.\(tenant).\(verb)" }
    /// Every tenant's sandbox control verbs.
    public static let sandboxWildcard = "hangar.sandbox.*.*"
    /// An E2B gateway asks the scheduler which tenant an API key belongs to
    /// (`Hangar_V1_APIKeyLookupRequest`); only gateways may publish here.
    public static let gatewayAPIKey = "hangar.gateway.apikey"
    /// Every scheduler run with a leader lease (leader, standby or suspended) announces itself here
    /// every 2 s (a `SchedulerStatus`); the leader lists those it has heard in `hangar cluster status`.
    public static let schedulerPresence = "hangar.scheduler.presence"
    /// scheduler → tenant (and the `HANGAR_SANDBOX_EVENTS` stream): the sandbox's lifecycle events.
    public static func sandboxEvents(tenant: String, sandbox: String) -> String {
        "hangar.sbxevents.\(tenant).\(sandbox)"
    }
    /// What the sandbox events stream captures.
    public static let sandboxEventsWildcard = "hangar.sbxevents.>"
    /// scheduler → node (request/reply): `SandboxStart` → `SandboxStartReply`.
    public static func sandboxStart(node: String) -> String { "hangar.node.\(node).sandbox.start" }
    /// scheduler → node: `SandboxKill` (no answer).
    public static func sandboxKill(node: String) -> String { "hangar.node.\(node).sandbox.kill" }
    /// scheduler → node: `SandboxSetTimeout` (its timeout was set again; no answer).
    public static func sandboxTimeout(node: String) -> String { "hangar.node.\(node).sandbox.timeout" }
    /// node → scheduler: `SandboxDied`, a sandbox the node held stopped on its own.
    public static func sandboxDied(node: String) -> String { "hangar.node.\(node).sandbox.died" }
    /// Every node's sandbox deaths (the scheduler's subscription).
    public static let sandboxDiedWildcard = "hangar.node.*.sandbox.died"
    /// Where node `node` reports each command and code cell run in its sandboxes, for the audit trail.
    public static func sandboxAudit(node: String) -> String { "hangar.node.\(node).sandbox.audit" }
    /// Every node's sandbox audit reports (the scheduler's subscription).
    public static let sandboxAuditWildcard = "hangar.node.*.sandbox.audit"

    /// tenant → node (the data plane): a verb of one of the tenant's stateful sandboxes, straight to
    /// the node that holds it (`exec`, answered with a stream of `SandboxExecEvent`; `files.read`,
    /// `files.write`, `files.list`, `files.stat`, `files.mkdir`, `files.remove`, `files.rename`,
    /// `signal`, `ps`: `SandboxOpRequest` → `SandboxOpReply`).
    public static func sandboxData(node: String, tenant: String, sandbox: String, verb: String) -> String {
        "hangar.sbx.\(node).\(tenant).\(sandbox).\(verb)"
    }
    /// Every data-plane request for `node`'s sandboxes (the node's subscription).
    public static func sandboxDataWildcard(node: String) -> String { "hangar.sbx.\(node).*.*.>" }
    /// Every data-plane request of `tenant`, on any node (the tenant's publish permission).
    public static func sandboxDataOfTenant(_ tenant: String) -> String { "hangar.sbx.*.\(tenant).>" }

    /// The queue group all scheduler instances share, so each message reaches one of them.
    public static let schedulerQueueGroup = "hangar-scheduler"

    /// The `index`-th dot-separated token of `subject`, if present.
    public static func token(_ subject: String, at index: Int) -> Substring? {
        // Split on the byte ".", as NATS does (String.split would treat "." plus a combining mark as one
        // Character and merge tokens).
        guard index >= 0 else { return nil }
        let tokens = subject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        return index < tokens.count ? Substring(tokens[index]) : nil
    }

    /// Whether `name` may be a tenant or node token: 1–64 characters of `[A-Za-z0-9_-]`.
    public static func isValidToken(_ name: some StringProtocol) -> Bool {
        guard (1...64).contains(name.utf8.count) else { return false }
        return name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == 0x2D || byte == 0x5F
        }
    }
}
