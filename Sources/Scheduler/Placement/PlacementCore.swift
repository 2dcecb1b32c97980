import HangarShared

/// Placement as a pure function of (job, nodes): feasibility → rank. No I/O, no clock.
///
/// Like Nomad's scheduler it does not score every node of a large cluster: it walks the nodes from a
/// position derived from the job's tie-break and ranks the first `candidateLimit` feasible ones
/// (a handful suffices for good spread or packing), so a decision costs about the same at 100 and at
/// 10,000 nodes. When nothing fits, the walk covers every node and the outcome says which constraint
/// filtered how many.
public enum PlacementCore {
    /// Why nodes were filtered out, counted per constraint.
    public struct Filtered: Sendable, Equatable {
        public var down = 0
        public var ineligible = 0
        public var draining = 0
        public var refusing = 0
        public var runtime = 0
        public var template = 0
        public var labels = 0
        /// Nodes whose maximum for the runtime is below one of the job's limits ...
        public var limits = 0
        /// ... and the first such limit seen.
        public var limitField = ""
        public var cpu = 0
        public var memory = 0
        public var slots = 0
        /// Nodes that could never run the job (runtime, template, labels or a request larger than
        /// the node), as opposed to being busy now.
        public var never = 0

        public init() {}
    }

    public enum Outcome: Sendable, Equatable {
        /// Best first.
        case ranked([String])
        /// Nothing fits now; a later heartbeat, result or operator action may change that.
        case wait(String)
        /// No node that is up could ever run the job as asked.
        case impossible(String)
    }

    public static func place(
        _ request: PlacementRequest,
        nodes: [NodeView],
        policy: PlacementPolicy = .spread,
        candidateLimit: Int = 4
    ) -> Outcome {
        guard !nodes.isEmpty else { return .wait("no node has joined the cluster") }
        var filtered = Filtered()
        var candidates: [(id: String, score: Double, tie: UInt64)] = []
        let start = Int(request.tieBreak % UInt64(nodes.count))
        var index = start
        repeat {
            let node = nodes[index]
            if let reason = rejection(of: node, for: request) {
                count(reason, node: node, request: request, into: &filtered)
            } else {
                candidates.append((node.id, score(node, request, policy), mix(request.tieBreak, node.id)))
                if candidates.count >= candidateLimit { break }
            }
            index = (index + 1) % nodes.count
        } while index != start
        if !candidates.isEmpty {
            candidates.sort { ($0.score, $0.tie) > ($1.score, $1.tie) }
            return .ranked(candidates.map(\.id))
        }
        let up = nodes.count - filtered.down
        let explanation = explain(filtered, total: nodes.count, request: request)
        if up > 0 && filtered.never == up {
            return .impossible(explanation)
        }
        return .wait(explanation)
    }

    enum Reason { case down, ineligible, draining, refusing, runtime, template, labels, limits, cpu, memory, slots }

    static func rejection(of node: NodeView, for request: PlacementRequest) -> Reason? {
        if !node.up { return .down }
        if !node.runtimes.contains(request.runtime) { return .runtime }
        if !node.templates.contains(request.template) { return .template }
        for (key, value) in request.labels where node.labels[key] != value { return .labels }
        if let ceiling = node.maxLimits[request.runtime], exceeded(request.limits, ceiling) != nil { return .limits }
        if !node.eligible { return .ineligible }
        if node.draining { return .draining }
        if node.refusing { return .refusing }
        if node.slotsReserved >= node.slots { return .slots }
        if node.cpuReserved + request.cpuMillis > node.cpuMillis { return .cpu }
        if node.memoryReserved + request.memoryBytes > node.memoryBytes { return .memory }
        return nil
    }

    private static func count(
        _ reason: Reason,
        node: NodeView,
        request: PlacementRequest,
        into filtered: inout Filtered
    ) {
        switch reason {
        case .down: filtered.down += 1
        case .ineligible: filtered.ineligible += 1
        case .draining: filtered.draining += 1
        case .refusing: filtered.refusing += 1
        case .runtime: filtered.runtime += 1
        case .template: filtered.template += 1
        case .labels: filtered.labels += 1
        case .limits:
            filtered.limits += 1
            if filtered.limitField.isEmpty, let ceiling = node.maxLimits[request.runtime] {
                filtered.limitField = exceeded(request.limits, ceiling) ?? ""
            }
        case .slots: filtered.slots += 1
        case .cpu: filtered.cpu += 1
        case .memory: filtered.memory += 1
        }
        switch reason {
        case .runtime, .template, .labels, .limits: filtered.never += 1
        case .cpu where request.cpuMillis > node.cpuMillis: filtered.never += 1
        case .memory where request.memoryBytes > node.memoryBytes: filtered.never += 1
        case .slots where node.slots == 0: filtered.never += 1
        default: break
        }
    }

    private static func score(_ node: NodeView, _ request: PlacementRequest, _ policy: PlacementPolicy) -> Double {
        let warm = (node.warm[request.template] ?? 0) > 0 ? 10.0 : 0
        let load = node.utilization(adding: request)
        return warm + (policy == .spread ? 1 - load : load)
    }

    /// The name of the first of `limits` above its non-zero maximum in `ceiling`, or nil.
    static func exceeded(_ limits: Hangar_V1_Limits, _ ceiling: Hangar_V1_Limits) -> String? {
        func over<T: BinaryInteger>(_ value: T, _ maximum: T) -> Bool { maximum > 0 && value > maximum }
        if over(limits.timeoutMs, ceiling.timeoutMs) { return "timeout_ms" }
        if over(limits.cpuTimeMs, ceiling.cpuTimeMs) { return "cpu_time_ms" }
        if over(limits.memoryBytes, ceiling.memoryBytes) { return "memory_bytes" }
        if over(limits.pids, ceiling.pids) { return "pids" }
        if over(limits.outputBytes, ceiling.outputBytes) { return "output_bytes" }
        if over(limits.fileSizeBytes, ceiling.fileSizeBytes) { return "file_size_bytes" }
        if over(limits.openFiles, ceiling.openFiles) { return "open_files" }
        if over(limits.cpuMillis, ceiling.cpuMillis) { return "cpu_millis" }
        return nil
    }

    /// A per-(job, node) pseudo-random tie-break, so equal nodes share the load.
    private static func mix(_ seed: UInt64, _ id: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in id.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        // splitmix64's finalizer: every input bit moves every output bit.
        var value = hash ^ seed
        value = (value ^ (value >> 30)) &* 0xbf58_476d_1ce4_e5b9
        value = (value ^ (value >> 27)) &* 0x94d0_49bb_1331_11eb
        return value ^ (value >> 31)
    }

    /// "no node fits: of 5 nodes, 1 is down, 2 lack runtime 'gvisor', 2 have no free slot".
    public static func explain(_ filtered: Filtered, total: Int, request: PlacementRequest) -> String {
        var parts: [String] = []
        func add(_ count: Int, _ text: String) { if count > 0 { parts.append("\(count) \(text)") } }
        add(filtered.down, "down")
        add(filtered.runtime, "without runtime '\(request.runtime)'")
        add(filtered.template, "without template '\(request.template)'")
        if filtered.labels > 0 {
            let wanted = request.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
                separator: ","
            )
            add(filtered.labels, "without labels \(wanted)")
        }
        add(
            filtered.limits,
            "allowing less than the job's limits.\(filtered.limitField) in runtime '\(request.runtime)'"
        )
        add(filtered.ineligible, "ineligible")
        add(filtered.draining, "draining")
        add(filtered.refusing, "refusing work until their next heartbeat")
        add(filtered.slots, "with no free slot")
        add(filtered.cpu, "short of \(request.cpuMillis) millicores")
        add(filtered.memory, "short of \(request.memoryBytes) bytes of memory")
        return "no node fits: of \(total) node\(total == 1 ? "" : "s"), " + parts.joined(separator: ", ")
    }
}
