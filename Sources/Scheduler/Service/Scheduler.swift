import Foundation
import HangarNATS
import HangarShared
import Logging

/// The central scheduler: takes submissions, places them on nodes, stores and answers results.
///
/// Subjects: `hangar.submit.*` (queue group), `hangar.node.*.heartbeat`, `hangar.node.*.result`
/// (queue group), `hangar.admin.*` (queue group). See `Subjects`.
public actor Scheduler {
    let config: SchedulerConfig
    let nats: NATSConnection
    public nonisolated let store: Store
    let logger: Logger
    var cluster: ClusterState
    var jobs: [String: JobEntry] = [:]
    var byRequest: [String: String] = [:]
    var queue: [String] = []

    public init(config: SchedulerConfig, nats: NATSConnection, store: Store, logger: Logger) {
        self.config = config
        self.nats = nats
        self.store = store
        self.logger = logger
        self.cluster = ClusterState(downAfter: config.nodeDownAfter)
    }

    /// Serves until the surrounding task is cancelled.
    public func run() async throws {
        let submits = try nats.subscribe(Subjects.submitWildcard, queueGroup: Subjects.schedulerQueueGroup)
        let heartbeats = try nats.subscribe(Subjects.heartbeatWildcard)
        let results = try nats.subscribe(Subjects.nodeResultWildcard, queueGroup: Subjects.schedulerQueueGroup)
        let admin = try nats.subscribe(Subjects.admin("*"), queueGroup: Subjects.schedulerQueueGroup)
        defer {
            for subscription in [submits, heartbeats, results, admin] { subscription.unsubscribe() }
        }
        try await nats.flush()
        logger.info("scheduler serving", metadata: ["db": "\(config.databasePath)"])
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in submits { inner.addTask { await self.handleSubmit(message) } }
                }
            }
            group.addTask {
                for await message in heartbeats { await self.handleHeartbeat(message) }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in results { inner.addTask { await self.handleNodeResult(message) } }
                }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in admin { inner.addTask { await self.handleAdmin(message) } }
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    await self.pump()
                }
            }
        }
    }

    // MARK: Intake

    nonisolated func handleSubmit(_ message: NATSMessage) async {
        let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
        let request: Hangar_V1_SubmitRequest
        do {
            request = try Hangar_V1_SubmitRequest(serializedBytes: message.payload)
        } catch {
            reply(
                to: message.replyTo,
                rejection: Rejection(
                    .invalidRequest,
                    "payload",
                    "the payload is not a hangar.v1.SubmitRequest: \(error)"
                )
            )
            return
        }
        switch config.validator.validate(request, tenant: tenant) {
        case .failure(let rejection):
            logger.debug(
                "rejected submission",
                metadata: [
                    "tenant": "\(tenant)", "field": "\(rejection.rejected.field)",
                    "reason": "\(rejection.rejected.message)",
                ]
            )
            reply(to: message.replyTo, rejection: rejection)
        case .success(let submission):
            await admit(submission, replyTo: message.replyTo)
        }
    }

    func admit(_ submission: ValidatedSubmission, replyTo: String?) async {
        let key = submission.requestID.isEmpty ? nil : "\(submission.tenant)/\(submission.requestID)"
        if let key, await attachDuplicate(key: key, submission: submission, replyTo: replyTo) { return }
        guard queue.count < config.maxQueued else {
            var rejection = Rejection(.queueFull, "", "the scheduler queue holds \(queue.count) jobs; retry later")
            rejection.rejected.retryAfterMs = 1000
            reply(to: replyTo, rejection: rejection)
            return
        }
        if case .impossible(let why) = cluster.place(
            runtime: submission.spec.runtime,
            labels: submission.labels,
            at: .now
        ) {
            reply(to: replyTo, rejection: Rejection(.noCapacity, "runtime", why))
            return
        }
        let id = JobID.make()
        let waiting = submission.wait && replyTo != nil
        let entry = JobEntry(id: id, submission: submission, acceptedAt: .now, waiters: waiting ? [replyTo!] : [])
        jobs[id] = entry
        if let key { byRequest[key] = id }
        let stored = StoredJob(
            id: id,
            tenant: submission.tenant,
            requestID: submission.requestID.isEmpty ? nil : submission.requestID,
            spec: submission.spec,
            priority: submission.priority,
            submittedAt: unixMilliseconds()
        )
        do {
            try await store.write(.jobAccepted(stored))
        } catch {
            jobs.removeValue(forKey: id)
            if let key { byRequest.removeValue(forKey: key) }
            logger.error("could not record job", metadata: ["job.id": "\(id)", "error": "\(error)"])
            reply(
                to: replyTo,
                rejection: Rejection(.unspecified, "", "the scheduler could not record the job: \(error)")
            )
            return
        }
        logger.debug("accepted", metadata: ["job.id": "\(id)", "tenant": "\(submission.tenant)"])
        if !waiting, let replyTo {
            var accepted = Hangar_V1_Accepted()
            accepted.jobID = id
            send(replyTo, submitReply: .accepted(accepted))
        }
        queue.append(id)
        pump()
    }

    /// Answers a repeated request id with the original job. Returns false if the id is new.
    private func attachDuplicate(key: String, submission: ValidatedSubmission, replyTo: String?) async -> Bool {
        if let existing = byRequest[key], var entry = jobs[existing] {
            if submission.wait, let replyTo {
                entry.waiters.append(replyTo)
                jobs[existing] = entry
            } else {
                replyAccepted(replyTo, jobID: existing, duplicate: true)
            }
            return true
        }
        guard let storedID = try? await store.jobID(tenant: submission.tenant, requestID: submission.requestID) else {
            return false
        }
        if let existing = byRequest[key], jobs[existing] != nil {
            return await attachDuplicate(key: key, submission: submission, replyTo: replyTo)
        }
        if submission.wait, let result = try? await store.job(id: storedID)?.result {
            send(replyTo, submitReply: .result(result))
        } else {
            replyAccepted(replyTo, jobID: storedID, duplicate: true)
        }
        return true
    }

    // MARK: Placement and dispatch

    /// Places every queued job that fits; rejects those that waited too long or cannot fit.
    func pump() {
        guard !queue.isEmpty else { return }
        let now = ContinuousClock.now
        var remaining: [String] = []
        // Jobs with the same runtime and labels that could not be placed: the rest will not fit either.
        var blocked: [PlacementKey: String] = [:]
        for id in queue {
            guard var entry = jobs[id] else { continue }
            let key = PlacementKey(runtime: entry.submission.spec.runtime, labels: entry.submission.labels)
            let placement: ClusterState.Placement
            if let why = blocked[key] {
                placement = .wait(why)
            } else {
                placement = cluster.place(runtime: key.runtime, labels: key.labels, at: now)
                if case .wait(let why) = placement { blocked[key] = why }
            }
            switch placement {
            case .node(let nodeID):
                cluster.reserve(nodeID)
                entry.attempt += 1
                entry.nodeID = nodeID
                entry.placedAt = now
                jobs[id] = entry
                let assignment = makeAssignment(entry)
                Task { await self.dispatch(assignment, to: nodeID, decidedAt: now) }
            case .wait(let why):
                if now - entry.acceptedAt >= config.queueTimeout {
                    reject(entry, Rejection(.noCapacity, "", "no capacity within \(config.queueTimeout): \(why)"))
                } else {
                    entry.lastPlacementProblem = why
                    jobs[id] = entry
                    remaining.append(id)
                }
            case .impossible(let why):
                reject(entry, Rejection(.noCapacity, "runtime", why))
            }
        }
        queue = remaining
    }

    private struct PlacementKey: Hashable {
        var runtime: String
        var labels: [String: String]
    }

    private func makeAssignment(_ entry: JobEntry) -> Hangar_V1_Assignment {
        var assignment = Hangar_V1_Assignment()
        assignment.jobID = entry.id
        assignment.tenant = entry.submission.tenant
        assignment.attempt = entry.attempt
        assignment.spec = entry.submission.spec
        assignment.assignedAtMs = unixMilliseconds()
        return assignment
    }

    nonisolated func dispatch(
        _ assignment: Hangar_V1_Assignment,
        to nodeID: String,
        decidedAt: ContinuousClock.Instant
    ) async {
        let jobID = assignment.jobID
        let attempt = assignment.attempt
        // Not awaited: the group committer applies writes in order, so this lands before the result
        // of the attempt, and dispatch does not wait for a commit.
        let store = self.store
        let logger = self.logger
        Task {
            do {
                try await store.write(
                    .attemptPlaced(jobID: jobID, attempt: attempt, nodeID: nodeID, at: unixMilliseconds())
                )
            } catch {
                logger.error("could not record attempt", metadata: ["job.id": "\(jobID)", "error": "\(error)"])
            }
        }
        do {
            let answer = try await nats.request(
                Subjects.assign(node: nodeID),
                payload: try assignment.serializedData(),
                timeout: config.assignTimeout
            )
            let decoded = try Hangar_V1_AssignReply(serializedBytes: answer.payload)
            switch decoded.outcome {
            case .ack:
                await assigned(jobID: jobID, attempt: attempt, decidedAt: decidedAt)
            case .refused(let refused):
                await assignmentFailed(
                    jobID: jobID,
                    attempt: attempt,
                    nodeID: nodeID,
                    reason: "refused (\(refused.reason)): \(refused.message)",
                    skipNode: true
                )
            case nil:
                await assignmentFailed(
                    jobID: jobID,
                    attempt: attempt,
                    nodeID: nodeID,
                    reason: "empty reply",
                    skipNode: true
                )
            }
        } catch {
            await assignmentFailed(jobID: jobID, attempt: attempt, nodeID: nodeID, reason: "\(error)", skipNode: true)
        }
    }

    func assigned(jobID: String, attempt: UInt32, decidedAt: ContinuousClock.Instant) {
        guard var entry = jobs[jobID], entry.attempt == attempt else { return }
        entry.placementMilliseconds = decidedAt.milliseconds(until: .now)
        jobs[jobID] = entry
    }

    func assignmentFailed(jobID: String, attempt: UInt32, nodeID: String, reason: String, skipNode: Bool) async {
        cluster.release(nodeID)
        if skipNode { cluster.markFull(nodeID) }
        logger.info(
            "assignment failed; trying again",
            metadata: ["job.id": "\(jobID)", "attempt": "\(attempt)", "node.id": "\(nodeID)", "reason": "\(reason)"]
        )
        guard var entry = jobs[jobID], entry.attempt == attempt, !entry.finishing else { return }
        entry.nodeID = nil
        jobs[jobID] = entry
        queue.insert(jobID, at: 0)
        pump()
        try? await store.write(.attemptEnded(jobID: jobID, attempt: attempt, status: "REFUSED", detail: reason))
    }

    // MARK: Node reports

    func handleHeartbeat(_ message: NATSMessage) {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init), Subjects.isValidToken(nodeID),
            let heartbeat = try? Hangar_V1_NodeHeartbeat(serializedBytes: message.payload)
        else {
            logger.warning("ignored a malformed heartbeat", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        let known = cluster.nodes[nodeID] != nil
        cluster.record(heartbeat, from: nodeID, at: .now)
        if !known {
            logger.info("node joined", metadata: ["node.id": "\(nodeID)", "slots": "\(heartbeat.capacity.slotsTotal)"])
        }
        pump()
    }

    nonisolated func handleNodeResult(_ message: NATSMessage) async {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init),
            let attemptResult = try? Hangar_V1_AttemptResult(serializedBytes: message.payload)
        else {
            logger.warning("ignored a malformed node result", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        guard let ack = await finish(attemptResult, from: nodeID) else { return }  // not stored: the node resends
        if let replyTo = message.replyTo, let payload = try? ack.serializedData() {
            try? nats.publish(replyTo, payload: payload)
        }
    }

    /// Stores the result of the current attempt and answers the tenant. Returns nil if it could not
    /// be stored (the node will send it again).
    func finish(_ report: Hangar_V1_AttemptResult, from nodeID: String) async -> Hangar_V1_ResultAck? {
        var ack = Hangar_V1_ResultAck()
        ack.jobID = report.jobID
        ack.attempt = report.attempt
        guard var entry = jobs[report.jobID], entry.attempt == report.attempt, entry.nodeID == nodeID else {
            if let stored = try? await store.job(id: report.jobID)?.result, stored.attempt == report.attempt,
                stored.nodeID == nodeID
            {
                return ack  // a resend of a result we already have
            }
            if let entry = jobs[report.jobID], entry.finishing, entry.attempt == report.attempt {
                return ack  // the same result is being stored right now
            }
            ack.stale = true
            logger.info(
                "stale result ignored",
                metadata: ["job.id": "\(report.jobID)", "attempt": "\(report.attempt)", "node.id": "\(nodeID)"]
            )
            try? await store.write(
                .staleResult(
                    jobID: report.jobID,
                    attempt: report.attempt,
                    nodeID: nodeID,
                    status: report.status.displayName
                )
            )
            return ack
        }
        if entry.finishing { return ack }
        entry.finishing = true
        jobs[report.jobID] = entry
        let result = makeResult(entry, report, nodeID: nodeID)
        do {
            try await store.write(.jobFinished(result))
        } catch {
            logger.error("could not store result", metadata: ["job.id": "\(report.jobID)", "error": "\(error)"])
            jobs[report.jobID]?.finishing = false
            return nil
        }
        complete(entry, with: result)
        cluster.release(nodeID)
        pump()
        return ack
    }

    private func makeResult(_ entry: JobEntry, _ report: Hangar_V1_AttemptResult, nodeID: String) -> Hangar_V1_Result {
        var result = Hangar_V1_Result()
        result.jobID = entry.id
        result.tenant = entry.submission.tenant
        result.requestID = entry.submission.requestID
        result.status = report.status
        result.exitCode = report.exitCode
        result.signal = report.signal
        result.stdout = report.stdout
        result.stderr = report.stderr
        result.stdoutTruncated = report.stdoutTruncated
        result.stderrTruncated = report.stderrTruncated
        result.usage = report.usage
        result.nodeID = nodeID
        result.attempt = report.attempt
        result.message = report.message
        let now = ContinuousClock.now
        result.timings.queuedMs = entry.acceptedAt.milliseconds(until: entry.placedAt ?? now)
        result.timings.placementMs = entry.placementMilliseconds
        result.timings.startMs = report.startMs
        result.timings.runMs = report.runMs
        result.timings.totalMs = entry.acceptedAt.milliseconds(until: now)
        result.finishedAtMs = unixMilliseconds()
        return result
    }

    private func reject(_ entry: JobEntry, _ rejection: Rejection) {
        var result = Hangar_V1_Result()
        result.jobID = entry.id
        result.tenant = entry.submission.tenant
        result.requestID = entry.submission.requestID
        result.status = .rejected
        result.rejected = rejection.rejected
        result.message = rejection.rejected.message
        result.attempt = entry.attempt
        result.timings.totalMs = entry.acceptedAt.milliseconds(until: .now)
        result.finishedAtMs = unixMilliseconds()
        complete(entry, with: result)
        let store = self.store
        let logger = self.logger
        Task {
            do { try await store.write(.jobRejected(result)) } catch {
                logger.error("could not store rejection", metadata: ["job.id": "\(entry.id)", "error": "\(error)"])
            }
        }
    }

    /// Forgets the finished job and delivers its result to every waiter and the result subject.
    private func complete(_ entry: JobEntry, with result: Hangar_V1_Result) {
        jobs.removeValue(forKey: entry.id)
        if let key = entry.requestKey { byRequest.removeValue(forKey: key) }
        for waiter in entry.waiters {
            send(waiter, submitReply: .result(result))
        }
        if let payload = try? result.serializedData() {
            try? nats.publish(Subjects.result(tenant: entry.submission.tenant, job: entry.id), payload: payload)
        }
        logger.debug(
            "finished",
            metadata: [
                "job.id": "\(entry.id)", "status": "\(result.status.displayName)", "node.id": "\(result.nodeID)",
            ]
        )
    }

    // MARK: Replies

    nonisolated func reply(to replyTo: String?, rejection: Rejection) {
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
            try nats.publish(replyTo, payload: try reply.serializedData())
        } catch {
            logger.warning("could not reply", metadata: ["nats.subject": "\(replyTo)", "error": "\(error)"])
        }
    }
}
