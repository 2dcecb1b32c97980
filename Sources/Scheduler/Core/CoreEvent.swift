import HangarShared

/// What happens to the scheduler, fed to ``SchedulerCore/handle(_:now:)`` with the current time.
public enum CoreEvent: Sendable, Equatable {
    /// A submission passed admission and is on its way into the intake stream (or was read from the
    /// stream by a scheduler that did not admit it).
    case admitted(CoreJob.Spec)
    /// The intake publish failed: the tenant was refused, the job never existed.
    case intakeFailed(jobID: String)
    /// The store has the job: it may be placed.
    case intakeCommitted(jobID: String)
    /// After a scheduler restart, an unfinished job read back from the store: queued again
    /// (`node` nil), or running attempt `attempt` on `node`, which its node must confirm in its
    /// heartbeats within TTL + grace.
    case restored(CoreJob.Spec, attempt: UInt32, node: String?)
    /// A node's heartbeat.
    case heartbeat(nodeID: String, Hangar_V1_NodeHeartbeat)
    /// The node's answer to an assignment: admitted (`refusal` nil), or refused / not answered in
    /// time, and why.
    case assignAnswered(jobID: String, attempt: UInt32, refusal: String?)
    /// A node's result for an attempt (from the results stream; may be late, duplicated or stale).
    case result(jobID: String, attempt: UInt32, nodeID: String, status: Hangar_V1_JobStatus)
    /// The store committed the ``LogRecord/finished`` record of the job.
    case finishCommitted(jobID: String)
    /// The store could not commit the ``LogRecord/finished`` record: it is written again at the
    /// next tick.
    case finishFailed(jobID: String)
    /// The tenant cancelled the job (`reason` becomes the job's message).
    case cancel(jobID: String, reason: String)
    /// An operator's setting for a node (eligibility, drain); `drainDeadline` is when a drain stops
    /// waiting for the node's jobs and kills them. (`indirect`, as `sandbox`: their payloads hold
    /// `ContinuousClock.Instant`s, and boxed they leave the event's layout known at compile time;
    /// see ``Moment``.)
    indirect case nodeControl(nodeID: String, NodeControl, drainDeadline: ContinuousClock.Instant?)
    /// The tenants file changed.
    case tenantsChanged(TenantDirectory)
    /// Time passed (failure detection, retry backoffs, queue deadlines, recovery, drain deadlines,
    /// store writes to try again, sandbox timeouts).
    case tick
    /// Something happened to a stateful sandbox.
    indirect case sandbox(SandboxEvent)
}

/// What the shell around the core must do, in order.
public enum CoreAction: Sendable, Equatable {
    /// Send attempt `attempt` of the job to the node.
    case assign(jobID: String, attempt: UInt32, nodeID: String)
    /// Tell the node to kill the sandbox of that attempt (no answer awaited).
    case cancelOnNode(jobID: String, attempt: UInt32, nodeID: String, reason: String)
    /// Write one committed state change, in this order (the replicable log of issue 19).
    case log(LogRecord)
    /// The job's end is in the store: answer its waiters and publish the result.
    case ended(jobID: String, CoreOutcome)
    /// Something to do about a stateful sandbox.
    case sandbox(SandboxAction)
    /// The core's ticks stopped for `pause` (the scheduler's process was stopped or starved); the
    /// nodes' silence during it was excused, not counted against their TTL. Only reported.
    case paused(Duration)
}

/// One state change the store must hold, in order.
public enum LogRecord: Sendable, Equatable {
    case attemptPlaced(jobID: String, attempt: UInt32, nodeID: String)
    case attemptRefused(jobID: String, attempt: UInt32, nodeID: String, reason: String)
    case attemptLost(jobID: String, attempt: UInt32, nodeID: String, reason: String)
    /// A result of an attempt that no longer counts (a later one was sent, or the job has ended).
    case resultLate(jobID: String, attempt: UInt32, nodeID: String, status: Hangar_V1_JobStatus)
    case nodeDown(nodeID: String)
    /// A node that was down sends heartbeats again.
    case nodeUp(nodeID: String)
    /// A drain's deadline passed: the node's attempts were killed and lost.
    case drainDeadlinePassed(nodeID: String)
    case finished(jobID: String, CoreOutcome)
    /// A stateful sandbox's state change (`indirect`: see ``CoreEvent/nodeControl(nodeID:_:drainDeadline:)``).
    indirect case sandbox(SandboxRecord)
}
