import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Makes an admitted submission durable: publishes it into `HANGAR_SUBMISSIONS` and returns the
    /// server's PubAck. Only then may the tenant hear `Accepted`. A submission with a request id
    /// goes alone with the message id `<tenant>/<request id>` (the stream de-duplicates replays,
    /// also across scheduler instances); others go through `intakeOutbox`, grouped under load.
    func publishIntake(
        _ request: Data,
        tenant: String,
        jobID: String,
        trace: TraceContext,
        messageID: String?
    ) async throws -> JetStreamPublishAck {
        let entry = intakeEntry(request, tenant: tenant, jobID: jobID, trace: trace)
        guard let messageID else { return try await intakeOutbox.publish(entry) }
        return try await nats.jetStreamPublish(
            Subjects.intake(tenant: tenant),
            payload: entry.request,
            messageID: messageID,
            headers: [
                Streams.jobIDHeader: jobID, TraceContext.header: entry.traceparent,
                Streams.submittedAtHeader: String(entry.submittedAtMs),
            ],
            timeout: config.intakePublishTimeout,
            waitForLeader: true
        )
    }

    /// What the intake stream keeps of an admitted submission (`request` serialized).
    nonisolated func intakeEntry(
        _ request: Data,
        tenant: String,
        jobID: String,
        trace: TraceContext
    ) -> IntakeOutbox.Entry {
        IntakeOutbox.Entry(
            tenant: tenant,
            jobID: jobID,
            request: request,
            traceparent: trace.traceparent,
            submittedAtMs: unixMilliseconds()
        )
    }

    /// How often accepted submissions that have not reached the store are looked at.
    static let intakeCheckInterval = Duration.seconds(2)

    /// Accepted submissions that have not reached the store after ``SchedulerConfig/intakeLossGrace``
    /// (the tenant was told `Accepted`): each is looked up in the intake stream at the sequence
    /// its PubAck named. Still there, it waits for the consumer; gone (a JetStream cluster lost a
    /// message it had acknowledged, as a kill -9 of its servers in turn once did here), it is
    /// published again, alone under a message id of its own, and taken from the stream as any
    /// submission. What reached the store meanwhile lets go of the request it kept. Only the
    /// leader acts; a stream that does not answer is asked again at the next check.
    func recoverLostIntake(now: ContinuousClock.Instant) async {
        var stored: [String] = []
        var suspects: [(id: String, sequence: UInt64)] = []
        for (id, entry) in jobs {
            guard let intake = entry.intake else { continue }
            if core.jobs.isCommitted(id) {
                stored.append(id)
            } else if !committingIntake.contains(id), now - entry.acceptedAt >= config.intakeLossGrace {
                suspects.append((id, intake.sequence))
            }
        }
        for id in stored { jobs[id]?.intake = nil }
        guard !suspects.isEmpty, let jetStream, config.holdsLease?() ?? true else { return }
        for suspect in suspects.sorted(by: { $0.id < $1.id }).prefix(100) {
            let held: NATSMessage?
            do {
                held = try await jetStream.message(stream: Streams.submissions, sequence: suspect.sequence)
            } catch {
                return  // the stream does not answer: next check
            }
            guard held == nil else { continue }  // still in the stream: the consumer has not come to it yet
            // Looked at again after the wait: stored, or being stored, meanwhile?
            guard let entry = jobs[suspect.id], let intake = entry.intake, intake.sequence == suspect.sequence,
                !core.jobs.isCommitted(suspect.id), !committingIntake.contains(suspect.id)
            else { continue }
            logger.warning(
                "the intake stream no longer holds an accepted submission that is not stored; publishing it again",
                metadata: ["job.id": "\(suspect.id)", "stream.sequence": "\(suspect.sequence)"]
            )
            do {
                let ack = try await publishIntake(
                    intake.request,
                    tenant: entry.tenant,
                    jobID: suspect.id,
                    trace: entry.trace,
                    messageID: "\(suspect.id)/again-\(unixMilliseconds())"
                )
                if jobs[suspect.id]?.intake != nil { jobs[suspect.id]?.intake?.sequence = ack.sequence }
                enqueueAudit(
                    actor: "scheduler",
                    event: "intake.republished",
                    jobID: suspect.id,
                    detail:
                        "accepted, not stored, and no longer in the intake stream at sequence \(suspect.sequence): published again as sequence \(ack.sequence)"
                )
            } catch {
                logger.warning(
                    "could not publish the submission again; trying at the next check",
                    metadata: ["job.id": "\(suspect.id)", "error": "\(error)"]
                )
            }
        }
    }

    /// The job a de-duplicated publish (`duplicate` PubAck) stands for: read from the stream at the
    /// original's sequence, or, once the stream has handed it over, from SQLite.
    func originalJob(sequence: UInt64, tenant: String, requestID: String) async -> String? {
        if let jetStream, let original = try? await jetStream.message(stream: Streams.submissions, sequence: sequence),
            let id = original.header(Streams.jobIDHeader)
        {
            return id
        }
        return try? await store.jobID(tenant: tenant, requestID: requestID)
    }

    /// One submission read back from the intake stream.
    struct IntakeItem {
        var jobID: String
        /// The serialized `SubmitRequest` (decoded only for a job this process did not admit).
        var request: Data
        var traceparent: String?
        var submittedAtMs: Int64?
    }

    /// The submissions one intake message carries: one `SubmitRequest` (job id, trace and time in
    /// headers) or an `IntakeBatch` (header `Hangar-Intake: batch`). Nil if it is neither, or if any
    /// job id is not a valid token. The requests themselves are not decoded here.
    nonisolated static func intakeItems(in message: NATSMessage) -> [IntakeItem]? {
        let items: [IntakeItem]
        if message.header(IntakeBatch.header) == IntakeBatch.value {
            guard let batch = try? Hangar_V1_IntakeBatch(serializedBytes: message.payload) else { return nil }
            var decoded: [IntakeItem] = []
            decoded.reserveCapacity(batch.entries.count)
            for entry in batch.entries {
                decoded.append(
                    IntakeItem(
                        jobID: entry.jobID,
                        request: entry.request,
                        traceparent: entry.traceparent,
                        submittedAtMs: entry.submittedAtMs
                    )
                )
            }
            items = decoded
        } else {
            guard let jobID = message.header(Streams.jobIDHeader) else { return nil }
            items = [
                IntakeItem(
                    jobID: jobID,
                    request: message.payload,
                    traceparent: message.header(TraceContext.header),
                    submittedAtMs: message.header(Streams.submittedAtHeader).flatMap { Int64($0) }
                )
            ]
        }
        guard !items.isEmpty, items.allSatisfy({ Subjects.isValidToken($0.jobID) }) else { return nil }
        return items
    }

    /// One batch from `HANGAR_SUBMISSIONS` (each message one submission or a group of them): every
    /// job not yet stored is inserted (job row and `job.accepted` audit row) in ONE transaction,
    /// synced to disk; then the jobs are queued for placement and the messages acknowledged.
    /// Redeliveries (a restart between commit and ack, or another scheduler instance's admissions)
    /// insert nothing twice. Returns at once, with a task that ends once the batch is committed and
    /// settled: false if it could not be stored (its messages come again, and new submissions are
    /// refused meanwhile).
    func commitIntake(_ messages: [JetStreamMessage]) async -> Task<Bool, Never> {
        var writes: [StoreWrite] = []
        var outcomes: [(JetStreamMessage, StreamOutcome)] = []
        var fresh: [String] = []
        for stream in messages {
            let message = stream.message
            let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
            guard Subjects.isValidToken(tenant), let items = Self.intakeItems(in: message) else {
                logger.warning("discarded a malformed intake message", metadata: ["nats.subject": "\(message.subject)"])
                writes.append(
                    .audit(
                        actor: "scheduler",
                        event: "intake.malformed",
                        jobID: nil,
                        detail: "stream sequence \(stream.sequence) on \(message.subject) is not an intake message"
                    )
                )
                outcomes.append((stream, .discard))
                continue
            }
            var itemOutcomes: [StreamOutcome] = []
            for item in items {
                let outcome = await takeIntake(item, tenant: tenant, writes: &writes, fresh: &fresh)
                itemOutcomes.append(outcome)
            }
            // The message comes again if any of its jobs must; it is discarded only if all are.
            let outcome: StreamOutcome =
                itemOutcomes.contains(.retry) ? .retry : itemOutcomes.allSatisfy { $0 == .discard } ? .discard : .ack
            outcomes.append((stream, outcome))
        }
        return commitStreamBatch(writes, outcomes) { [outcomes, fresh] scheduler, error in
            scheduler.intakeCommitted(error: error, outcomes: outcomes, fresh: fresh)
        }
    }

    /// After the commit of an intake batch: acknowledge its messages and queue its jobs, or, if it
    /// failed, refuse new submissions until a commit succeeds and have the messages delivered again.
    private func intakeCommitted(
        error: (any Error)?,
        outcomes: [(JetStreamMessage, StreamOutcome)],
        fresh: [String]
    ) -> Bool {
        for jobID in fresh { committingIntake.remove(jobID) }
        if let error {
            storeFailure = storeFailureSummary(error)
            logger.error("could not store submissions", metadata: ["count": "\(fresh.count)", "error": "\(error)"])
            for (stream, outcome) in outcomes { settle(stream, outcome == .discard ? .discard : .retry) }
            return false
        }
        storeFailure = nil
        for (stream, outcome) in outcomes { settle(stream, outcome) }
        handle(fresh.map { .intakeCommitted(jobID: $0) })
        return true
    }

    /// Decides one submission read from the stream: stored now (its writes appended), already
    /// stored (`ack`), abandoned (`discard`), or to be read again later (`retry`).
    private func takeIntake(
        _ item: IntakeItem,
        tenant: String,
        writes: inout [StoreWrite],
        fresh: inout [String]
    ) async -> StreamOutcome {
        let jobID = item.jobID
        if abandonedIntake.remove(jobID) != nil {
            // Its publish timed out and the tenant was told it was not accepted.
            discardedIntake.insert(jobID)
            writes.append(
                .audit(
                    actor: "scheduler",
                    event: "intake.abandoned",
                    jobID: jobID,
                    detail: "stored by the stream after the tenant was refused; not run"
                )
            )
            return .discard
        }
        if committingIntake.contains(jobID) {
            return .retry  // being committed from an earlier delivery; ack this copy once that is done
        }
        if jobs.index(forKey: jobID) != nil {  // not `jobs[jobID]`, which copies the entry out
            if core.jobs.isCommitted(jobID) { return .ack }
        } else {
            // Not admitted by this process (a restart, or another instance): unless the store
            // already has it, take it on from the stream.
            guard let request = try? Hangar_V1_SubmitRequest(serializedBytes: item.request) else {
                writes.append(
                    .audit(
                        actor: "scheduler",
                        event: "intake.malformed",
                        jobID: jobID,
                        detail: "the intake entry of job \(jobID) is not a hangar.v1.SubmitRequest; not run"
                    )
                )
                return .discard
            }
            do {
                if try await store.job(id: jobID) != nil { return .ack }
                if !request.requestID.isEmpty,
                    try await store.jobID(tenant: tenant, requestID: request.requestID) != nil
                {
                    return .ack  // another job holds this request id
                }
            } catch {
                return .retry
            }
            guard jobs.index(forKey: jobID) == nil else { return .retry }  // admitted meanwhile; next delivery
            let taken = entry(
                for: request,
                tenant: tenant,
                jobID: jobID,
                trace: TraceContext(traceparent: item.traceparent) ?? .start(),
                invalid: "taken from the intake stream, the job no longer passes validation"
            )
            jobs[jobID] = taken.entry
            if let key = taken.entry.requestKey { byRequest[key] = jobID }
            handle(.admitted(taken.spec))
        }
        guard let index = jobs.index(forKey: jobID) else { return .ack }
        let (requestID, spec, priority) = jobs.inPlace(at: index) {
            ($0.submission.requestID, $0.submission.spec, $0.submission.priority)
        }
        var stored = StoredJob(
            id: jobID,
            tenant: tenant,
            requestID: requestID.isEmpty ? nil : requestID,
            spec: spec,
            priority: priority,
            submittedAt: item.submittedAtMs ?? unixMilliseconds()
        )
        stored.requestData = item.request
        writes.append(.intake(stored))
        fresh.append(jobID)
        committingIntake.insert(jobID)
        return .ack
    }
}
