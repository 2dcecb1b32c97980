import Foundation
import HangarNATS
import HangarShared
import Logging
import Synchronization

/// A submission that passed admission and has its entry, on its way into the intake stream.
struct PendingAdmission: Sendable {
    let id: String
    /// `<tenant>/<request id>`, when it has a request id.
    let key: String?
    let submission: ValidatedSubmission
    /// The request as stored in the intake stream (what was decoded, without unknown fields).
    let encoded: Data
    let replyTo: String?
    /// Answered with its result rather than `Accepted`.
    let waiting: Bool
    let trace: TraceContext
}

/// The central scheduler: takes submissions, queues them per tenant, places them on nodes, detects
/// dead nodes and retries their jobs, stores and answers results.
///
/// The decisions are ``SchedulerCore``'s (a pure state machine: the job lifecycle, the fair queue,
/// placement, failure detection, retries, cancel, recovery); this actor is its I/O shell. It checks
/// admissions (validation, rate and byte budgets, request ids), feeds the core events from NATS,
/// the streams, the store and a 250 ms timer (`handle`), and performs the core's actions: sends
/// assignments and cancels, writes its log records to the store, answers the waiters.
///
/// Subjects: `hangar.submit.*`, `hangar.cancel.*`, `hangar.job.*`, `hangar.sandbox.*.*`, `hangar.node.*.result`,
/// `hangar.admin.*`, `hangar.gateway.apikey` (queue group) and `hangar.node.*.heartbeat`. See `Subjects`.
public actor Scheduler {
    let config: SchedulerConfig
    let nats: NATSConnection
    public nonisolated let store: Store
    let logger: Logger
    /// The decisions: every accepted job's lifecycle, the fair queue, the cluster's reservations.
    var core: SchedulerCore
    var tenantsFileStamp: Date?
    var buckets: [String: TokenBucket] = [:]
    /// Each tenant's byte budget at intake (`TenantPolicy.bytesRate`, `bytesBurst`).
    var byteBuckets: [String: TokenBucket] = [:]
    /// Bytes of each tenant's accepted requests not yet finished (`TenantPolicy.maxQueuedBytes`).
    var queuedBytes: [String: Int] = [:]
    /// What the shell keeps of each job the core works on (waiters, trace, result bytes).
    var jobs: [String: JobEntry] = [:]
    /// The node reports of the results batch the core is deciding (see `storeResults`).
    var reportsInFlight: [ReportKey: Hangar_V1_AttemptResult] = [:]
    /// Each node's incarnation as its last heartbeat said (assignments name it).
    var nodeIncarnations: [String: String] = [:]
    var byRequest: [String: String] = [:]
    var lastTenantsCheck = ContinuousClock.now
    /// When results and audit rows were last pruned (see `SchedulerConfig.retention`).
    var lastPrune: ContinuousClock.Instant?
    /// Operator settings per node (eligibility, drain), kept in the store across restarts.
    var nodeControls: [String: NodeControl] = [:]
    /// Batched submissions waiting for their answers (see Scheduler+SubmitBatch.swift).
    nonisolated let submitBatches = SubmitBatches()
    /// Admitted submissions on their way into the intake stream (see IntakeOutbox.swift).
    nonisolated let intakeOutbox: IntakeOutbox
    /// Assignments decided in this round, sent together per node (see Scheduler+AssignBatch.swift).
    var outbox = AssignmentOutbox()
    /// Totals since start, for `hangar.admin.stats` and `/metrics` (see Scheduler+Stats.swift).
    public nonisolated let counters = SchedulerCounters()
    /// Where results go out on `hangar.result.<tenant>.<job>` when a waiter already has them: a
    /// second connection that lets libnats batch its writes (at most a millisecond later), instead
    /// of one socket write per job. Results nobody waits for go on `nats` at once. Nil until `run`.
    var notifications: NATSConnection?
    /// Control traffic (heartbeats, node results, assignments and their answers, node cancels) on a
    /// connection of its own, so that a flood of tenant submissions on `nats` can never starve it: if
    /// nats-server cuts the intake connection off as a slow consumer, heartbeats still arrive and no
    /// healthy node is declared down. Nil until `run` (then `control` falls back to `nats`).
    nonisolated let controlConnection = Mutex<NATSConnection?>(nil)
    /// The connection's JetStream context (streams, consumers, reading a message back).
    var jetStream: JetStream?
    /// Jobs whose intake publish timed out (the tenant was refused): if the stream did store one,
    /// the intake consumer discards it instead of running it.
    var abandonedIntake: Set<String> = []
    /// Jobs of `abandonedIntake` whose intake entry was then read and discarded (not run): a
    /// retry of the same request id must not be answered with them.
    var discardedIntake: Set<String> = []
    /// Jobs whose intake is being committed (a copy of their message delivered meanwhile waits).
    var committingIntake: Set<String> = []
    /// Why the last intake commit failed; new submissions are refused while it is set.
    var storeFailure: String?
    /// Where answers may go (see `ReplySubjectRule`): strict when the scheduler logged in as the
    /// `scheduler` principal, i.e. the cluster runs Hangar's authorization.
    nonisolated let replyRule: ReplySubjectRule
    /// What the shell keeps of live stateful sandboxes (see Scheduler+Sandboxes.swift).
    var sandboxes = SandboxShell()
    /// Sandbox lifecycle events on their way into the `HANGAR_SANDBOX_EVENTS` stream, in order.
    nonisolated let sandboxEventsOutbox = SandboxEventsOutbox()
    /// Set when a `ServiceGroup` shuts the scheduler down gracefully (not when its task is merely
    /// cancelled): its stream consumers then store what their streams still hold before it stops.
    nonisolated let stoppingGracefully = Atomic<Bool>(false)
    /// Assignments and sandbox starts decided while the leader lease was suspended, sent once it
    /// is held again (see Scheduler+Lease.swift).
    var heldSends: [HeldSend] = []
    /// The other schedulers' last announcements (by holder id) and when this one heard each.
    var presences: [String: (status: Hangar_V1_SchedulerStatus, heardAt: ContinuousClock.Instant)] = [:]
    /// Failed API key lookups audited one by one (see Scheduler+APIKeys.swift).
    nonisolated let apiKeyAuditBudget = APIKeyAuditBudget()

    public init(config: SchedulerConfig, nats: NATSConnection, store: Store, logger: Logger) {
        self.config = config
        self.nats = nats
        self.store = store
        self.logger = logger
        self.intakeOutbox = IntakeOutbox(nats: nats, timeout: config.intakePublishTimeout)
        self.replyRule = ReplySubjectRule(ownInboxOnly: nats.options.inboxPrefix == Principal.scheduler.inboxPrefix)
        var core = SchedulerCore.Config()
        core.queueTimeout = config.queueTimeout
        core.unlistedGrace = config.unlistedGrace
        core.placementPolicy = config.placementPolicy
        core.tenants = config.tenants
        self.core = SchedulerCore(
            config: core,
            cluster: ClusterState(ttl: config.nodeTTL, grace: config.nodeGrace, cpuOvercommit: config.cpuOvercommit)
        )
    }

    /// The tenants' policies in force.
    var tenants: TenantDirectory { core.config.tenants }

    /// Serves until the surrounding task is cancelled (see ``run()``, in `Scheduler+Service.swift`);
    /// then lets in-flight stream commits finish, flushes the store and drains its own connections.
    func serve() async throws {
        if let file = config.tenantsFile {
            handle(.tenantsChanged(try TenantDirectory.load(path: file)))
            tenantsFileStamp = modificationDate(file)
        }
        try await loadNodeControls()
        try await recover()
        try await recoverSandboxes()
        let group = Subjects.schedulerQueueGroup
        let submits = try nats.subscribe(Subjects.submitWildcard, queueGroup: group)
        let cancels = try nats.subscribe(Subjects.cancelWildcard, queueGroup: group)
        let control = await openControlConnection()
        let heartbeats = try control.subscribe(Subjects.heartbeatWildcard)
        let controlStreams = control === nats ? nil : try control.jetStream()
        let admin = try nats.subscribe(Subjects.admin("*"), queueGroup: group)
        let tenantJobs = try nats.subscribe(Subjects.jobWildcard, queueGroup: group)
        let sandboxRequests = try nats.subscribe(Subjects.sandboxWildcard, queueGroup: group)
        let sandboxDeaths = try control.subscribe(Subjects.sandboxDiedWildcard)
        let sandboxAudits = try control.subscribe(Subjects.sandboxAuditWildcard)
        let apiKeyLookups = try nats.subscribe(Subjects.gatewayAPIKey, queueGroup: group)
        let presence = config.leaseHolder == nil ? nil : try control.subscribe(Subjects.schedulerPresence)
        defer { presence?.unsubscribe() }
        let jetStream = try nats.jetStream()
        self.jetStream = jetStream
        await ensureStreams(jetStream)
        defer {
            for subscription in [
                submits, cancels, heartbeats, admin, tenantJobs, sandboxRequests, sandboxDeaths, sandboxAudits,
                apiKeyLookups,
            ] {
                subscription.unsubscribe()
            }
        }
        try await nats.flush()
        var buffered = nats.options
        buffered.sendAsap = false
        buffered.name += "-notifications"
        do {
            notifications = try await NATSConnection(options: buffered)
        } catch {
            logger.warning(
                "no second connection for result notifications; using the main one",
                metadata: ["error": "\(error)"]
            )
        }
        logger.info("scheduler serving", metadata: ["db": "\(config.databasePath)"])
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in submits { inner.addTask { await self.handleSubmit(message) } }
                }
            }
            group.addTask {
                for await message in cancels { await self.handleCancel(message) }
            }
            group.addTask {
                for await message in heartbeats { await self.handleHeartbeat(message) }
            }
            group.addTask {
                await self.consume(self.streamConfig(SchedulerStreams.results), with: controlStreams ?? jetStream) {
                    await self.storeResults($0)
                }
            }
            if config.consumeIntake {
                group.addTask {
                    await self.consume(self.streamConfig(SchedulerStreams.submissions), with: jetStream) {
                        await self.commitIntake($0)
                    }
                }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in admin { inner.addTask { await self.handleAdmin(message) } }
                }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in tenantJobs { inner.addTask { await self.handleTenantJob(message) } }
                }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in sandboxRequests {
                        inner.addTask { await self.handleSandboxRequest(message) }
                    }
                }
            }
            group.addTask {
                for await message in sandboxDeaths { await self.handleSandboxDied(message) }
            }
            group.addTask {
                for await message in sandboxAudits { await self.handleSandboxAudit(message) }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in apiKeyLookups { inner.addTask { await self.handleAPIKeyLookup(message) } }
                }
            }
            group.addTask { await self.publishSandboxEvents() }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: Self.intakeCheckInterval)
                    await self.recoverLostIntake(now: .now)
                }
            }
            if let presence {
                group.addTask {
                    for await message in presence { await self.heardPresence(message) }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    await self.tick()
                }
            }
        }
        // Sandbox events decided before the stop still reach their stream.
        await publishRemainingSandboxEvents()
        // Everything queued for the store is committed before the scheduler stops (and the answers
        // that wait for those commits go out on the connections drained next).
        do {
            try await store.flush()
        } catch {
            logger.error("could not flush the store at stop", metadata: ["error": "\(error)"])
        }
        // Results already buffered for the notification connection go out before it closes.
        await notifications?.drain()
        if control !== nats { await control.drain() }
        controlConnection.withLock { $0 = nil }
    }

    /// The connection for control traffic (see `controlConnection`); `nats` if none can be opened.
    nonisolated var control: NATSConnection { controlConnection.withLock { $0 } ?? nats }

    private func openControlConnection() async -> NATSConnection {
        var options = nats.options
        options.name += "-control"
        do {
            let connection = try await NATSConnection(options: options)
            controlConnection.withLock { $0 = connection }
            return connection
        } catch {
            logger.warning(
                "no separate connection for control traffic; heartbeats share the intake connection",
                metadata: ["error": "\(error)"]
            )
            return nats
        }
    }

    // MARK: Intake

    nonisolated func handleSubmit(_ message: NATSMessage) async {
        let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
        guard mayAnswer(message, tenant: tenant) else { return }
        if message.header(SubmitBatch.header) == SubmitBatch.value {
            await handleSubmitBatch(message, tenant: tenant)
            return
        }
        guard message.payload.count <= maxRequestBytes else {
            reply(to: message.replyTo, tenant: tenant, rejection: tooLarge("payload", message.payload.count))
            return
        }
        let request: Hangar_V1_SubmitRequest
        do {
            request = try Hangar_V1_SubmitRequest(serializedBytes: message.payload, options: Self.decoding)
        } catch {
            reply(
                to: message.replyTo,
                tenant: tenant,
                rejection: Rejection(
                    .invalidRequest,
                    "payload",
                    "the payload is not a hangar.v1.SubmitRequest: \(error)"
                )
            )
            return
        }
        let trace = TraceContext(traceparent: message.header(TraceContext.header)) ?? .start()
        await admit(request, tenant: tenant, replyTo: message.replyTo, trace: trace)
    }

    /// Admits one submission: checks, then makes it durable in the intake stream, then answers.
    func admit(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String,
        replyTo: String?,
        trace: TraceContext = .start()
    ) async {
        guard let pending = await admission(request, tenant: tenant, replyTo: replyTo, trace: trace) else { return }
        let published: Result<JetStreamPublishAck, any Error>
        do {
            published = .success(
                try await publishIntake(
                    pending.encoded,
                    tenant: tenant,
                    jobID: pending.id,
                    trace: trace,
                    messageID: pending.key
                )
            )
        } catch {
            published = .failure(error)
        }
        await settleAdmission(pending, published)
    }

    /// The checks of an admission (validation, duplicate request id, rate, queue, store, a node that
    /// could run it), and the job's entry. Nil when the submission was answered here (rejected, or a
    /// duplicate). Suspends only to look a request id up in the store.
    func admission(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String,
        replyTo: String?,
        trace: TraceContext
    ) async -> PendingAdmission? {
        let policy = tenants.policy(for: tenant)
        let submission: ValidatedSubmission
        switch config.validator.validate(request, tenant: tenant, policy: policy) {
        case .failure(let rejection):
            auditGrantDenied(request, tenant: tenant, rejection: rejection)
            logger.debug(
                "rejected submission",
                metadata: [
                    "tenant": "\(tenant)", "field": "\(rejection.rejected.field)",
                    "reason": "\(rejection.rejected.message)",
                ]
            )
            reply(to: replyTo, tenant: tenant, rejection: rejection)
            return nil
        case .success(let valid):
            submission = valid
        }
        let key = submission.requestID.isEmpty ? nil : "\(submission.tenant)/\(submission.requestID)"
        if let key, await attachDuplicate(key: key, submission: submission, replyTo: replyTo) { return nil }

        let now = ContinuousClock.now
        var bucket = buckets[tenant] ?? TokenBucket(burst: policy.burst, now: now)
        let wait = bucket.take(rate: policy.rate, burst: policy.burst, now: now)
        buckets[tenant] = bucket
        if let wait {
            var rejection = Rejection(
                .rateLimited,
                "",
                "tenant '\(tenant)' is over its rate of \(policy.rate) submissions/s (burst \(Int(policy.burst)))"
            )
            rejection.rejected.retryAfterMs = UInt32(
                clamping: wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000
            )
            reply(to: replyTo, tenant: tenant, rejection: rejection)
            return nil
        }
        guard let encoded = try? request.serializedData() else {
            // Cannot happen with proto3 (it decoded); answered rather than dropped all the same.
            reply(to: replyTo, tenant: tenant, rejection: Rejection(.invalidRequest, "payload", "cannot re-encode"))
            return nil
        }
        let size = encoded.count
        if let rejection = byteBudget(tenant: tenant, size: size, policy: policy, now: now) {
            reply(to: replyTo, tenant: tenant, rejection: rejection)
            return nil
        }
        guard core.queue.queued(tenant: tenant) < policy.maxQueued else {
            var rejection = Rejection(
                .queueFull,
                "",
                "tenant '\(tenant)' already has \(core.queue.queued(tenant: tenant)) jobs waiting (max_queued \(policy.maxQueued))"
            )
            rejection.rejected.retryAfterMs = 1000
            reply(to: replyTo, tenant: tenant, rejection: rejection)
            return nil
        }
        if let failure = storeFailure {
            // Accepted work would pile up in the stream while the store cannot take it.
            var rejection = Rejection(
                .shuttingDown,
                "",
                "store unavailable: \(failure); the job was not accepted, retry later"
            )
            rejection.rejected.retryAfterMs = 1000
            reply(to: replyTo, tenant: tenant, rejection: rejection)
            return nil
        }
        let id = JobID.make()
        let placement = placementRequest(for: submission, jobID: id)
        if case .impossible(let why) = core.cluster.place(placement, policy: config.placementPolicy) {
            reply(to: replyTo, tenant: tenant, rejection: impossibleRejection(placement, why))
            return nil
        }
        let waiting = submission.wait && replyTo != nil
        var entry = JobEntry(
            id: id,
            submission: submission,
            request: placement,
            acceptedAt: now,
            waiters: waiting ? [replyTo!] : []
        )
        entry.trace = trace
        entry.bytes = size
        queuedBytes[tenant, default: 0] += size
        jobs[id] = entry
        if let key { byRequest[key] = id }
        if submission.spec.hasGrants || !submission.spec.network.allow.isEmpty {
            auditGrantGranted(request, submission.spec, tenant: tenant, jobID: id)
        }
        handle(.admitted(entry.spec))
        return PendingAdmission(
            id: id,
            key: key,
            submission: submission,
            encoded: encoded,
            replyTo: replyTo,
            waiting: waiting,
            trace: trace
        )
    }

    /// After the intake publish of an admitted submission: the job is durable and the tenant is
    /// answered, or (the publish failed) the job is dropped and the tenant told to retry.
    func settleAdmission(_ pending: PendingAdmission, _ outcome: Result<JetStreamPublishAck, any Error>) async {
        let id = pending.id
        let key = pending.key
        let submission = pending.submission
        let tenant = submission.tenant
        let replyTo = pending.replyTo
        let waiting = pending.waiting
        var published: JetStreamPublishAck?
        do {
            published = try outcome.get()
        } catch  where core.jobs.isCommitted(id) || committingIntake.contains(id) {
            // The PubAck was lost, but the intake consumer has the job in the store already, or is
            // storing it (if that commit fails, the entry is delivered again): accepted.
            logger.warning("intake publish unconfirmed but committed", metadata: ["job.id": "\(id)"])
        } catch {
            let held = forget(id)?.pendingAcks ?? []
            handle(.intakeFailed(jobID: id))
            if let key { byRequest.removeValue(forKey: key) }
            // A timed-out publish may still have been stored: never run what the tenant was refused.
            if let error = error as? NATSError, error.kind == .timeout { abandonedIntake.insert(id) }
            logger.error("could not accept job", metadata: ["job.id": "\(id)", "error": "\(error)"])
            var rejection = Rejection(
                .shuttingDown,
                "",
                "intake stream unavailable: \(storeFailureSummary(error)); the job was not accepted, retry later"
            )
            rejection.rejected.retryAfterMs = 1000
            for subject in [replyTo] + held.map(Optional.some) {
                reply(to: subject, tenant: tenant, rejection: rejection)
            }
            return
        }
        if let published, published.duplicate, let key {
            // Admitted before under this request id (another instance, before a restart, or an
            // earlier try whose publish timed out) and not yet in SQLite: answer with that job.
            let first = await originalJob(
                sequence: published.sequence,
                tenant: tenant,
                requestID: submission.requestID
            )
            if let first, abandonedIntake.remove(first) != nil {
                // The earlier try's publish timed out and the tenant was refused, but the stream
                // kept it and has not delivered it yet: taken on after all, now that the tenant
                // is told it was accepted.
                logger.notice("intake publish stored after all; accepted on retry", metadata: ["job.id": "\(first)"])
            } else if let first, await intakeWasDiscarded(first) {
                // That copy was read and discarded as refused: this retry goes in on its own.
                await republishAdmission(pending, replacing: first)
                return
            }
            let held = forget(id)?.pendingAcks ?? []
            handle(.intakeFailed(jobID: id))
            if byRequest[key] == id { byRequest.removeValue(forKey: key) }
            guard let original = first else {
                var rejection = Rejection(
                    .shuttingDown,
                    "",
                    "request id '\(submission.requestID)' is being accepted by another scheduler; retry"
                )
                rejection.rejected.retryAfterMs = 200
                for subject in [replyTo] + held.map(Optional.some) {
                    reply(to: subject, tenant: tenant, rejection: rejection)
                }
                return
            }
            if waiting, let replyTo, jobs[original] != nil {
                jobs[original]?.waiters.append(replyTo)
            } else {
                replyAccepted(replyTo, jobID: original, duplicate: true)
            }
            for subject in held { replyAccepted(subject, jobID: original, duplicate: true) }
            return
        }
        var held: [String] = []
        if let index = jobs.index(forKey: id) {
            let intake = published.flatMap { core.jobs.isCommitted(id) ? nil : ($0.sequence, pending.encoded) }
            held = jobs.inPlace(at: index) { entry in
                entry.durable = true
                if let intake { entry.intake = intake }
                defer { entry.pendingAcks = [] }
                return entry.pendingAcks
            }
        }
        for subject in held { replyAccepted(subject, jobID: id, duplicate: true) }
        logger.debug(
            "accepted",
            metadata: ["job.id": "\(id)", "tenant": "\(submission.tenant)", "trace.id": "\(pending.trace.traceID)"]
        )
        counters.accepted(tenant: submission.tenant)
        if !waiting, let replyTo {
            replyAccepted(replyTo, jobID: id, duplicate: false)
        }
        // Queued for placement once the intake consumer has committed it to SQLite (commitIntake).
    }

    /// Whether job `jobID`'s intake entry was read and discarded because its tenant had been
    /// refused (its publish timed out): this process remembers it, or the store audited it.
    func intakeWasDiscarded(_ jobID: String) async -> Bool {
        if discardedIntake.contains(jobID) { return true }
        guard (try? await store.job(id: jobID)) == nil else { return false }
        let events = (try? await store.auditEvents(jobID: jobID)) ?? []
        return events.contains { $0.event == "intake.abandoned" }
    }

    /// A retry whose request id the intake stream still holds under a job that was refused and
    /// discarded: published again under a message id of its own (`<key>/<job>`), so the stream
    /// stores it, then settled as any admission.
    func republishAdmission(_ pending: PendingAdmission, replacing discarded: String) async {
        logger.notice(
            "request id refused earlier and its entry discarded; this retry goes in on its own",
            metadata: ["job.id": "\(pending.id)", "discarded": "\(discarded)"]
        )
        let outcome: Result<JetStreamPublishAck, any Error>
        do {
            outcome = .success(
                try await publishIntake(
                    pending.encoded,
                    tenant: pending.submission.tenant,
                    jobID: pending.id,
                    trace: pending.trace,
                    messageID: (pending.key ?? "") + "/" + pending.id
                )
            )
        } catch {
            outcome = .failure(error)
        }
        await settleAdmission(pending, outcome)
    }

    func placementRequest(for submission: ValidatedSubmission, jobID: String) -> PlacementRequest {
        // The null runtime runs nothing: it holds a slot, no CPU or memory.
        let holdsResources = submission.spec.runtime != "null"
        var hasher = Hasher()
        hasher.combine(jobID)
        return PlacementRequest(
            runtime: submission.spec.runtime,
            template: submission.spec.template,
            labels: submission.labels,
            cpuMillis: holdsResources ? UInt64(submission.spec.limits.cpuMillis) : 0,
            memoryBytes: holdsResources ? submission.spec.limits.memoryBytes : 0,
            limits: submission.spec.limits,
            tieBreak: UInt64(bitPattern: Int64(hasher.finalize()))
        )
    }

    /// Answers a repeated request id with the original job. Returns false if the id is new.
    private func attachDuplicate(key: String, submission: ValidatedSubmission, replyTo: String?) async -> Bool {
        if let existing = byRequest[key], var entry = jobs[existing] {
            if submission.wait, let replyTo {
                entry.waiters.append(replyTo)
                jobs[existing] = entry
            } else if !entry.durable, let replyTo {
                entry.pendingAcks.append(replyTo)  // answered once the original is committed
                jobs[existing] = entry
            } else {
                replyAccepted(replyTo, jobID: existing, duplicate: true)
            }
            return true
        }
        let storedID = try? await store.jobID(tenant: submission.tenant, requestID: submission.requestID)
        // The actor may have admitted the same id while this lookup was suspended: check again,
        // found in the store or not (else both would insert and one would hit the unique key).
        if let existing = byRequest[key], jobs[existing] != nil {
            return await attachDuplicate(key: key, submission: submission, replyTo: replyTo)
        }
        guard let storedID else { return false }
        if submission.wait, let result = try? await store.job(id: storedID)?.result {
            send(replyTo, submitReply: .result(result))
        } else {
            replyAccepted(replyTo, jobID: storedID, duplicate: true)
        }
        return true
    }

    // MARK: Replies

    nonisolated func reply(to replyTo: String?, tenant: String, rejection: Rejection) {
        counters.rejected(tenant: tenant, reason: rejection.rejected.reason)
        send(replyTo, submitReply: .rejected(rejection.rejected))
    }

    nonisolated func replyAccepted(_ replyTo: String?, jobID: String, duplicate: Bool) {
        var accepted = Hangar_V1_Accepted()
        accepted.jobID = jobID
        accepted.duplicate = duplicate
        send(replyTo, submitReply: .accepted(accepted))
    }

    nonisolated func send(_ replyTo: String?, submitReply outcome: Hangar_V1_SubmitReply.OneOf_Outcome) {
        guard let replyTo else { return }
        var reply = Hangar_V1_SubmitReply()
        reply.outcome = outcome
        do {
            send(replyTo, encodedReply: try reply.serializedData())
        } catch {
            logger.warning("could not reply", metadata: ["nats.subject": "\(replyTo)", "error": "\(error)"])
        }
    }

    /// Sends a serialized `SubmitReply` to one waiter (or to its batch).
    nonisolated func send(_ replyTo: String, encodedReply reply: Data) {
        if answerBatched(replyTo, reply) { return }
        do {
            try nats.publish(replyTo, payload: ReplyFitting.fit(reply: reply, limit: maxReplyBytes))
        } catch {
            logger.warning("could not reply", metadata: ["nats.subject": "\(replyTo)", "error": "\(error)"])
        }
    }

    /// A short reason for a failed store write (SQLite's error, e.g. "database or disk is full").
    nonisolated func storeFailureSummary(_ error: any Error) -> String {
        let text = "\(error)"
        return text.count > 300 ? String(text.prefix(300)) + "…" : text
    }

    nonisolated func modificationDate(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }
}
