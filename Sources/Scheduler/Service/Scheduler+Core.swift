import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Feeds `event` to the core at the current time and performs what it decides. Store writes go
    /// to the group committer together, in the order decided.
    func handle(_ event: CoreEvent) {
        var batch: [StoreWrite]? = nil
        perform(core.handle(event, now: .now), into: &batch)
    }

    /// Feeds events that arrived together (see ``SchedulerCore/handle(_:now:)-([CoreEvent],_)``).
    func handle(_ events: [CoreEvent]) {
        guard !events.isEmpty else { return }
        var batch: [StoreWrite]? = nil
        perform(core.handle(events, now: .now), into: &batch)
    }

    /// Performs the core's actions in order. With `batch` non-nil, the store writes are appended to
    /// it (a stream batch committed in one transaction; the caller reports its finished jobs'
    /// commits to the core), else they are queued for the group commit together, once the actions
    /// are performed (a placement round's records share one transaction, and when they are all the
    /// round queued, they are deferrable: the next write queued takes them along). Either way the writes
    /// keep the order decided: the sandbox paths, which queue their own, go after what came
    /// before them. Nothing else here waits for a write.
    func perform(_ actions: [CoreAction], into batch: inout [StoreWrite]?) {
        var queued: [(StoreWrite, whenCommitted: @Sendable ((any Error)?) -> Void)] = []
        // A placement round's records alone wait for company: nobody waits for them, and the next
        // stream batch (its attempts' results, more submissions) soon starts a transaction.
        defer { store.queue(queued, deferrable: queued.allSatisfy { $0.0.isAttemptPlaced }) }
        for action in actions {
            switch action {
            case .assign(let jobID, let attempt, let nodeID):
                assign(jobID, attempt: attempt, on: nodeID)
            case .cancelOnNode(let jobID, let attempt, let nodeID, let reason):
                sendCancel(jobID: jobID, attempt: attempt, nodeID: nodeID, reason: reason)
            case .log(.sandbox(let change)):
                store.queue(queued)
                queued.removeAll()
                write(change)  // sandboxes are never part of a stream batch
            case .log(let record):
                write(record, into: &batch, queued: &queued)
            case .ended(let jobID, let outcome):
                guard let entry = forget(jobID) else { continue }
                let (result, encoded) = entry.result ?? Self.resultWithoutReport(entry, outcome)
                complete(entry, with: result, encoded: encoded)
            case .sandbox(let action):
                store.queue(queued)
                queued.removeAll()
                perform(action)
            case .paused(let pause):
                logger.warning(
                    "the scheduler was paused; nodes are not blamed for the heartbeats it could not hear",
                    metadata: ["pause": "\(pause)"]
                )
            }
        }
    }

    /// Sends the job's attempt to the node (grouped with the others of this round).
    func assign(_ jobID: String, attempt: UInt32, on nodeID: String) {
        guard let index = jobs.index(forKey: jobID) else {
            // Cannot happen: the core places only jobs the shell admitted. Should it, the core
            // loses the attempt once its node's heartbeats have not listed it for a while.
            logger.error(
                "an assignment for a job this scheduler holds no entry of was not sent",
                metadata: ["job.id": "\(jobID)", "attempt": "\(attempt)", "node.id": "\(nodeID)"]
            )
            return
        }
        guard config.holdsLease?() ?? true else {
            hold(.assignment(jobID: jobID, attempt: attempt, nodeID: nodeID))
            return
        }
        let now = ContinuousClock.now
        // The entry is changed and read where it is: a copy of it (and a second lookup to put it
        // back) is a good part of this function's cost.
        let (acceptedAt, tenant, spec, trace) = jobs.inPlace(at: index) { entry in
            entry.placedAt = now
            entry.result = nil
            return (entry.acceptedAt, entry.tenant, entry.submission.spec, entry.trace)
        }
        counters.placed(after: acceptedAt.duration(to: now))
        var assignment = Hangar_V1_Assignment()
        assignment.jobID = jobID
        assignment.tenant = tenant
        assignment.attempt = attempt
        assignment.spec = spec
        assignment.assignedAtMs = unixMilliseconds()
        assignment.nodeIncarnation = nodeIncarnations[nodeID] ?? ""
        assignment.schedulerTerm = config.term
        send(assignment, to: nodeID, decidedAt: now, trace: trace.child())
    }

    /// One log record of the core (not a sandbox's) as a store write: appended to `batch` if there
    /// is one, else to `queued`.
    private func write(
        _ record: LogRecord,
        into batch: inout [StoreWrite]?,
        queued: inout [(StoreWrite, whenCommitted: @Sendable ((any Error)?) -> Void)]
    ) {
        let write: StoreWrite
        switch record {
        case .attemptPlaced(let jobID, let attempt, let nodeID):
            write = .attemptPlaced(jobID: jobID, attempt: attempt, nodeID: nodeID, at: unixMilliseconds())
        case .attemptRefused(let jobID, let attempt, let nodeID, let reason):
            counters.assignmentFailed()
            logger.info(
                "assignment failed; placing again",
                metadata: [
                    "job.id": "\(jobID)", "attempt": "\(attempt)", "node.id": "\(nodeID)", "reason": "\(reason)",
                ]
            )
            write = .attemptEnded(jobID: jobID, attempt: attempt, status: "REFUSED", detail: reason)
        case .attemptLost(let jobID, let attempt, let nodeID, let reason):
            logger.info(
                "attempt lost",
                metadata: [
                    "job.id": "\(jobID)", "attempt": "\(attempt)", "node.id": "\(nodeID)", "reason": "\(reason)",
                ]
            )
            write = .attemptEnded(jobID: jobID, attempt: attempt, status: "LOST", detail: reason)
        case .resultLate(let jobID, let attempt, let nodeID, let status):
            logger.info(
                "late result ignored: a later attempt was sent, or the job has ended",
                metadata: ["job.id": "\(jobID)", "attempt": "\(attempt)", "node.id": "\(nodeID)"]
            )
            write = .staleResult(jobID: jobID, attempt: attempt, nodeID: nodeID, status: status.displayName)
        case .nodeDown(let nodeID):
            logger.warning("node down: no heartbeat within TTL + grace", metadata: ["node.id": "\(nodeID)"])
            write = .audit(actor: "scheduler", event: "node.down", jobID: nil, detail: nodeID)
        case .nodeUp(let nodeID):
            logger.notice("node is back", metadata: ["node.id": "\(nodeID)"])
            write = .audit(actor: "scheduler", event: "node.up", jobID: nil, detail: nodeID)
        case .drainDeadlinePassed(let nodeID):
            write = .audit(actor: "scheduler", event: "node.drain.deadline", jobID: nil, detail: nodeID)
        case .sandbox(let change):
            self.write(change)  // not reached: `perform` writes sandbox records itself
            return
        case .finished(let jobID, let outcome):
            // Read and changed where it is: a copy of the entry costs more than building the result.
            guard let index = jobs.index(forKey: jobID) else { return }
            let report = outcome.node.flatMap {
                reportsInFlight[ReportKey(jobID: jobID, attempt: outcome.attempt, nodeID: $0)]
            }
            let finished = jobs.inPlace(at: index) { entry -> (result: Hangar_V1_Result, encoded: Data) in
                if let decided = entry.result { return decided }  // written again after a failed commit
                let finished: (result: Hangar_V1_Result, encoded: Data)
                if let report, let node = outcome.node {
                    let result = Self.makeResult(entry, report, nodeID: node)
                    finished = (result, (try? result.serializedData()) ?? Data())
                } else {
                    finished = Self.resultWithoutReport(entry, outcome)
                }
                entry.result = finished
                return finished
            }
            write = .jobFinished(finished.result, encoded: finished.encoded)
            if batch != nil {
                batch!.append(write)  // the caller reports the commit to the core
                return
            }
            let (whenCommitted, committed) = Self.commitSignal()
            queued.append((write, whenCommitted))
            Task {
                let error = await committed()
                if let error {
                    logger.error(
                        "could not store the end of a job",
                        metadata: ["job.id": "\(jobID)", "error": "\(error)"]
                    )
                }
                handle(error == nil ? .finishCommitted(jobID: jobID) : .finishFailed(jobID: jobID))
            }
            return
        }
        if batch != nil {
            batch!.append(write)
        } else {
            let logger = self.logger
            queued.append(
                (write, { error in if let error { logger.error("could not store", metadata: ["error": "\(error)"]) } })
            )
        }
    }

    /// The result of a job that ended without a node's report (cancelled, lost, expired, invalid).
    private static func resultWithoutReport(
        _ entry: JobEntry,
        _ outcome: CoreOutcome
    ) -> (result: Hangar_V1_Result, encoded: Data) {
        var result = baseResult(entry, attempt: outcome.attempt, nodeID: outcome.node)
        result.status = outcome.status
        result.message = outcome.message
        return (result, (try? result.serializedData()) ?? Data())
    }
}
