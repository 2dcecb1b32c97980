import HangarShared
import Synchronization

/// What holds a node's stateful sandboxes (issue 16): the node agent hands it the scheduler's
/// starts and kills, lists what it holds in every heartbeat, and tells the scheduler when one
/// dies on its own. The isolation itself (a bwrap sandbox with its agent, a container, a VM) is
/// the host's; the node agent only checks the start is meant for this node and has a free slot.
///
/// Rules an implementation keeps:
/// - `start` returns once the sandbox is ready for commands, or throws a ``SandboxRefusal`` whose
///   message the tenant reads (the scheduler ends the sandbox FAILED with it). A repeated start of
///   an id it already holds returns at once.
/// - `kill` is idempotent and returns once nothing of the sandbox is left (an unknown id: at once).
/// - `sandboxIDs` lists exactly the sandboxes it holds now; one that is not listed is ended LOST
///   by the scheduler after a restart, and one listed that the scheduler does not place here is
///   killed.
/// - `died` (given to `start`) is called at most once per sandbox, when it stops on its own (not
///   after `kill`); the host forgets it first.
public protocol SandboxHost: Sendable {
    /// Creates the sandbox `request.sandboxID` for `request.tenant` with the request's runtime,
    /// template, limits and environment. Timeouts are not the host's: the scheduler kills the
    /// sandbox at its (extendable) timeout, and the node agent a grace later if it has not.
    func start(
        _ request: Hangar_V1_SandboxStart,
        died: @escaping @Sendable (_ message: String) -> Void
    )
        async throws(SandboxRefusal)
    /// Kills the sandbox and removes everything of it.
    func kill(_ sandboxID: String, reason: String) async
    /// The ids of the sandboxes it holds now.
    var sandboxIDs: [String] { get }
    /// The sandbox `sandboxID` if it holds it for `tenant` and serves the data plane
    /// (`hangar.sbx.…`); nil otherwise, another tenant's sandbox included.
    func dataTarget(_ sandboxID: String, tenant: String) -> SandboxDataTarget?
    /// Ends what the host keeps besides the sandboxes it holds (warm sandboxes), at the node's
    /// stop, after every held sandbox was killed.
    func stop() async
    /// Before the node serves: takes over the sandboxes that an earlier process of node `nodeID`
    /// on this host held and left running (it crashed, or it was upgraded), holding them from now
    /// on; `died` is each one's death report (sandbox id, message). Returns them and the ledger
    /// resources of theirs that the node's sweep must spare.
    func readopt(
        nodeID: String,
        died: @escaping @Sendable (_ sandboxID: String, _ message: String) -> Void
    ) async -> SandboxReadoption
    /// At the node's stop: stops holding the sandboxes that outlive the node, leaving them running
    /// for its next process to re-adopt; returns their ids. The node kills the rest.
    func leave() async -> [String]
    /// The node kills sandbox `sandboxID` at `deadlineUnixMs` (unix ms) if the scheduler has not;
    /// nil: never. A host that keeps sandboxes across restarts keeps this with them.
    func noteDeadline(_ sandboxID: String, unixMs deadlineUnixMs: Int64?)
}

extension SandboxHost {
    /// A host that serves no data plane answers every request NOT_FOUND.
    public func dataTarget(_ sandboxID: String, tenant: String) -> SandboxDataTarget? { nil }
    /// A host that keeps nothing besides its sandboxes has nothing to end.
    public func stop() async {}
    /// A host whose sandboxes never outlive their node re-adopts none.
    public func readopt(
        nodeID: String,
        died: @escaping @Sendable (_ sandboxID: String, _ message: String) -> Void
    ) async -> SandboxReadoption { SandboxReadoption() }
    /// A host whose sandboxes never outlive their node leaves none running.
    public func leave() async -> [String] { [] }
    /// A host whose sandboxes never outlive their node keeps no deadlines.
    public func noteDeadline(_ sandboxID: String, unixMs deadlineUnixMs: Int64?) {}
}

/// What a ``SandboxHost`` re-adopted at a node's start.
public struct SandboxReadoption: Sendable {
    /// The sandboxes it holds again, with the node's deadline for each (unix ms; nil: none).
    public var sandboxes: [(id: String, deadlineUnixMs: Int64?)] = []
    /// Their resources in the ledgers of the node processes before (the sweep forgets them there;
    /// the node notes them in its own ledger).
    public var resources: Set<SandboxLedger.Resource> = []
    /// The sandboxes that could not be re-adopted, with why (their leftovers are swept).
    public var failures: [(id: String, reason: String)] = []

    /// Nothing re-adopted.
    public init() {}
}

/// What the data plane needs of a held sandbox: the channel to its agent and the default
/// environment of its commands (the start's `env`).
public struct SandboxDataTarget: Sendable {
    /// The channel to the sandbox's agent.
    public let agent: SandboxAgentChannel
    /// The environment every command gets unless its request sets the variable itself.
    public let environment: [String: String]
    /// The sandbox's code contexts (the code interpreter).
    public let code: CodeContexts
    /// The sandbox's background commands (their kept output, for `attach`).
    public let background: BackgroundCommands

    /// A target reaching `agent`, whose commands get `environment`, with the code contexts `code`
    /// and the background commands `background`.
    public init(
        agent: SandboxAgentChannel,
        environment: [String: String],
        code: CodeContexts,
        background: BackgroundCommands
    ) {
        self.agent = agent
        self.environment = environment
        self.code = code
        self.background = background
    }
}

/// Why a host could not create a sandbox, for the tenant.
public struct SandboxRefusal: Error, Sendable, CustomStringConvertible {
    /// What is wrong, for a person (e.g. "template 'py' is not on this node").
    public let message: String
    /// A refusal saying `message`.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A control-plane stand-in for a sandbox host, as ``NullRuntime`` is for jobs: it holds ids and
/// runs nothing. Tests make one of its sandboxes die on its own with ``die(_:message:)``.
public final class NullSandboxHost: SandboxHost {
    /// The held ids, each with how to report its death.
    private let held = Mutex<[String: @Sendable (String) -> Void]>([:])

    /// A host that holds nothing yet.
    public init() {}

    public func start(
        _ request: Hangar_V1_SandboxStart,
        died: @escaping @Sendable (String) -> Void
    )
        async throws(SandboxRefusal)
    {
        guard !request.sandboxID.isEmpty else { throw SandboxRefusal("the start names no sandbox") }
        held.withLock { held in
            if held[request.sandboxID] == nil { held[request.sandboxID] = died }
        }
    }

    public func kill(_ sandboxID: String, reason: String) async {
        held.withLock { _ = $0.removeValue(forKey: sandboxID) }
    }

    public var sandboxIDs: [String] { held.withLock { Array($0.keys).sorted() } }

    /// Ends a held sandbox as if it had stopped on its own (its agent died).
    public func die(_ sandboxID: String, message: String) {
        let died = held.withLock { $0.removeValue(forKey: sandboxID) }
        died?(message)
    }
}
