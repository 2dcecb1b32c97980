import HangarShared

/// What the scheduler knows of the nodes: their last heartbeat, whether they are up, operator
/// controls, and the reservations of attempts placed on them. Pure: callers pass the time in.
public struct ClusterState: Sendable {
    /// A node's heartbeat-side facts.
    public struct Record: Sendable {
        public var heartbeat: Hangar_V1_NodeHeartbeat
        @StoredAsMoment public var lastSeen: ContinuousClock.Instant
        /// Unix ms after which a draining node's remaining jobs are stopped and retried elsewhere.
        public var drainDeadline: Int64 = 0
    }

    /// What happened to the cluster on a heartbeat.
    public enum HeartbeatEvent: Sendable, Equatable {
        case joined
        /// A node that was down is back.
        case returned
        /// The node agent restarted (its reservations are dropped): it runs none of our jobs any
        /// more, only the sandboxes it re-adopted, which its heartbeat lists.
        case restarted
        case alive
    }

    /// Heartbeats older than `ttl + grace` mark a node down.
    public var ttl: Duration
    public var grace: Duration
    /// Allocatable CPU is the node's cores times this (jobs rarely use their whole quota).
    public var cpuOvercommit: Double
    public private(set) var records: [String: Record] = [:]
    public private(set) var views: [NodeView] = []
    private var index: [String: Int] = [:]
    /// Draining nodes with a deadline (unix ms), so the periodic check does not walk every node.
    private var drainDeadlines: [String: Int64] = [:]

    public init(ttl: Duration = .seconds(3), grace: Duration = .seconds(2), cpuOvercommit: Double = 4) {
        self.ttl = ttl
        self.grace = grace
        self.cpuOvercommit = cpuOvercommit
    }

    public func view(_ nodeID: String) -> NodeView? { index[nodeID].map { views[$0] } }

    @discardableResult
    public mutating func record(
        _ heartbeat: Hangar_V1_NodeHeartbeat,
        from nodeID: String,
        at now: ContinuousClock.Instant
    ) -> HeartbeatEvent {
        var event = HeartbeatEvent.alive
        if let position = index[nodeID] {
            let previous = records[nodeID]!
            if previous.heartbeat.incarnation != heartbeat.incarnation {
                event = .restarted
                views[position].cpuReserved = 0
                views[position].memoryReserved = 0
                views[position].slotsReserved = 0
            } else if !views[position].up {
                event = .returned
            }
            records[nodeID]!.heartbeat = heartbeat
            records[nodeID]!.lastSeen = now
        } else {
            event = .joined
            records[nodeID] = Record(heartbeat: heartbeat, lastSeen: now)
            index[nodeID] = views.count
            views.append(NodeView(id: nodeID))
        }
        let position = index[nodeID]!
        var view = views[position]
        view.up = true
        view.refusing = false
        view.runtimes = Set(heartbeat.runtimes.filter(\.available).map(\.name))
        view.templates = Set(heartbeat.templates)
        view.maxLimits = Dictionary(
            heartbeat.runtimes.filter { $0.available && $0.hasMaxLimits }.map { ($0.name, $0.maxLimits) },
            uniquingKeysWith: { first, _ in first }
        )
        view.labels = heartbeat.labels
        view.cpuMillis = UInt64(Double(heartbeat.capacity.cpuMillis) * cpuOvercommit)
        view.memoryBytes = heartbeat.capacity.memoryBytes
        view.slots = Int(heartbeat.capacity.slotsTotal)
        view.warm = Dictionary(
            heartbeat.pools.map { (NodeView.warmKey(runtime: $0.runtime, template: $0.template), Int($0.ready)) },
            uniquingKeysWith: +
        )
        views[position] = view
        return event
    }

    /// Gives every node `pause` back (never past `now`): the scheduler could not hear heartbeats
    /// for that long (its own process stopped or starved), so their silence is not the nodes'.
    public mutating func excuse(_ pause: Duration, now: ContinuousClock.Instant) {
        for id in records.keys {
            records[id]!.lastSeen = min(records[id]!.lastSeen + pause, now)
        }
    }

    /// Marks nodes whose heartbeats stopped as down; returns those newly down.
    public mutating func detectDown(at now: ContinuousClock.Instant) -> [String] {
        var newlyDown: [String] = []
        for position in views.indices where views[position].up {
            let id = views[position].id
            if let record = records[id], now - record.lastSeen > ttl + grace {
                views[position].up = false
                newlyDown.append(id)
            }
        }
        return newlyDown
    }

    public func isUp(_ nodeID: String) -> Bool { view(nodeID)?.up ?? false }

    /// Ranked nodes for `request`, or why none fits.
    public func place(_ request: PlacementRequest, policy: PlacementPolicy = .spread) -> PlacementCore.Outcome {
        PlacementCore.place(request, nodes: views, policy: policy)
    }

    public mutating func reserve(_ nodeID: String, _ request: PlacementRequest) {
        guard let position = index[nodeID] else { return }
        views[position].cpuReserved += request.cpuMillis
        views[position].memoryReserved += request.memoryBytes
        views[position].slotsReserved += 1
        // The job takes a ready warm sandbox, if one is there, until the next heartbeat says more.
        let key = NodeView.warmKey(runtime: request.runtime, template: request.template)
        if let ready = views[position].warm[key], ready > 0 { views[position].warm[key] = ready - 1 }
    }

    public mutating func release(_ nodeID: String, _ request: PlacementRequest) {
        guard let position = index[nodeID] else { return }
        views[position].cpuReserved -= min(views[position].cpuReserved, request.cpuMillis)
        views[position].memoryReserved -= min(views[position].memoryReserved, request.memoryBytes)
        views[position].slotsReserved = max(0, views[position].slotsReserved - 1)
    }

    /// The node refused or did not answer: skip it until its next heartbeat.
    public mutating func markRefusing(_ nodeID: String) {
        guard let position = index[nodeID] else { return }
        views[position].refusing = true
    }

    /// Returns false if the node is unknown.
    @discardableResult
    public mutating func setEligible(_ nodeID: String, _ eligible: Bool) -> Bool {
        guard let position = index[nodeID] else { return false }
        views[position].eligible = eligible
        return true
    }

    @discardableResult
    public mutating func setDraining(_ nodeID: String, _ draining: Bool, deadline: Int64) -> Bool {
        guard let position = index[nodeID] else { return false }
        views[position].draining = draining
        records[nodeID]?.drainDeadline = draining ? deadline : 0
        drainDeadlines[nodeID] = draining && deadline > 0 ? deadline : nil
        return true
    }

    /// Nodes whose drain deadline has passed (unix ms `now`).
    public func drainsExpired(nowMs: Int64) -> [String] {
        drainDeadlines.filter { $0.value <= nowMs }.map(\.key).sorted()
    }

    /// Allocatable totals over the nodes that are up, for fair shares.
    public var totals: (cpuMillis: UInt64, memoryBytes: UInt64, slots: Int) {
        views.filter(\.up).reduce((0, 0, 0)) { ($0.0 + $1.cpuMillis, $0.1 + $1.memoryBytes, $0.2 + $1.slots) }
    }
}
