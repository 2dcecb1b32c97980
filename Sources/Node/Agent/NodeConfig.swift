/// Settings of one node agent.
public struct NodeConfig: Sendable {
    /// Unique in the cluster; a NATS subject token (`[A-Za-z0-9_-]`, 1–64 characters).
    public var nodeID: String
    /// Jobs run at once on this node.
    public var slots: Int
    public var labels: [String: String] = [:]
    public var heartbeatInterval: Duration = .seconds(1)
    /// How long to keep resending a result the scheduler has not acknowledged.
    public var resultRetryFor: Duration = .seconds(3600)
    /// How long to keep resending results once the agent is shutting down.
    public var resultRetryOnShutdown: Duration = .seconds(5)
    /// Per runtime name: limit defaults and maxima; a runtime not listed gets ``RuntimeLimits/standard()``.
    public var runtimeLimits: [String: RuntimeLimits] = [:]

    /// The limits of `runtime` on this node.
    public func limits(of runtime: String) -> RuntimeLimits { runtimeLimits[runtime] ?? .machineStandard }
    /// The node's directory templates, reported in heartbeats; nil: only `host`.
    public var templates: TemplateStore?
    /// Warm pools to keep (see ``WarmPools``).
    public var pools: [WarmPoolSpec] = []
    /// The node's state folder: the highest scheduler term seen is kept there (see
    /// ``SchedulerTermFence``). nil: kept in memory only, forgotten when the agent restarts.
    public var stateDirectory: String?
    /// At a clean stop, leave the stateful sandboxes that can outlive the node running, for the
    /// next process of this node to re-adopt (an upgrade); false: end them (they are re-adopted
    /// only after a crash).
    public var keepSandboxesOnStop = false

    public init(nodeID: String, slots: Int) {
        self.nodeID = nodeID
        self.slots = slots
    }
}
