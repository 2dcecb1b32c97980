import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Makes an admitted submission durable: publishes it into `HANGAR_SUBMISSIONS` (message id
    /// `<tenant>/<request id>`, header `Hangar-Job-Id`) and returns the server's PubAck. Only then
    /// may the tenant hear `Accepted`.
    func publishIntake(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String,
        jobID: String,
        trace: TraceContext,
        messageID: String?
    ) async throws -> JetStreamPublishAck {
        try await nats.jetStreamPublish(
            Subjects.intake(tenant: tenant),
            payload: try request.serializedData(),
            messageID: messageID,
            headers: [
                Streams.jobIDHeader: jobID, TraceContext.header: trace.traceparent,
                Self.submittedAtHeader: String(unixMilliseconds()),
            ],
            timeout: config.intakePublishTimeout
        )
    }

    static let submittedAtHeader = "Hangar-Submitted-At"

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

    /// One batch from `HANGAR_SUBMISSIONS`: every job not yet stored is inserted (job row and
    /// `job.accepted` audit row) in ONE transaction, synced to disk; then the jobs are queued for
    /// placement and the messages acknowledged. Redeliveries (a restart between commit and ack, or
    /// another scheduler instance's admissions) insert nothing twice. Returns false if the batch
    /// could not be stored; its messages come again and new submissions are refused meanwhile.
    func commitIntake(_ messages: [JetStreamMessage]) async -> Bool {
        var writes: [StoreWrite] = []
        var outcomes: [(JetStreamMessage, StreamOutcome)] = []
        var fresh: [String] = []
        for stream in messages {
            let message = stream.message
            let tenant = String(Subjects.token(message.subject, at: 2) ?? "")
            guard Subjects.isValidToken(tenant), let jobID = message.header(Streams.jobIDHeader),
                Subjects.isValidToken(jobID),
                let request = try? Hangar_V1_SubmitRequest(serializedBytes: message.payload)
            else {
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
            if abandonedIntake.remove(jobID) != nil {
                // Its publish timed out and the tenant was told it was not accepted.
                writes.append(
                    .audit(
                        actor: "scheduler",
                        event: "intake.abandoned",
                        jobID: jobID,
                        detail: "stored by the stream after the tenant was refused; not run"
                    )
                )
                outcomes.append((stream, .discard))
                continue
            }
            if let entry = jobs[jobID] {
                if entry.committed || fresh.contains(jobID) {
                    outcomes.append((stream, .ack))
                    continue
                }
            } else {
                // Not admitted by this process (a restart, or another instance): unless the store
                // already has it, take it on from the stream.
                do {
                    if try await store.job(id: jobID) != nil {
                        outcomes.append((stream, .ack))
                        continue
                    }
                    if !request.requestID.isEmpty,
                        try await store.jobID(tenant: tenant, requestID: request.requestID) != nil
                    {
                        outcomes.append((stream, .ack))  // another job holds this request id
                        continue
                    }
                } catch {
                    outcomes.append((stream, .retry))
                    continue
                }
                guard jobs[jobID] == nil else {
                    outcomes.append((stream, .retry))  // admitted meanwhile; next delivery
                    continue
                }
                jobs[jobID] = restoredEntry(request, tenant: tenant, jobID: jobID, message: message)
                if let key = jobs[jobID]?.requestKey { byRequest[key] = jobID }
            }
            guard let entry = jobs[jobID] else { continue }
            var stored = StoredJob(
                id: jobID,
                tenant: tenant,
                requestID: request.requestID.isEmpty ? nil : request.requestID,
                spec: entry.submission.spec,
                priority: entry.submission.priority,
                submittedAt: message.header(Self.submittedAtHeader).flatMap { Int64($0) } ?? unixMilliseconds()
            )
            stored.request = request
            writes.append(.intake(stored))
            fresh.append(jobID)
            outcomes.append((stream, .ack))
        }
        if !writes.isEmpty {
            do {
                try await store.write(.streamBatch(writes))
            } catch {
                storeFailure = storeFailureSummary(error)
                logger.error("could not store submissions", metadata: ["count": "\(fresh.count)", "error": "\(error)"])
                for (stream, outcome) in outcomes { settle(stream, outcome == .discard ? .discard : .retry) }
                return false
            }
        }
        storeFailure = nil
        for (stream, outcome) in outcomes { settle(stream, outcome) }
        for jobID in fresh { queueCommitted(jobID) }
        pump()
        return true
    }

    /// A committed job goes to its tenant's queue (or, cancelled while being committed, ends).
    private func queueCommitted(_ jobID: String) {
        guard var entry = jobs[jobID] else { return }
        entry.committed = true
        jobs[jobID] = entry
        if entry.cancelRequested {
            finishWithoutNode(entry, status: .cancelled, message: "cancelled by tenant \(entry.tenant)")
            return
        }
        if entry.invalidAfterRestart {
            finishRejected(
                entry,
                Rejection(.invalidRequest, "", "taken from the intake stream, the job no longer passes validation")
            )
            return
        }
        jobs[jobID]?.sequence = queue.enqueue(tenant: entry.tenant, jobID: jobID, priority: entry.submission.priority)
    }

    /// The entry for an intake message this process did not admit (validated again; a request
    /// that no longer passes is stored and then rejected, never dropped silently).
    private func restoredEntry(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String,
        jobID: String,
        message: NATSMessage
    ) -> JobEntry {
        let trace = TraceContext(traceparent: message.header(TraceContext.header)) ?? .start()
        let policy = tenants.policy(for: tenant)
        if case .success(let submission) = config.validator.validate(request, tenant: tenant, policy: policy) {
            var entry = JobEntry(
                id: jobID,
                submission: submission,
                request: placementRequest(for: submission, jobID: jobID),
                acceptedAt: .now,
                waiters: []
            )
            entry.trace = trace
            entry.durable = true
            return entry
        }
        var entry = JobEntry(
            id: jobID,
            submission: ValidatedSubmission(
                tenant: tenant,
                requestID: request.requestID,
                spec: Hangar_V1_JobSpec(),
                priority: 0,
                labels: [:],
                wait: false,
                maxAttempts: 1,
                backoff: .zero
            ),
            request: PlacementRequest(runtime: ""),
            acceptedAt: .now,
            waiters: []
        )
        entry.durable = true
        entry.invalidAfterRestart = true
        return entry
    }
}
