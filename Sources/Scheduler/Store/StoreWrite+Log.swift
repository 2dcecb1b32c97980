import Foundation
import HangarShared

/// A log entry that cannot be turned back into store writes (written by a newer scheduler, or
/// damaged).
public struct StoreLogDecodingError: Error, CustomStringConvertible {
    /// What is wrong with it.
    public var description: String
}

extension StoreWrite {
    /// The write as log operations, in order (a stream batch becomes its writes).
    func logOperations() throws -> [Hangar_V1_StoreLogOp] {
        var op = Hangar_V1_StoreLogOp()
        switch self {
        case .streamBatch(let writes):
            return try writes.flatMap { try $0.logOperations() }
        case .jobAccepted(let job):
            op.jobAccepted = try job.logRecord()
        case .intake(let job):
            op.intake = try job.logRecord()
        case .attemptPlaced(let jobID, let attempt, let nodeID, let at):
            op.attemptPlaced = .with {
                $0.jobID = jobID
                $0.attempt = attempt
                $0.nodeID = nodeID
                $0.atMs = at
            }
        case .attemptEnded(let jobID, let attempt, let status, let detail):
            op.attemptEnded = .with {
                $0.jobID = jobID
                $0.attempt = attempt
                $0.status = status
                $0.detail = detail
            }
        case .jobFinished(_, let encoded):
            op.jobFinished = encoded
        case .nodeControl(let nodeID, let control, let actor, let event):
            op.nodeControl = .with {
                $0.nodeID = nodeID
                $0.eligible = control.eligible
                $0.draining = control.draining
                $0.drainDeadlineMs = control.drainDeadline
                $0.actor = actor
                $0.event = event
            }
        case .audit(let actor, let event, let jobID, let detail):
            op.audit = .with {
                $0.actor = actor
                $0.event = event
                if let jobID { $0.jobID = jobID }
                $0.detail = detail
            }
        case .staleResult(let jobID, let attempt, let nodeID, let status):
            op.staleResult = .with {
                $0.jobID = jobID
                $0.attempt = attempt
                $0.nodeID = nodeID
                $0.status = status
            }
        case .prune(let before, _):
            op.pruneBeforeMs = before
        case .sandbox(let write):
            op = try write.logOperation()
        case .apiKey(.created(let key)):
            op.apiKeyCreated = .with {
                $0.hash = key.hash
                $0.tenant = key.tenant
                $0.createdAtMs = key.createdAtMs
                $0.createdBy = key.createdBy
            }
        case .apiKey(.revoked(let id, let tenant, let actor)):
            op.apiKeyRevoked = .with {
                $0.id = id
                $0.tenant = tenant
                $0.actor = actor
            }
        }
        return [op]
    }

    /// The write a log operation records.
    init(logOperation op: Hangar_V1_StoreLogOp) throws {
        switch op.op {
        case .jobAccepted(let record): self = .jobAccepted(try StoredJob(logRecord: record))
        case .intake(let record): self = .intake(try StoredJob(logRecord: record))
        case .attemptPlaced(let record):
            self = .attemptPlaced(jobID: record.jobID, attempt: record.attempt, nodeID: record.nodeID, at: record.atMs)
        case .attemptEnded(let record):
            self = .attemptEnded(
                jobID: record.jobID,
                attempt: record.attempt,
                status: record.status,
                detail: record.detail
            )
        case .jobFinished(let encoded):
            self = .jobFinished(try Hangar_V1_Result(serializedBytes: encoded), encoded: encoded)
        case .nodeControl(let record):
            self = .nodeControl(
                nodeID: record.nodeID,
                control: NodeControl(
                    eligible: record.eligible,
                    draining: record.draining,
                    drainDeadline: record.drainDeadlineMs
                ),
                actor: record.actor,
                event: record.event
            )
        case .audit(let record):
            self = .audit(
                actor: record.actor,
                event: record.event,
                jobID: record.hasJobID ? record.jobID : nil,
                detail: record.detail
            )
        case .staleResult(let record):
            self = .staleResult(
                jobID: record.jobID,
                attempt: record.attempt,
                nodeID: record.nodeID,
                status: record.status
            )
        case .sandboxCreated(let record):
            var sandbox = StoredSandbox(
                id: record.id,
                tenant: record.tenant,
                requestID: record.hasRequestID ? record.requestID : nil,
                request: try Hangar_V1_SandboxCreateRequest(serializedBytes: record.request),
                createdAtMs: record.createdAtMs
            )
            sandbox.eventSeq = record.eventSeq
            sandbox.requestData = record.request
            self = .sandbox(.created(sandbox))
        case .sandboxPlaced(let record):
            self = .sandbox(.placed(id: record.id, nodeID: record.nodeID, eventSeq: record.eventSeq))
        case .sandboxStarted(let record):
            self = .sandbox(
                .started(id: record.id, nodeID: record.nodeID, endsAtMs: record.endsAtMs, eventSeq: record.eventSeq)
            )
        case .sandboxTimeoutSet(let record):
            self = .sandbox(.timeoutSet(id: record.id, endsAtMs: record.endsAtMs, eventSeq: record.eventSeq))
        case .sandboxEnded(let record):
            self = .sandbox(
                .ended(
                    id: record.id,
                    reason: record.reason,
                    nodeID: record.hasNodeID ? record.nodeID : nil,
                    message: record.message,
                    eventSeq: record.eventSeq
                )
            )
        case .apiKeyCreated(let record):
            guard APIKeyWrite.isHash(record.hash) else {
                throw StoreLogDecodingError(description: "an API key's hash is not 64 lowercase hex digits")
            }
            self = .apiKey(
                .created(
                    StoredAPIKey(
                        hash: record.hash,
                        tenant: record.tenant,
                        createdAtMs: record.createdAtMs,
                        createdBy: record.createdBy
                    )
                )
            )
        case .apiKeyRevoked(let record):
            self = .apiKey(.revoked(id: record.id, tenant: record.tenant, actor: record.actor))
        case .pruneBeforeMs(let before):
            self = .prune(before: before, tally: PruneTally())
        case nil:
            throw StoreLogDecodingError(
                description: "a log operation of a kind this scheduler does not know (written by a newer version?)"
            )
        }
    }
}

extension SandboxWrite {
    fileprivate func logOperation() throws -> Hangar_V1_StoreLogOp {
        var op = Hangar_V1_StoreLogOp()
        switch self {
        case .created(let sandbox):
            op.sandboxCreated = try .with {
                $0.id = sandbox.id
                $0.tenant = sandbox.tenant
                if let requestID = sandbox.requestID { $0.requestID = requestID }
                $0.request = try sandbox.requestData ?? sandbox.request.serializedData()
                $0.createdAtMs = sandbox.createdAtMs
                $0.eventSeq = sandbox.eventSeq
            }
        case .placed(let id, let nodeID, let eventSeq):
            op.sandboxPlaced = .with {
                $0.id = id
                $0.nodeID = nodeID
                $0.eventSeq = eventSeq
            }
        case .started(let id, let nodeID, let endsAtMs, let eventSeq):
            op.sandboxStarted = .with {
                $0.id = id
                $0.nodeID = nodeID
                $0.endsAtMs = endsAtMs
                $0.eventSeq = eventSeq
            }
        case .timeoutSet(let id, let endsAtMs, let eventSeq):
            op.sandboxTimeoutSet = .with {
                $0.id = id
                $0.endsAtMs = endsAtMs
                $0.eventSeq = eventSeq
            }
        case .ended(let id, let reason, let nodeID, let message, let eventSeq):
            op.sandboxEnded = .with {
                $0.id = id
                $0.reason = reason
                if let nodeID { $0.nodeID = nodeID }
                $0.message = message
                $0.eventSeq = eventSeq
            }
        }
        return op
    }
}

extension StoredJob {
    fileprivate func logRecord() throws -> Hangar_V1_StoredJobRecord {
        try .with {
            $0.id = id
            $0.tenant = tenant
            if let requestID { $0.requestID = requestID }
            $0.spec = try specData ?? spec.serializedData()
            $0.priority = priority
            $0.submittedAtMs = submittedAt
            $0.request = try requestData ?? request.serializedData()
        }
    }

    fileprivate init(logRecord record: Hangar_V1_StoredJobRecord) throws {
        self.init(
            id: record.id,
            tenant: record.tenant,
            requestID: record.hasRequestID ? record.requestID : nil,
            spec: try Hangar_V1_JobSpec(serializedBytes: record.spec),
            priority: record.priority,
            submittedAt: record.submittedAtMs
        )
        specData = record.spec
        requestData = record.request
    }
}
