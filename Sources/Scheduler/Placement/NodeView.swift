import HangarShared

/// One node as placement sees it: what it offers, what it holds, and whether it takes work.
public struct NodeView: Sendable, Equatable {
    public var id: String
    /// Heartbeats arrive (within TTL + grace).
    public var up = true
    /// Operators can switch a node off for new work.
    public var eligible = true
    /// No new work; running jobs finish.
    public var draining = false
    /// The node refused for lack of room, or did not answer; skipped until its next heartbeat.
    public var refusing = false
    public var runtimes: Set<String> = []
    public var templates: Set<String> = []
    public var labels: [String: String] = [:]
    public var cpuMillis: UInt64 = 0
    public var memoryBytes: UInt64 = 0
    public var slots: Int = 0
    /// Held by attempts placed here that have not finished (optimistic reservations).
    public var cpuReserved: UInt64 = 0
    public var memoryReserved: UInt64 = 0
    public var slotsReserved: Int = 0
    /// Ready warm sandboxes per template.
    public var warm: [String: Int] = [:]
    /// Per runtime: the most a job may ask for there (fields at 0: no maximum).
    public var maxLimits: [String: Hangar_V1_Limits] = [:]

    public init(id: String) {
        self.id = id
    }

    /// The fraction of the node's most used resource once `request` is added.
    func utilization(adding request: PlacementRequest) -> Double {
        let cpu = cpuMillis == 0 ? 0 : Double(cpuReserved + request.cpuMillis) / Double(cpuMillis)
        let memory = memoryBytes == 0 ? 0 : Double(memoryReserved + request.memoryBytes) / Double(memoryBytes)
        let slot = slots == 0 ? 1 : Double(slotsReserved + 1) / Double(slots)
        return max(cpu, memory, slot)
    }
}

/// What a job needs from a node.
public struct PlacementRequest: Sendable, Hashable {
    public var runtime: String
    public var template: String
    public var labels: [String: String]
    public var cpuMillis: UInt64
    public var memoryBytes: UInt64
    /// The job's limits, checked against each node's maxima for the runtime.
    public var limits: Hangar_V1_Limits
    /// Spreads jobs across equally good nodes (e.g. a hash of the job id).
    public var tieBreak: UInt64

    public init(
        runtime: String,
        template: String = "host",
        labels: [String: String] = [:],
        cpuMillis: UInt64 = 0,
        memoryBytes: UInt64 = 0,
        limits: Hangar_V1_Limits = Hangar_V1_Limits(),
        tieBreak: UInt64 = 0
    ) {
        self.limits = limits
        self.runtime = runtime
        self.template = template
        self.labels = labels
        self.cpuMillis = cpuMillis
        self.memoryBytes = memoryBytes
        self.tieBreak = tieBreak
    }

    /// The request without its tie-break, for grouping jobs that fit the same nodes.
    var shape: PlacementRequest {
        var shape = self
        shape.tieBreak = 0
        return shape
    }
}

/// How to rank nodes that fit.
public enum PlacementPolicy: String, Sendable, CaseIterable {
    /// Prefer the least loaded node: load spreads, failures hurt less.
    case spread
    /// Prefer the most loaded node that fits: keeps whole nodes free for big jobs.
    case binpack
}
