import HangarShared

/// What the scheduler knows of the nodes, built from heartbeats and its own reservations.
/// Pure: callers pass the time in.
public struct ClusterState: Sendable {
    /// One node as last reported, plus the attempts placed on it that have not reported back.
    public struct Node: Sendable {
        public var heartbeat: Hangar_V1_NodeHeartbeat
        public var lastSeen: ContinuousClock.Instant
        public var reserved: Int = 0
        /// The node refused for lack of room; skip it until its next heartbeat.
        public var full = false

        public var freeSlots: Int { max(0, Int(heartbeat.capacity.slotsTotal) - reserved) }

        func offers(_ runtime: String) -> Bool {
            heartbeat.runtimes.contains { $0.name == runtime && $0.available }
        }
    }

    /// A heartbeat older than this marks the node down (heartbeats come every second).
    public var downAfter: Duration
    public private(set) var nodes: [String: Node] = [:]

    public init(downAfter: Duration = .seconds(5)) {
        self.downAfter = downAfter
    }

    public mutating func record(
        _ heartbeat: Hangar_V1_NodeHeartbeat,
        from nodeID: String,
        at now: ContinuousClock.Instant
    ) {
        if var node = nodes[nodeID] {
            if node.heartbeat.incarnation != heartbeat.incarnation {
                node.reserved = 0  // a restarted node runs nothing of ours
            }
            node.heartbeat = heartbeat
            node.lastSeen = now
            node.full = false
            nodes[nodeID] = node
        } else {
            nodes[nodeID] = Node(heartbeat: heartbeat, lastSeen: now)
        }
    }

    public func isUp(_ nodeID: String, at now: ContinuousClock.Instant) -> Bool {
        guard let node = nodes[nodeID] else { return false }
        return now - node.lastSeen < downAfter
    }

    /// The nodes that are up at `now`.
    public func upNodes(at now: ContinuousClock.Instant) -> [(id: String, node: Node)] {
        nodes.filter { now - $0.value.lastSeen < downAfter }.map { ($0.key, $0.value) }
    }

    /// Where a job can run, or why it cannot.
    public enum Placement: Sendable, Equatable {
        case node(String)
        /// Nothing fits now; the job may wait. The text says which constraint filtered what.
        case wait(String)
        /// Nothing will fit while the fleet stays as it is: no up node offers the runtime or labels.
        case impossible(String)
    }

    /// First fit among up nodes that offer the runtime and match the labels, preferring the one
    /// with the most free slots so load spreads. Does not reserve.
    public func place(
        runtime: String,
        labels: [String: String],
        at now: ContinuousClock.Instant
    ) -> Placement {
        let up = upNodes(at: now)
        if up.isEmpty { return .wait("no node is up") }
        let offering = up.filter { $0.node.offers(runtime) }
        if offering.isEmpty {
            return .impossible("none of the \(up.count) up nodes offers runtime '\(runtime)'")
        }
        let matching = offering.filter { candidate in
            labels.allSatisfy { candidate.node.heartbeat.labels[$0.key] == $0.value }
        }
        if matching.isEmpty {
            let wanted = labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            return .impossible("\(offering.count) nodes offer runtime '\(runtime)' but none has labels \(wanted)")
        }
        let best = matching.filter { !$0.node.full && $0.node.freeSlots > 0 }
            .max { ($0.node.freeSlots, $1.id) < ($1.node.freeSlots, $0.id) }
        guard let best else {
            return .wait("all \(matching.count) nodes that fit are full")
        }
        return .node(best.id)
    }

    public mutating func reserve(_ nodeID: String) {
        nodes[nodeID]?.reserved += 1
    }

    public mutating func release(_ nodeID: String) {
        if let reserved = nodes[nodeID]?.reserved, reserved > 0 {
            nodes[nodeID]?.reserved = reserved - 1
        }
    }

    public mutating func markFull(_ nodeID: String) {
        nodes[nodeID]?.full = true
    }
}
