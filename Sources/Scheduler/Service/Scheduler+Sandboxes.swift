import Foundation
import HangarNATS
import HangarShared

/// What the shell keeps of one live stateful sandbox (the core keeps its phase; see ``CoreSandbox``).
struct SandboxEntry: Sendable {
    /// What the store has of it (as far as this process wrote it).
    var stored: StoredSandbox
    /// Create requests answered once it runs or has failed (the original and repeats of its request id).
    var createWaiters: [(replyTo: String, duplicate: Bool)] = []
    /// Kill requests answered once its end is stored.
    var killWaiters: [String] = []
    /// Its `created` row never reached the store: nothing is published about it.
    var unstored = false
}

/// The shell's sandboxes: live ones by id, and request ids (`<tenant>/<request id>`) to ids.
struct SandboxShell: Sendable {
    var entries: [String: SandboxEntry] = [:]
    var byRequest: [String: String] = [:]
}

/// The control verbs of `hangar.sandbox.<tenant>.<verb>`.
enum SandboxVerb: String, Sendable {
    case create, get, list, timeout, kill, events
}

/// The events stream: every sandbox event of every tenant, kept a week (or up to 256 MiB, oldest
/// dropped first) for replay through the `events` verb.
enum SandboxStreams {
    static var events: JetStreamStreamConfig {
        JetStreamStreamConfig(
            name: Streams.sandboxEvents,
            subjects: [Subjects.sandboxEventsWildcard],
            storage: .file,
            retention: .limits,
            duplicateWindow: .seconds(120),
            maxAge: .seconds(7 * 24 * 3600),
            maxBytes: 256 * 1024 * 1024
        )
    }

    /// The timeout a create request gets when it names none (capped by the tenant's maximum).
    static let defaultTimeout = Duration.seconds(300)
    /// The most entries of a sandbox's metadata, and the longest key and value.
    static let maxMetadata = 32
    static let maxMetadataKeyBytes = 64
    static let maxMetadataValueBytes = 256
    /// The most sandboxes or events one list or events reply carries.
    static let maxPage = 1000
    static let defaultPage = 100
}

extension Scheduler {
    // MARK: Requests

    /// `hangar.sandbox.<tenant>.<verb>`: a tenant's control request about its stateful sandboxes.
    /// The tenant is the subject's token; answers go only to the tenant's own inbox (else dropped
    /// and audited, as for jobs). Another tenant's sandbox is answered exactly like an unknown one.
    nonisolated func handleSandboxRequest(_ message: NATSMessage) async {
        let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
        let verbName = String(Subjects.token(message.subject, at: 3) ?? "")
        guard mayAnswer(message, tenant: tenant) else { return }
        let replyTo = message.replyTo
        guard let verb = SandboxVerb(rawValue: verbName) else {
            answer(
                replyTo,
                error: .sandboxInvalidRequest,
                "unknown sandbox verb '\(verbName.prefix(64))'; use create, get, list, timeout, kill or events"
            )
            return
        }
        guard message.payload.count <= 1 << 20 else {
            answer(
                replyTo,
                error: .sandboxInvalidRequest,
                "the request is \(message.payload.count) bytes; the most is 1 MiB"
            )
            return
        }
        let payload = message.payload
        do {
            switch verb {
            case .create:
                let request = try Hangar_V1_SandboxCreateRequest(serializedBytes: payload, options: Self.decoding)
                auditGatewayCall(replyTo, tenant: tenant, "create (request id '\(request.requestID.prefix(128))')")
                await createSandbox(request, tenant: tenant, replyTo: replyTo)
            case .get:
                let request = try Hangar_V1_SandboxGetRequest(serializedBytes: payload, options: Self.decoding)
                answer(replyTo, await sandboxReply(request.sandboxID, tenant: tenant, verb: "get"))
            case .list:
                let request = try Hangar_V1_SandboxListRequest(serializedBytes: payload, options: Self.decoding)
                let reply = await listSandboxes(request, tenant: tenant)
                if let replyTo, let data = try? reply.serializedData() { try? nats.publish(replyTo, payload: data) }
            case .timeout:
                let request = try Hangar_V1_SandboxSetTimeoutRequest(serializedBytes: payload, options: Self.decoding)
                auditGatewayCall(replyTo, tenant: tenant, "timeout of sandbox \(request.sandboxID.prefix(64))")
                answer(replyTo, await setSandboxTimeout(request, tenant: tenant))
            case .kill:
                let request = try Hangar_V1_SandboxKillRequest(serializedBytes: payload, options: Self.decoding)
                auditGatewayCall(replyTo, tenant: tenant, "kill of sandbox \(request.sandboxID.prefix(64))")
                if let reply = await killSandbox(request.sandboxID, tenant: tenant, replyTo: replyTo) {
                    answer(replyTo, reply)
                }
            case .events:
                let request = try Hangar_V1_SandboxEventsRequest(serializedBytes: payload, options: Self.decoding)
                let reply = await sandboxEvents(request, tenant: tenant)
                if let replyTo, let data = try? reply.serializedData() { try? nats.publish(replyTo, payload: data) }
            }
        } catch {
            let type =
                [
                    "create": "SandboxCreateRequest", "get": "SandboxGetRequest", "list": "SandboxListRequest",
                    "timeout": "SandboxSetTimeoutRequest", "kill": "SandboxKillRequest",
                    "events": "SandboxEventsRequest",
                ][verb.rawValue] ?? "request"
            let text = "the payload is not a hangar.v1.\(type): \(error)"
            switch verb {
            case .create:
                var rejected = Hangar_V1_SandboxCreateRejected()
                rejected.reason = .invalidRequest
                rejected.field = "payload"
                rejected.message = text
                answer(replyTo, create: .rejected(rejected))
            case .list:
                var reply = Hangar_V1_SandboxListReply()
                reply.error = text
                if let replyTo, let data = try? reply.serializedData() { try? nats.publish(replyTo, payload: data) }
            case .events:
                var reply = Hangar_V1_SandboxEventsReply()
                reply.error = text
                if let replyTo, let data = try? reply.serializedData() { try? nats.publish(replyTo, payload: data) }
            default:
                answer(replyTo, error: .sandboxInvalidRequest, text)
            }
        }
    }

    /// Checks a create request against the request bounds and the tenant's policy (the same rules
    /// as a job's runtime, template, environment, limits and labels, plus the sandbox's timeout
    /// and metadata); returns the request as admitted (defaults filled in, limits resolved).
    nonisolated func validateSandbox(
        _ request: Hangar_V1_SandboxCreateRequest,
        tenant: String,
        policy: TenantPolicy
    ) -> Result<Hangar_V1_SandboxCreateRequest, Rejection> {
        var job = Hangar_V1_SubmitRequest()
        job.requestID = request.requestID
        job.runtime = request.runtime
        job.template = request.template
        job.argv = ["sandbox"]
        job.env = request.env
        job.limits = request.limits
        job.limits.timeoutMs = 0  // a sandbox's life is its `timeout_ms`, not a job's wall clock
        job.labels = request.labels
        if request.hasGrants {
            job.grants = request.grants
        } else if !request.hasNetwork, let defaults = policy.sandboxDefaultGrants {
            // Neither grants nor a network policy named: the tenant's default for sandboxes.
            job.grants = defaults.message
        }
        job.network = request.network
        let valid: ValidatedSubmission
        switch config.validator.validate(job, tenant: tenant, policy: policy) {
        case .failure(let rejection): return .failure(rejection)
        case .success(let submission): valid = submission
        }
        var admitted = request
        admitted.runtime = valid.spec.runtime
        admitted.template = valid.spec.template
        admitted.limits = valid.spec.limits
        admitted.limits.timeoutMs = 0
        // Grants and network as the job rules admitted them (the tenant's denies added, allow_net
        // folded into the network policy), within what this runtime's sandboxes enforce.
        if let rejection = Self.checkSandboxGrants(valid.spec.grants, runtime: valid.spec.runtime) {
            return .failure(rejection)
        }
        if valid.spec.hasGrants { admitted.grants = valid.spec.grants } else { admitted.clearGrants() }
        if valid.spec.network == Hangar_V1_NetworkPolicy() {
            admitted.clearNetwork()
        } else {
            admitted.network = valid.spec.network
        }
        let maximum = policy.maxSandboxTimeout
        if request.timeoutMs == 0 {
            admitted.timeoutMs = UInt32(clamping: min(SandboxStreams.defaultTimeout, maximum).wholeMilliseconds)
        } else if Duration.milliseconds(request.timeoutMs) > maximum {
            return .failure(
                Rejection(
                    .limitExceeded,
                    "timeout_ms",
                    "timeout_ms \(request.timeoutMs) is above tenant '\(tenant)''s maximum sandbox timeout of \(maximum.wholeMilliseconds) ms"
                )
            )
        }
        guard request.metadata.count <= SandboxStreams.maxMetadata else {
            return .failure(
                Rejection(
                    .limitExceeded,
                    "metadata",
                    "\(request.metadata.count) metadata entries; the maximum is \(SandboxStreams.maxMetadata)"
                )
            )
        }
        for (key, value) in request.metadata
        where key.isEmpty || key.utf8.count > SandboxStreams.maxMetadataKeyBytes
            || value.utf8.count > SandboxStreams.maxMetadataValueBytes
        {
            return .failure(
                Rejection(
                    .invalidRequest,
                    "metadata",
                    "metadata key '\(key.prefix(64))' must be 1-\(SandboxStreams.maxMetadataKeyBytes) bytes and its value at most \(SandboxStreams.maxMetadataValueBytes) bytes"
                )
            )
        }
        return .success(admitted)
    }

    /// Admits a create request: validation, a repeated request id, the tenant's maximum of live
    /// sandboxes, a node that could ever hold it; then stores it and hands it to the core. The
    /// answer comes once it runs on its node, or has failed.
    func createSandbox(_ request: Hangar_V1_SandboxCreateRequest, tenant: String, replyTo: String?) async {
        let policy = tenants.policy(for: tenant)
        let admitted: Hangar_V1_SandboxCreateRequest
        switch validateSandbox(request, tenant: tenant, policy: policy) {
        case .failure(let rejection):
            auditSandboxGrantDenied(request, tenant: tenant, rejection: rejection)
            answer(replyTo, rejection)
            return
        case .success(let valid):
            admitted = valid
        }
        let key = admitted.requestID.isEmpty ? nil : "\(tenant)/\(admitted.requestID)"
        if let key {
            if await answerDuplicateSandbox(key: key, tenant: tenant, requestID: admitted.requestID, replyTo: replyTo) {
                return
            }
        }
        let live = core.liveSandboxes(of: tenant)
        guard live < policy.maxLiveSandboxes else {
            answer(
                replyTo,
                Rejection(
                    .quotaExceeded,
                    "",
                    "tenant '\(tenant)' already has \(live) live sandboxes (max_live_sandboxes \(policy.maxLiveSandboxes)); kill one first"
                )
            )
            return
        }
        if let failure = storeFailure {
            answer(
                replyTo,
                Rejection(.shuttingDown, "", "store unavailable: \(failure); the sandbox was not created, retry later")
            )
            return
        }
        let id = "s" + JobID.make().dropFirst()
        let placement = sandboxPlacement(admitted, id: id)
        if case .impossible(let why) = core.cluster.place(placement, policy: config.placementPolicy) {
            answer(replyTo, impossibleRejection(placement, why))
            return
        }
        var stored = StoredSandbox(
            id: id,
            tenant: tenant,
            requestID: admitted.requestID.isEmpty ? nil : admitted.requestID,
            request: admitted,
            createdAtMs: unixMilliseconds()
        )
        stored.eventSeq = 1  // its `created` event
        var entry = SandboxEntry(stored: stored)
        if let replyTo { entry.createWaiters.append((replyTo, false)) }
        sandboxes.entries[id] = entry
        if let key { sandboxes.byRequest[key] = id }
        let spec = CoreSandbox.Spec(
            id: id,
            tenant: tenant,
            request: placement,
            timeout: .milliseconds(admitted.timeoutMs),
            maxLifetime: policy.maxSandboxLifetime
        )
        if admitted.hasGrants || !admitted.network.allow.isEmpty {
            auditSandboxGrantGranted(request, admitted, tenant: tenant, sandboxID: id)
        }
        handle(.sandbox(.admitted(spec)))
        let committed = committedSignal(.sandbox(.created(stored)))
        Task {
            let error = await committed()
            self.sandboxCreateStored(id, error: error)
        }
    }

    /// The `created` row is stored (or could not be): the core may place it.
    private func sandboxCreateStored(_ id: String, error: (any Error)?) {
        guard var entry = sandboxes.entries[id] else { return }
        if let error {
            logger.error("could not store a sandbox creation", metadata: ["sandbox.id": "\(id)", "error": "\(error)"])
            let rejection = Rejection(
                .shuttingDown,
                "",
                "store unavailable: \(storeFailureSummary(error)); the sandbox was not created, retry later"
            )
            for waiter in entry.createWaiters { answer(waiter.replyTo, rejection) }
            entry.createWaiters = []
            entry.unstored = true
            sandboxes.entries[id] = entry
            if let requestID = entry.stored.requestID {
                sandboxes.byRequest.removeValue(forKey: "\(entry.stored.tenant)/\(requestID)")
            }
            handle(.sandbox(.kill(sandboxID: id)))
            handle(.sandbox(.committed(sandboxID: id)))
            return
        }
        publishSandboxEvent(entry.stored, kind: .sandboxEventCreated, seq: 1, message: "created")
        handle(.sandbox(.committed(sandboxID: id)))
    }

    /// Answers a repeated request id with the original sandbox (once it runs, if it still starts).
    /// False if the request id is new.
    private func answerDuplicateSandbox(key: String, tenant: String, requestID: String, replyTo: String?) async -> Bool
    {
        if let id = sandboxes.byRequest[key], sandboxes.entries[id] != nil {
            if let replyTo {
                if case .sandboxStarting = sandboxInfo(id)?.state {
                    sandboxes.entries[id]?.createWaiters.append((replyTo, true))
                } else if let info = sandboxInfo(id) {
                    answer(replyTo, create: .created(info), duplicate: true)
                }
            }
            return true
        }
        let stored = try? await store.sandbox(tenant: tenant, requestID: requestID)
        // Admitted meanwhile (the lookup suspended): answered by the entry.
        if let id = sandboxes.byRequest[key], sandboxes.entries[id] != nil {
            return await answerDuplicateSandbox(key: key, tenant: tenant, requestID: requestID, replyTo: replyTo)
        }
        guard let stored else { return false }
        answer(replyTo, create: .created(stored.info), duplicate: true)
        return true
    }

    /// What a sandbox holds on its node: a slot, and CPU and memory at its limits (the null runtime
    /// holds a slot only, as for jobs).
    func sandboxPlacement(_ request: Hangar_V1_SandboxCreateRequest, id: String) -> PlacementRequest {
        let holdsResources = request.runtime != "null"
        var hasher = Hasher()
        hasher.combine(id)
        return PlacementRequest(
            runtime: request.runtime,
            template: request.template,
            labels: request.labels,
            cpuMillis: holdsResources ? UInt64(request.limits.cpuMillis) : 0,
            memoryBytes: holdsResources ? request.limits.memoryBytes : 0,
            limits: request.limits,
            tieBreak: UInt64(bitPattern: Int64(hasher.finalize()))
        )
    }

    /// `get`: the sandbox, live (from the core) or ended (from the store).
    func sandboxReply(_ id: String, tenant: String, verb: String) async -> Hangar_V1_SandboxReply {
        if let entry = sandboxes.entries[id], !entry.unstored {
            guard entry.stored.tenant == tenant else {
                return notFound(id, tenant: tenant, verb: verb, owner: entry.stored.tenant)
            }
            return .with { $0.info = sandboxInfo(id) ?? entry.stored.info }
        }
        guard Subjects.isValidToken(id) else { return notFound(id, tenant: tenant, verb: verb, owner: nil) }
        let stored: StoredSandbox?
        do {
            stored = try await store.sandbox(id: id)
        } catch {
            return .with {
                $0.error = .with {
                    $0.code = .sandboxUnavailable
                    $0.message = "store unavailable: \(storeFailureSummary(error)); retry"
                }
            }
        }
        // It may have come live meanwhile (a restart's recovery), or ended: the entry first.
        if let entry = sandboxes.entries[id], entry.stored.tenant == tenant, !entry.unstored {
            return .with { $0.info = sandboxInfo(id) ?? entry.stored.info }
        }
        guard let stored, stored.tenant == tenant else {
            return notFound(id, tenant: tenant, verb: verb, owner: stored?.tenant)
        }
        return .with { $0.info = stored.info }
    }

    /// A create, timeout or kill an E2B gateway sent for `tenant` (its answer goes to a gateway's inbox):
    /// audited as `gateway.sandbox_call`, actor `gateway:<name>`, so the trail says the gateway acted
    /// for the tenant (the sandbox's own events name the tenant).
    nonisolated func auditGatewayCall(_ replyTo: String?, tenant: String, _ what: String) {
        guard let gateway = Principal.gatewayName(ofReplySubject: replyTo) else { return }
        store.enqueue(
            .audit(
                actor: "gateway:\(gateway)",
                event: "gateway.sandbox_call",
                jobID: nil,
                detail: "for tenant \(tenant): \(what)"
            ),
            onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
        )
    }

    /// NOT_FOUND, and when the sandbox is another tenant's, a warning and an `access.denied` audit.
    private func notFound(_ id: String, tenant: String, verb: String, owner: String?) -> Hangar_V1_SandboxReply {
        if let owner, owner != tenant {
            logger.warning(
                "a tenant addressed another tenant's sandbox",
                metadata: ["tenant": "\(tenant)", "sandbox.id": "\(id)", "owner": "\(owner)", "verb": "\(verb)"]
            )
            store.enqueue(
                .audit(
                    actor: "tenant:\(tenant)",
                    event: "access.denied",
                    jobID: id,
                    detail: "sandbox \(verb) of another tenant's sandbox"
                ),
                onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
            )
        }
        return .with {
            $0.error = .with {
                $0.code = .sandboxNotFound
                $0.message = "tenant '\(tenant)' has no sandbox '\(id.prefix(80))'"
            }
        }
    }

    /// `timeout`: its timeout runs again from now, within the tenant's maximum and the sandbox's
    /// end of life.
    func setSandboxTimeout(
        _ request: Hangar_V1_SandboxSetTimeoutRequest,
        tenant: String
    ) async -> Hangar_V1_SandboxReply {
        let maximum = tenants.policy(for: tenant).maxSandboxTimeout
        guard request.timeoutMs > 0 else {
            return .with {
                $0.error = .with {
                    $0.code = .sandboxInvalidRequest
                    $0.message = "timeout_ms must be above 0"
                }
            }
        }
        guard Duration.milliseconds(request.timeoutMs) <= maximum else {
            return .with {
                $0.error = .with {
                    $0.code = .sandboxLimitExceeded
                    $0.message =
                        "timeout_ms \(request.timeoutMs) is above tenant '\(tenant)''s maximum sandbox timeout of \(maximum.wholeMilliseconds) ms"
                }
            }
        }
        guard let entry = sandboxes.entries[request.sandboxID], entry.stored.tenant == tenant, !entry.unstored else {
            let reply = await sandboxReply(request.sandboxID, tenant: tenant, verb: "timeout")
            if case .info = reply.outcome { return notRunning(request.sandboxID) }
            return reply
        }
        switch core.sandboxes[request.sandboxID]?.phase {
        case .starting, .running, .restored: break
        default: return notRunning(request.sandboxID)
        }
        handle(.sandbox(.setTimeout(sandboxID: request.sandboxID, timeout: .milliseconds(request.timeoutMs))))
        return .with { $0.info = sandboxInfo(request.sandboxID) ?? entry.stored.info }
    }

    private func notRunning(_ id: String) -> Hangar_V1_SandboxReply {
        .with {
            $0.error = .with {
                $0.code = .sandboxNotRunning
                $0.message = "sandbox '\(id)' is not running (it has not started yet, or it has ended)"
            }
        }
    }

    /// `kill`: ends the sandbox. Answered (nil here) once its end is stored; an ended sandbox is
    /// answered at once as it is.
    func killSandbox(_ id: String, tenant: String, replyTo: String?) async -> Hangar_V1_SandboxReply? {
        guard let entry = sandboxes.entries[id], entry.stored.tenant == tenant, !entry.unstored else {
            return await sandboxReply(id, tenant: tenant, verb: "kill")
        }
        if let replyTo { sandboxes.entries[id]?.killWaiters.append(replyTo) }
        if case .ending = core.sandboxes[id]?.phase { return nil }
        store.enqueue(
            .audit(actor: "tenant:\(tenant)", event: "sandbox.killed", jobID: id, detail: "killed by its tenant"),
            onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
        )
        handle(.sandbox(.kill(sandboxID: id)))
        return nil
    }

    /// `list`: the tenant's sandboxes in the states asked (live ones by default) whose metadata
    /// has every pair asked, newest first, one page.
    func listSandboxes(_ request: Hangar_V1_SandboxListRequest, tenant: String) async -> Hangar_V1_SandboxListReply {
        var reply = Hangar_V1_SandboxListReply()
        let states = Set(request.states.isEmpty ? [.sandboxStarting, .sandboxRunning] : request.states)
        let limit = request.limit == 0 ? SandboxStreams.defaultPage : min(Int(request.limit), SandboxStreams.maxPage)
        var found: [Hangar_V1_SandboxInfo] = []
        for (id, entry) in sandboxes.entries where entry.stored.tenant == tenant && !entry.unstored {
            if let info = sandboxInfo(id) { found.append(info) }
        }
        if states.contains(.sandboxEnded) {
            do {
                let live = Set(found.map(\.id))
                let ended = try await store.endedSandboxes(tenant: tenant, limit: 10 * SandboxStreams.maxPage)
                found += ended.map(\.info).filter { !live.contains($0.id) }
            } catch {
                reply.error = "store unavailable: \(storeFailureSummary(error)); retry"
                return reply
            }
        }
        found = found.filter { info in
            states.contains(info.state) && request.metadata.allSatisfy { info.metadata[$0.key] == $0.value }
        }
        found.sort { ($0.createdAtMs, $0.id) > ($1.createdAtMs, $1.id) }
        if !request.beforeID.isEmpty, let position = found.firstIndex(where: { $0.id == request.beforeID }) {
            found.removeFirst(position + 1)
        }
        reply.more = found.count > limit
        reply.sandboxes = Array(found.prefix(limit))
        return reply
    }

    /// What the tenant sees of live sandbox `id` now: its state, node and deadline as the core has them.
    func sandboxInfo(_ id: String) -> Hangar_V1_SandboxInfo? {
        guard let entry = sandboxes.entries[id] else { return nil }
        var info = entry.stored.info
        switch core.sandboxes[id]?.phase {
        case .committing, .waiting, nil:
            info.state = .sandboxStarting
            info.message = core.sandboxes[id]?.waitingBecause ?? ""
        case .starting(let node, _):
            info.state = .sandboxStarting
            info.nodeID = node
        case .running(let node, let deadline), .restored(let node, let deadline, _):
            info.state = .sandboxRunning
            info.nodeID = node
            info.endsAtMs = unixMilliseconds(at: deadline)
        case .ending(let end, _):
            info.state = .sandboxEnded
            info.endReason = end.reason.wire
            info.message = end.message
            info.nodeID = end.node ?? info.nodeID
            info.endsAtMs = 0
        }
        return info
    }

    // MARK: The core's sandbox actions and records

    /// Performs one of the core's sandbox actions.
    func perform(_ action: SandboxAction) {
        switch action {
        case .start(let id, let nodeID):
            guard let entry = sandboxes.entries[id] else { return }
            guard config.holdsLease?() ?? true else {
                hold(.sandboxStart(sandboxID: id, nodeID: nodeID))
                return
            }
            var start = Hangar_V1_SandboxStart()
            start.schedulerTerm = config.term
            start.sandboxID = id
            start.tenant = entry.stored.tenant
            start.runtime = entry.stored.request.runtime
            start.template = entry.stored.request.template
            start.limits = entry.stored.request.limits
            start.env = entry.stored.request.env
            if entry.stored.request.hasGrants { start.grants = entry.stored.request.grants }
            if entry.stored.request.hasNetwork { start.network = entry.stored.request.network }
            if case .starting(_, let deadline) = core.sandboxes[id]?.phase {
                start.timeoutMs = UInt32(clamping: max(0, unixMilliseconds(at: deadline) - unixMilliseconds()))
            }
            start.nodeIncarnation = nodeIncarnations[nodeID] ?? ""
            let control = self.control
            // The node answers once the sandbox runs (a container may take seconds under load), so
            // the start waits until the sandbox's creation deadline, not just an assignment's ack time.
            let timeout = max(config.assignTimeout, .milliseconds(Int64(start.timeoutMs)))
            Task {
                let refusal: String?
                do {
                    let answer = try await control.request(
                        Subjects.sandboxStart(node: nodeID),
                        payload: try start.serializedData(),
                        timeout: timeout
                    )
                    let reply = try Hangar_V1_SandboxStartReply(serializedBytes: answer.payload)
                    switch reply.outcome {
                    case .ok: refusal = nil
                    case .refused(let refused):
                        if refused.reason == .staleTerm { self.deposed(refused.message) }
                        refusal = refused.message
                    case nil: refusal = "the node's answer says neither ok nor refused"
                    }
                } catch {
                    refusal = "no answer to the start: \(error)"
                }
                await self.handle(.sandbox(.startAnswered(sandboxID: id, refusal: refusal)))
            }
        case .kill(let id, let nodeID, let reason):
            var kill = Hangar_V1_SandboxKill()
            kill.schedulerTerm = config.term
            kill.sandboxID = id
            kill.reason = reason
            do {
                try control.publish(Subjects.sandboxKill(node: nodeID), payload: try kill.serializedData())
            } catch {
                logger.warning(
                    "could not tell a node to kill a sandbox",
                    metadata: ["sandbox.id": "\(id)", "node.id": "\(nodeID)", "error": "\(error)"]
                )
            }
        case .ended(let id, let end):
            guard let entry = sandboxes.entries.removeValue(forKey: id) else { return }
            if let requestID = entry.stored.requestID {
                let key = "\(entry.stored.tenant)/\(requestID)"
                if sandboxes.byRequest[key] == id { sandboxes.byRequest.removeValue(forKey: key) }
            }
            var stored = entry.stored
            stored.state = .sandboxEnded
            stored.endReason = end.reason.wire
            stored.message = end.message
            stored.nodeID = end.node ?? stored.nodeID
            stored.endedAtMs = unixMilliseconds()
            logger.info(
                "sandbox ended",
                metadata: ["sandbox.id": "\(id)", "reason": "\(end.reason)", "message": "\(end.message)"]
            )
            if !entry.unstored {
                publishSandboxEvent(stored, kind: .sandboxEventEnded, seq: stored.eventSeq, message: end.message)
            }
            for waiter in entry.createWaiters {
                answer(waiter.replyTo, create: .created(stored.info), duplicate: waiter.duplicate)
            }
            for waiter in entry.killWaiters { answer(waiter, .with { $0.info = stored.info }) }
        }
    }

    /// Writes one of the core's sandbox records (and publishes its event; an end's goes out once
    /// stored, with the `.ended` action).
    func write(_ record: SandboxRecord) {
        switch record {
        case .placed(let id, let nodeID):
            sandboxes.entries[id]?.stored.nodeID = nodeID
            enqueue(.sandbox(.placed(id: id, nodeID: nodeID, eventSeq: sandboxes.entries[id]?.stored.eventSeq ?? 0)))
        case .started(let id, let nodeID):
            guard var entry = sandboxes.entries[id] else { return }
            entry.stored.eventSeq += 1
            entry.stored.state = .sandboxRunning
            entry.stored.nodeID = nodeID
            if case .running(_, let deadline) = core.sandboxes[id]?.phase {
                entry.stored.endsAtMs = unixMilliseconds(at: deadline)
            }
            let waiters = entry.createWaiters
            entry.createWaiters = []
            sandboxes.entries[id] = entry
            enqueue(
                .sandbox(
                    .started(id: id, nodeID: nodeID, endsAtMs: entry.stored.endsAtMs, eventSeq: entry.stored.eventSeq)
                )
            )
            publishSandboxEvent(
                entry.stored,
                kind: .sandboxEventStarted,
                seq: entry.stored.eventSeq,
                message: "running on \(nodeID)"
            )
            let info = sandboxInfo(id) ?? entry.stored.info
            for waiter in waiters { answer(waiter.replyTo, create: .created(info), duplicate: waiter.duplicate) }
        case .timeoutSet(let id, let deadline):
            guard var entry = sandboxes.entries[id] else { return }
            entry.stored.eventSeq += 1
            entry.stored.endsAtMs = unixMilliseconds(at: deadline)
            sandboxes.entries[id] = entry
            enqueue(.sandbox(.timeoutSet(id: id, endsAtMs: entry.stored.endsAtMs, eventSeq: entry.stored.eventSeq)))
            switch core.sandboxes[id]?.phase {
            case .starting(let node, _), .running(let node, _), .restored(let node, _, _):
                // The node enforces it too (a grace later), for when no scheduler runs.
                sendTimeout(of: id, endsAtMs: entry.stored.endsAtMs, to: node)
            default:
                break
            }
            publishSandboxEvent(
                entry.stored,
                kind: .sandboxEventTimeoutSet,
                seq: entry.stored.eventSeq,
                message: "ends at \(entry.stored.endsAtMs) (unix ms) unless set again"
            )
        case .readopted(let id, let nodeID):
            logger.notice(
                "sandbox re-adopted by its restarted node",
                metadata: ["sandbox.id": "\(id)", "node.id": "\(nodeID)"]
            )
            enqueue(.sandboxReadopted(id: id, nodeID: nodeID))
            // A timeout set while the node restarted may not have reached it: it hears it again.
            if let endsAtMs = sandboxes.entries[id]?.stored.endsAtMs, endsAtMs > 0 {
                sendTimeout(of: id, endsAtMs: endsAtMs, to: nodeID)
            }
        case .ended(let id, let end):
            sandboxes.entries[id]?.stored.eventSeq += 1
            let seq = sandboxes.entries[id]?.stored.eventSeq ?? 0
            let write = StoreWrite.sandbox(
                .ended(id: id, reason: end.reason.wire, nodeID: end.node, message: end.message, eventSeq: seq)
            )
            let committed = committedSignal(write)
            Task {
                if let error = await committed() {
                    // The core forgets it all the same (it cannot run anywhere any more); a restart
                    // finds it live in the store and ends it LOST when no node reports it.
                    self.logger.error(
                        "could not store the end of a sandbox",
                        metadata: ["sandbox.id": "\(id)", "error": "\(error)"]
                    )
                }
                self.handle(.sandbox(.endCommitted(sandboxID: id)))
            }
        }
    }

    /// Tells `node` when the sandbox's timeout passes (the node kills it then, a grace later).
    private func sendTimeout(of id: String, endsAtMs: Int64, to node: String) {
        var timeout = Hangar_V1_SandboxSetTimeout()
        timeout.schedulerTerm = config.term
        timeout.sandboxID = id
        timeout.timeoutMs = UInt32(clamping: max(0, endsAtMs - unixMilliseconds()))
        do {
            try control.publish(Subjects.sandboxTimeout(node: node), payload: try timeout.serializedData())
        } catch {
            logger.warning(
                "could not tell a node a sandbox's timeout",
                metadata: ["sandbox.id": "\(id)", "node.id": "\(node)", "error": "\(error)"]
            )
        }
    }

    private func enqueue(_ write: StoreWrite) {
        store.enqueue(write) { [logger] error in logger.error("could not store", metadata: ["error": "\(error)"]) }
    }

    // MARK: Nodes

    /// `hangar.node.<node>.sandbox.died`: a sandbox stopped on its own on its node.
    func handleSandboxDied(_ message: NATSMessage) {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init), Subjects.isValidToken(nodeID),
            let died = try? Hangar_V1_SandboxDied(serializedBytes: message.payload)
        else {
            logger.warning("ignored a malformed sandbox death", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        let text = died.message.isEmpty ? "it stopped on node \(nodeID)" : String(died.message.prefix(1000))
        if died.timedOut {
            handle(.sandbox(.timedOutOnNode(sandboxID: died.sandboxID, nodeID: nodeID, message: text)))
        } else {
            handle(.sandbox(.diedOnNode(sandboxID: died.sandboxID, nodeID: nodeID, message: text)))
        }
    }

    /// A node's report of a command or code cell that ran in one of its sandboxes: audited
    /// (`sandbox.command`, `sandbox.code`, actor the tenant, job id the sandbox) if that node holds
    /// the sandbox for that tenant; anything else is dropped with a warning.
    func handleSandboxAudit(_ message: NATSMessage) {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init), Subjects.isValidToken(nodeID),
            let record = try? Hangar_V1_SandboxAudit(serializedBytes: message.payload), let ran = record.ran
        else {
            logger.warning("ignored a malformed sandbox audit report", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        guard let entry = sandboxes.entries[record.sandboxID], entry.stored.tenant == record.tenant,
            entry.stored.nodeID == nodeID
        else {
            logger.warning(
                "ignored a sandbox audit report for a sandbox the node does not hold for that tenant",
                metadata: [
                    "node.id": "\(nodeID)", "sandbox.id": "\(record.sandboxID.prefix(64))",
                    "tenant": "\(record.tenant.prefix(64))",
                ]
            )
            return
        }
        let (event, detail): (String, String) =
            switch ran {
            case .command(let run):
                ("sandbox.command", Self.describe(run))
            case .code(let run):
                (
                    "sandbox.code",
                    "context=\(run.contextID) language=\(run.language.isEmpty ? "-" : run.language) "
                        + "code_bytes=\(run.codeBytes) code_sha256=\(run.codeSha256) end=\(Self.name(run.end)) "
                        + "duration_ms=\(run.durationMs)"
                )
            }
        store.enqueue(
            .audit(
                actor: "tenant:\(record.tenant)",
                event: event,
                jobID: record.sandboxID,
                detail: String((detail + " node=\(nodeID)").prefix(4000))
            ),
            onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
        )
    }

    /// How a cell ended, as the proto names it (`CODE_CELL_OK`, …).
    static func name(_ end: Hangar_V1_CodeCellEnd) -> String {
        switch end {
        case .codeCellOk: "CODE_CELL_OK"
        case .codeCellError: "CODE_CELL_ERROR"
        case .codeCellTimedOut: "CODE_CELL_TIMED_OUT"
        case .codeCellOutputLimit: "CODE_CELL_OUTPUT_LIMIT"
        case .codeCellInterpreterDied: "CODE_CELL_INTERPRETER_DIED"
        case .UNRECOGNIZED(let value): "CODE_CELL_END_\(value)"
        }
    }

    /// `argv=["sh","-c","…"] user=user cwd=- exit=0 duration_ms=3`, and the signal, timeout or
    /// error when there was one.
    static func describe(_ run: Hangar_V1_SandboxCommandRun) -> String {
        let argv =
            (try? JSONSerialization.data(withJSONObject: run.argv.map { String($0.prefix(500)) }))
            .map { String(decoding: $0, as: UTF8.self) } ?? "[]"
        var parts = [
            "argv=\(argv.prefix(2000))", "user=\(run.user.isEmpty ? "user" : run.user)",
            "cwd=\(run.cwd.isEmpty ? "-" : run.cwd)",
        ]
        if !run.error.isEmpty {
            parts.append("error=\(run.error.prefix(500))")
        } else if run.signal != 0 {
            parts.append("signal=\(run.signal)")
        } else {
            parts.append("exit=\(run.exitCode)")
        }
        if run.timedOut { parts.append("timed_out=true") }
        parts.append("duration_ms=\(run.durationMs)")
        return parts.joined(separator: " ")
    }

    /// Rebuilds the live sandboxes of a previous scheduler process from the store: placed ones are
    /// kept if their nodes list them in heartbeats within TTL + grace (else LOST); those not placed
    /// yet wait for a node again.
    func recoverSandboxes() async throws {
        let live = try await store.liveSandboxes()
        guard !live.isEmpty else { return }
        let now = ContinuousClock.now
        let nowMs = unixMilliseconds()
        for stored in live {
            let policy = tenants.policy(for: stored.tenant)
            sandboxes.entries[stored.id] = SandboxEntry(stored: stored)
            if let requestID = stored.requestID { sandboxes.byRequest["\(stored.tenant)/\(requestID)"] = stored.id }
            let spec = CoreSandbox.Spec(
                id: stored.id,
                tenant: stored.tenant,
                request: sandboxPlacement(stored.request, id: stored.id),
                timeout: .milliseconds(stored.request.timeoutMs),
                maxLifetime: policy.maxSandboxLifetime
            )
            let deadline =
                stored.endsAtMs > 0
                ? now + .milliseconds(stored.endsAtMs - nowMs) : now + .milliseconds(stored.request.timeoutMs)
            handle(
                .sandbox(
                    .restored(
                        spec,
                        createdAt: now - .milliseconds(max(0, nowMs - stored.createdAtMs)),
                        node: stored.nodeID.isEmpty ? nil : stored.nodeID,
                        deadline: deadline
                    )
                )
            )
        }
        logger.notice("recovered live sandboxes", metadata: ["count": "\(live.count)"])
    }

    // MARK: Replies

    nonisolated func answer(_ replyTo: String?, _ reply: Hangar_V1_SandboxReply) {
        guard let replyTo, let data = try? reply.serializedData() else { return }
        do {
            try nats.publish(replyTo, payload: data)
        } catch {
            logger.warning("could not reply", metadata: ["nats.subject": "\(replyTo)", "error": "\(error)"])
        }
    }

    nonisolated func answer(_ replyTo: String?, error code: Hangar_V1_SandboxErrorCode, _ message: String) {
        answer(
            replyTo,
            .with {
                $0.error = .with {
                    $0.code = code
                    $0.message = message
                }
            }
        )
    }

    nonisolated func answer(_ replyTo: String?, _ rejection: Rejection) {
        var rejected = Hangar_V1_SandboxCreateRejected()
        rejected.reason = rejection.rejected.reason
        rejected.field = rejection.rejected.field
        rejected.message = rejection.rejected.message
        answer(replyTo, create: .rejected(rejected))
    }

    nonisolated func answer(
        _ replyTo: String?,
        create outcome: Hangar_V1_SandboxCreateReply.OneOf_Outcome,
        duplicate: Bool = false
    ) {
        guard let replyTo else { return }
        var reply = Hangar_V1_SandboxCreateReply()
        reply.outcome = outcome
        reply.duplicate = duplicate
        guard let data = try? reply.serializedData() else { return }
        do {
            try nats.publish(replyTo, payload: data)
        } catch {
            logger.warning("could not reply", metadata: ["nats.subject": "\(replyTo)", "error": "\(error)"])
        }
    }
}

extension SandboxEnd.Reason {
    /// The reason on the wire.
    var wire: Hangar_V1_SandboxEndReason {
        switch self {
        case .killed: .sandboxKilled
        case .timedOut: .sandboxTimedOut
        case .lost: .sandboxLost
        case .failed: .sandboxFailed
        case .died: .sandboxDied
        }
    }
}

/// Unix milliseconds at `instant` of the continuous clock (now plus the time until it).
func unixMilliseconds(at instant: ContinuousClock.Instant) -> Int64 {
    unixMilliseconds() + ContinuousClock.now.duration(to: instant).wholeMilliseconds
}

extension Duration {
    /// Whole milliseconds (rounded toward zero).
    var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
