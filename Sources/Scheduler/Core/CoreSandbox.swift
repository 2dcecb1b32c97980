import HangarShared

/// One stateful sandbox as ``SchedulerCore`` sees it (issue 16): created once, placed on a node
/// that holds it (and its reservation) until it is killed, times out, or is lost with its node.
/// Unlike a job it is never retried elsewhere: its state lives on its node.
public struct CoreSandbox: Sendable, Equatable {
    /// What admission decided about the sandbox.
    public struct Spec: Sendable, Equatable {
        public var id: String
        public var tenant: String
        /// What it holds on its node for its whole life (a slot, memory at its limit, CPU).
        public var request: PlacementRequest
        /// Idle time allowed before it is killed; set again (extended) by the tenant.
        public var timeout: Duration
        /// The longest it may live, whatever the timeouts (the tenant's policy).
        public var maxLifetime: Duration

        /// A sandbox spec.
        public init(id: String, tenant: String, request: PlacementRequest, timeout: Duration, maxLifetime: Duration) {
            self.id = id
            self.tenant = tenant
            self.request = request
            self.timeout = timeout
            self.maxLifetime = maxLifetime
        }
    }

    public let spec: Spec
    /// When it was created (after a restart: as the store says, on this process's clock).
    public let createdAt: ContinuousClock.Instant
    public internal(set) var phase: SandboxPhase
    /// Why it is still waiting for a node, for the message when creation gives up.
    public internal(set) var waitingBecause = ""

    public var id: String { spec.id }
    public var tenant: String { spec.tenant }

    /// When it must end at the latest, whatever the timeouts.
    public var endOfLife: ContinuousClock.Instant { createdAt + spec.maxLifetime }
}

/// Where a sandbox is. Each case carries what only that phase has.
public enum SandboxPhase: Sendable, Equatable {
    /// Being stored; not placed yet. `killed`: killed meanwhile (why).
    case committing(killed: String?)
    /// Waiting for a node with room, until its creation deadline.
    case waiting
    /// `node` holds its reservation and was asked to start it; `deadline` is its timeout.
    case starting(node: String, deadline: ContinuousClock.Instant)
    /// Running on `node` until `deadline` (its timeout, never past its end of life).
    case running(node: String, deadline: ContinuousClock.Instant)
    /// Restored after a scheduler restart while it ran on `node`: reserved once the node joins
    /// (`reserved`), kept if the node's heartbeats list it by the recovery deadline, else lost.
    case restored(node: String, deadline: ContinuousClock.Instant, reserved: Bool)
    /// Its end is decided and being stored; `holds` is what it gives back once stored.
    case ending(SandboxEnd, holds: Hold)
}

/// How a sandbox ended.
public struct SandboxEnd: Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        /// The tenant killed it.
        case killed
        /// Its timeout or its maximum lifetime passed.
        case timedOut
        /// Its node died, restarted without re-adopting it, or stopped reporting it: its state is gone.
        case lost
        /// It could not be created (no node had room in time, or the node refused it).
        case failed
        /// It stopped on its own on its node (its agent died).
        case died
    }

    public var reason: Reason
    public var node: String?
    public var message: String
}

/// What the core tells the shell to do about sandboxes.
public enum SandboxAction: Sendable, Equatable {
    /// Ask `node` to create the sandbox (its reservation is held).
    case start(sandboxID: String, nodeID: String)
    /// Tell `node` to kill the sandbox (no answer awaited).
    case kill(sandboxID: String, nodeID: String, reason: String)
    /// The sandbox's end is stored: tell its owner (an event) and forget it.
    case ended(sandboxID: String, SandboxEnd)
}

/// One state change of a sandbox the store must hold, in order.
public enum SandboxRecord: Sendable, Equatable {
    case placed(sandboxID: String, nodeID: String)
    case started(sandboxID: String, nodeID: String)
    /// Its node restarted and re-adopted it (listed it from its first heartbeat on): it runs on
    /// there, nothing else changes.
    case readopted(sandboxID: String, nodeID: String)
    case timeoutSet(sandboxID: String, deadline: ContinuousClock.Instant)
    case ended(sandboxID: String, SandboxEnd)
}

/// Sandbox events fed to ``SchedulerCore/handle(_:now:)`` (inside ``CoreEvent/sandbox(_:)``).
public enum SandboxEvent: Sendable, Equatable {
    /// A create request passed admission (the tenant's limits on live sandboxes, timeout and
    /// lifetime are checked by the shell against ``SchedulerCore/liveSandboxes(of:)``).
    case admitted(CoreSandbox.Spec)
    /// The store has it: it may be placed.
    case committed(sandboxID: String)
    /// The node's answer to the start: running (`refusal` nil), or refused / not answered.
    case startAnswered(sandboxID: String, refusal: String?)
    /// The tenant set its timeout again (from now), capped at its end of life.
    case setTimeout(sandboxID: String, timeout: Duration)
    /// The tenant killed it.
    case kill(sandboxID: String)
    /// Its node reports it gone (its agent died, or it was killed there).
    case diedOnNode(sandboxID: String, nodeID: String, message: String)
    /// Its node killed it at its timeout (the node enforces timeouts too, e.g. while no scheduler
    /// runs; the core's own is the backstop): it ends TIMED_OUT with `message`.
    case timedOutOnNode(sandboxID: String, nodeID: String, message: String)
    /// The store committed its ``SandboxRecord/ended(sandboxID:_:)`` record.
    case endCommitted(sandboxID: String)
    /// After a scheduler restart, a live sandbox read back from the store: placed on `node` (its
    /// node must confirm it in its heartbeats within TTL + grace), or still waiting (`node` nil).
    case restored(
        CoreSandbox.Spec,
        createdAt: ContinuousClock.Instant,
        node: String?,
        deadline: ContinuousClock.Instant
    )
}
