import HangarShared

/// What happens to the scheduler, fed to ``SchedulerCore/handle(_:now:)`` with the current time.
public enum CoreEvent: Sendable, Equatable {
    /// A submission passed admission and is on its way into the intake stream.
    case admitted(CoreJob.Spec)
    /// The intake publish failed: the tenant was refused, the job never existed.
    case intakeFailed(jobID: String)
    /// The store has the job: it may be placed.
    case intakeCommitted(jobID: String)
    /// A node's heartbeat.
    case heartbeat(nodeID: String, Hangar_V1_NodeHeartbeat)
    /// The node's answer to an assignment: admitted, or refused / not answered in time.
    case assignAnswered(jobID: String, attempt: UInt32, admitted: Bool)
    /// A node's result for an attempt (from the results stream; may be late, duplicated or stale).
    case result(jobID: String, attempt: UInt32, nodeID: String, status: Hangar_V1_JobStatus)
    /// The store committed the ``LogRecord/finished`` record of the job.
    case finishCommitted(jobID: String)
    /// The tenant cancelled the job.
    case cancel(jobID: String)
    /// Time passed (failure detection, retry backoffs, queue deadlines).
    case tick
}

/// What the shell around the core must do, in order.
public enum CoreAction: Sendable, Equatable {
    /// Send attempt `attempt` of the job to the node.
    case assign(jobID: String, attempt: UInt32, nodeID: String)
    /// Tell the node to kill the sandbox of that attempt (no answer awaited).
    case cancelOnNode(jobID: String, attempt: UInt32, nodeID: String)
    /// Write one committed state change, in this order (the replicable log of issue 19).
    case log(LogRecord)
    /// The job's end is in the store: answer its waiters and publish the result.
    case ended(jobID: String, CoreOutcome)
}

/// One state change the store must hold, in order.
public enum LogRecord: Sendable, Equatable {
    case attemptPlaced(jobID: String, attempt: UInt32, nodeID: String)
    case attemptRefused(jobID: String, attempt: UInt32, nodeID: String)
    case attemptLost(jobID: String, attempt: UInt32, nodeID: String, reason: String)
    /// A result of an attempt that no longer counts (a later one was sent, or the job has ended).
    case resultLate(jobID: String, attempt: UInt32, nodeID: String)
    case nodeDown(nodeID: String)
    case finished(jobID: String, CoreOutcome)
}
