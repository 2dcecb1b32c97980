import Foundation
import HangarNATS
import HangarShared
import Logging
import Synchronization

/// A node agent: reports capacity every second, takes assignments, runs each job in its runtime's
/// sandbox and publishes the result into the results stream until the server acknowledges it.
public final class NodeAgent: Sendable {
    public let config: NodeConfig
    let nats: NATSConnection
    /// The machine's host name for heartbeats, read once (Foundation may resolve it).
    let hostName = ProcessInfo.processInfo.hostName
    private let runtimes: [String: any Runtime]
    let logger: Logger
    let incarnation: String
    private let running = Mutex<[String: Task<Void, Never>]>([:])
    /// Attempts ("<job>/<attempt>") that ended here and whose result is not yet in the results
    /// stream: heartbeats list them, so the scheduler knows they are not lost (see
    /// `reporting_jobs`).
    private let reporting = Mutex<Set<String>>([])
    private let probes = Mutex<[String: RuntimeProbe]>([:])
    private let sequence = Atomic<UInt64>(0)
    /// Set once the first heartbeat went out.
    private let serving = Atomic<Bool>(false)
    /// Warm sandboxes, when `config.pools` names any.
    public let pools: WarmPools?
    /// Results on their way into the results stream.
    private let results: ResultOutbox
    /// What the node's sandboxes draw from; the runtimes were built with the same.
    let resources: NodeResources
    /// Holds the node's stateful sandboxes; nil: the node refuses them.
    let sandboxHost: (any SandboxHost)?
    /// Stateful sandboxes being started (each holds a slot meanwhile).
    let sandboxesStarting = Mutex<Set<String>>([])
    /// When the node kills each stateful sandbox it holds (its timeout plus a grace; see
    /// `NodeAgent+Sandboxes.swift`).
    let sandboxDeadlines = Mutex<[String: ContinuousClock.Instant]>([:])
    /// The highest scheduler term seen, kept in the state folder: older terms are refused.
    public let termFence: SchedulerTermFence

    /// A node serving `runtimes`, which were built with `resources` (the node drains what it keeps
    /// ready there when it stops), holding stateful sandboxes in `sandboxHost` if given.
    public init(
        config: NodeConfig,
        nats: NATSConnection,
        runtimes: [any Runtime],
        resources: NodeResources = .standard,
        sandboxHost: (any SandboxHost)? = nil,
        logger: Logger
    ) {
        self.config = config
        self.sandboxHost = sandboxHost
        self.nats = nats
        self.resources = resources
        self.runtimes = Dictionary(runtimes.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var logger = logger
        logger[metadataKey: "node.id"] = "\(config.nodeID)"
        self.logger = logger
        let incarnation = UUID().uuidString
        self.incarnation = incarnation
        termFence = SchedulerTermFence(stateDirectory: config.stateDirectory, logger: logger)
        pools = config.pools.isEmpty ? nil : WarmPools(specs: config.pools, runtimes: runtimes, logger: logger)
        results = ResultOutbox(
            nats: nats,
            nodeID: config.nodeID,
            incarnation: incarnation,
            retryFor: config.resultRetryFor,
            retryOnShutdown: config.resultRetryOnShutdown,
            logger: logger
        )
    }

    /// Number of jobs running now.
    public var runningCount: Int { running.withLock { $0.count } }

    /// Serves until the surrounding task is cancelled; then kills running jobs and returns. See
    /// ``run()`` (in `NodeAgent+Service.swift`).
    func serve() async throws {
        guard Subjects.isValidToken(config.nodeID) else {
            throw NodeError("node id '\(config.nodeID)' must be 1-64 characters of A-Z a-z 0-9 _ -")
        }
        await reclaimLeftovers()
        let assignments = try nats.subscribe(Subjects.assign(node: config.nodeID))
        let cancels = try nats.subscribe(Subjects.nodeCancel(node: config.nodeID))
        let sandboxStarts = try nats.subscribe(Subjects.sandboxStart(node: config.nodeID))
        let sandboxKills = try nats.subscribe(Subjects.sandboxKill(node: config.nodeID))
        let sandboxTimeouts = try nats.subscribe(Subjects.sandboxTimeout(node: config.nodeID))
        let sandboxData =
            sandboxHost == nil ? nil : try nats.subscribe(Subjects.sandboxDataWildcard(node: config.nodeID))
        defer {
            sandboxData?.unsubscribe()
            assignments.unsubscribe()
            cancels.unsubscribe()
            sandboxStarts.unsubscribe()
            sandboxKills.unsubscribe()
            sandboxTimeouts.unsubscribe()
        }
        try await nats.flush()
        await withDiscardingTaskGroup { group in
            // Probes run at once and side by side; the node serves when all are done or after
            // `probeGrace`, and a slower one (microvm boots a VM) adds its runtime when it ends.
            for (name, runtime) in runtimes {
                group.addTask { await self.probe(name, runtime) }
            }
            let deadline = ContinuousClock.now + Self.probeGrace
            while probes.withLock({ $0.count }) < runtimes.count, ContinuousClock.now < deadline, !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(10))
            }
            serving.store(true, ordering: .sequentiallyConsistent)
            publishHeartbeat()
            logger.info("node serving", metadata: ["slots": "\(config.slots)"])
            group.addTask {
                for await message in assignments { self.handleAssignment(message) }
            }
            group.addTask {
                for await message in cancels { self.handleCancel(message) }
            }
            group.addTask {
                await withDiscardingTaskGroup { inner in
                    for await message in sandboxStarts { inner.addTask { await self.handleSandboxStart(message) } }
                }
            }
            group.addTask {
                for await message in sandboxKills { await self.handleSandboxKill(message) }
            }
            if sandboxHost != nil {
                group.addTask {
                    for await message in sandboxTimeouts { self.handleSandboxTimeout(message) }
                }
                if let sandboxData {
                    group.addTask {
                        await withDiscardingTaskGroup { inner in
                            for await message in sandboxData { inner.addTask { await self.handleSandboxData(message) } }
                        }
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .milliseconds(250))
                        await self.killTimedOutSandboxes()
                    }
                }
            }
            if let pools {
                group.addTask { await pools.run() }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.config.heartbeatInterval)
                    self.publishHeartbeat()
                }
            }
        }
        results.stop()
        let tasks = running.withLock { Array($0.values) }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        // Stateful sandboxes end with their node unless it keeps them for its next start (an
        // upgrade): then those that can outlive it stay, listed in its ledger and registry, and the
        // next start re-adopts them. The rest end cleanly, so their cgroups and disks are gone before
        // the ledger closes; the scheduler ends them LOST once the node's heartbeats no longer list
        // them.
        var left: [String] = []
        if let sandboxHost {
            if config.keepSandboxesOnStop { left = await sandboxHost.leave() }
            for id in sandboxHost.sandboxIDs { await sandboxHost.kill(id, reason: "node \(config.nodeID) stopped") }
            await sandboxHost.stop()
        }
        await Self.releaseSandboxResources(resources, leftSandboxes: left, logger: logger)
    }

    /// At a clean stop, once no job runs and the warm pools are destroyed: ends what the node keeps
    /// ready for containers (the user namespaces in stock) and for grants (unused grant views), and closes its ``SandboxLedger``, which
    /// deletes its file when everything it lists is gone; what is not is logged and left listed
    /// for the next node's sweep.
    static func releaseSandboxResources(
        _ resources: NodeResources,
        leftSandboxes: [String] = [],
        logger: Logger
    ) async {
        await resources.namespaces.drain()
        resources.grantViews.drain()
        let outstanding = resources.ledger.close()
        if !leftSandboxes.isEmpty {
            logger.notice(
                "left stateful sandboxes running for the next start of this node; its ledger lists what they hold",
                metadata: ["sandboxes": "\(leftSandboxes.joined(separator: ","))", "resources": "\(outstanding.count)"]
            )
        } else if !outstanding.isEmpty {
            logger.error(
                "sandbox resources outlive the node; its ledger keeps them for the next node's sweep",
                metadata: ["resources": "\(outstanding.map { $0.fields.joined(separator: " ") })"]
            )
        }
    }

    /// How long the node waits for its runtimes' probes before it starts serving without the
    /// slower ones.
    static let probeGrace = Duration.seconds(2)

    /// Probes one runtime, records and logs the answer, starts its warm pools, and (once the node
    /// serves) announces it in a heartbeat at once.
    private func probe(_ name: String, _ runtime: any Runtime) async {
        let probe = await runtime.probe()
        probes.withLock { $0[name] = probe }
        if probe.available {
            logger.info("runtime ready", metadata: ["runtime": "\(name)", "detail": "\(probe.detail)"])
        } else {
            logger.warning("runtime unavailable", metadata: ["runtime": "\(name)", "reason": "\(probe.detail)"])
        }
        pools?.runtimeProbed(name, available: probe.available)
        if serving.load(ordering: .sequentiallyConsistent) { publishHeartbeat() }
    }

    /// Whether `runtime` is served here and its probe found it usable.
    func runtimeAvailable(_ runtime: String) -> Bool {
        runtimes[runtime] != nil && probes.withLock({ $0[runtime]?.available }) == true
    }

    func heartbeat() -> Hangar_V1_NodeHeartbeat {
        var heartbeat = Hangar_V1_NodeHeartbeat()
        heartbeat.nodeID = config.nodeID
        heartbeat.incarnation = incarnation
        heartbeat.sequence = sequence.add(1, ordering: .relaxed).newValue
        heartbeat.capacity.cpuMillis = UInt32(ProcessInfo.processInfo.activeProcessorCount * 1000)
        heartbeat.capacity.memoryBytes = ProcessInfo.processInfo.physicalMemory
        heartbeat.capacity.slotsTotal = UInt32(config.slots)
        let jobs = running.withLock { Array($0.keys) }
        heartbeat.capacity.slotsUsed = UInt32(jobs.count + sandboxSlotsUsed)
        heartbeat.runningJobs = jobs.sorted()
        heartbeat.reportingJobs = reporting.withLock { $0.sorted() }
        heartbeat.sandboxes = sandboxHost?.sandboxIDs.sorted() ?? []
        heartbeat.runtimes = probes.withLock { probes in
            probes.sorted { $0.key < $1.key }.map { name, probe in
                var availability = Hangar_V1_RuntimeAvailability()
                availability.name = name
                availability.available = probe.available
                availability.detail = probe.detail
                availability.maxLimits = config.limits(of: name).maximum
                return availability
            }
        }
        if let store = config.templates {
            let manifests = store.list()
            heartbeat.templates = [TemplateName.host] + manifests.map(\.name)
            heartbeat.templateInfo = manifests.map(TemplateInfo.init)
        } else {
            heartbeat.templates = [TemplateName.host]
        }
        heartbeat.pools = pools?.status() ?? []
        heartbeat.labels = config.labels
        heartbeat.health = .healthy
        heartbeat.version = hangarVersion
        heartbeat.host = hostName
        heartbeat.natsServer = nats.connectedURL
        heartbeat.sentAtMs = unixMilliseconds()
        return heartbeat
    }

    private func publishHeartbeat() {
        do {
            try nats.publish(Subjects.heartbeat(node: config.nodeID), payload: try heartbeat().serializedData())
        } catch {
            logger.warning("heartbeat not sent", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Cancel

    /// Kills the sandbox of one attempt: the tenant cancelled it, or the scheduler gave it to
    /// another node. Its result (CANCELLED) is still reported; the scheduler records it as stale.
    private func handleCancel(_ message: NATSMessage) {
        guard let cancel = try? Hangar_V1_CancelAttempt(serializedBytes: message.payload) else {
            logger.warning("ignored a malformed cancel")
            return
        }
        if let refusal = termFence.admit(cancel.schedulerTerm) {
            logger.warning("ignored a cancel", metadata: ["job.id": "\(cancel.jobID)", "reason": "\(refusal)"])
            return
        }
        let task = running.withLock { $0["\(cancel.jobID)/\(cancel.attempt)"] }
        guard let task else { return }
        logger.info(
            "killing sandbox",
            metadata: ["job.id": "\(cancel.jobID)", "attempt": "\(cancel.attempt)", "reason": "\(cancel.reason)"]
        )
        task.cancel()
    }

    // MARK: Assignments

    private func handleAssignment(_ message: NATSMessage) {
        if message.header(AssignBatch.header) == AssignBatch.value {
            handleAssignmentBatch(message)
            return
        }
        let reply = assignReply(
            admit(message),
            traceparent: message.header(TraceContext.header)
        )
        if let payload = try? reply.serializedData() {
            try? nats.reply(to: message, payload: payload)
        }
    }

    /// The answer to one assignment, logged.
    func assignReply(_ admission: Result<Hangar_V1_Assignment, Refusal>, traceparent: String?) -> Hangar_V1_AssignReply
    {
        var reply = Hangar_V1_AssignReply()
        switch admission {
        case .success(let assignment):
            var ack = Hangar_V1_AssignAck()
            ack.jobID = assignment.jobID
            ack.attempt = assignment.attempt
            reply.outcome = .ack(ack)
            logger.debug(
                "assignment accepted",
                metadata: [
                    "job.id": "\(assignment.jobID)", "attempt": "\(assignment.attempt)",
                    "tenant": "\(assignment.tenant)",
                    "trace.id": "\(TraceContext(traceparent: traceparent)?.traceID ?? "-")",
                ]
            )
        case .failure(let refusal):
            reply.outcome = .refused(refusal.refused)
            logger.info("refused assignment", metadata: ["reason": "\(refusal.refused.message)"])
        }
        return reply
    }

    private func admit(_ message: NATSMessage) -> Result<Hangar_V1_Assignment, Refusal> {
        guard let assignment = try? Hangar_V1_Assignment(serializedBytes: message.payload) else {
            return .failure(Refusal(.badAssignment, "the payload is not a hangar.v1.Assignment"))
        }
        return admit(assignment)
    }

    /// Takes a slot for the assignment and starts it, or says why not.
    func admit(_ assignment: consuming Hangar_V1_Assignment) -> Result<Hangar_V1_Assignment, Refusal> {
        guard Subjects.isValidToken(assignment.jobID), assignment.attempt > 0 else {
            return .failure(Refusal(.badAssignment, "the assignment has no valid job id or attempt"))
        }
        // Placed on an earlier life of this node: the scheduler believes it runs whatever that one
        // ran and will lose and retry it when it sees the restart; running it here too would run
        // the job twice.
        guard assignment.nodeIncarnation.isEmpty || assignment.nodeIncarnation == incarnation else {
            return .failure(
                Refusal(
                    .badAssignment,
                    "placed on incarnation \(assignment.nodeIncarnation) of this node, which has restarted since (now \(incarnation))"
                )
            )
        }
        // From a scheduler that has lost the lease to a newer one (the newer one may have placed
        // this job elsewhere): kept term first, so a restart of this node still refuses it.
        if let refusal = termFence.admit(assignment.schedulerTerm) {
            return .failure(Refusal(.staleTerm, refusal.description))
        }
        guard let runtime = runtimes[assignment.spec.runtime], runtimeAvailable(assignment.spec.runtime) else {
            return .failure(Refusal(.runtimeUnavailable, "runtime '\(assignment.spec.runtime)' is not available here"))
        }
        if let missing = missingTemplate(assignment.spec) {
            return .failure(Refusal(.runtimeUnavailable, missing))
        }
        switch config.limits(of: assignment.spec.runtime).resolve(assignment.spec.limits) {
        case .success(let limits): assignment.spec.limits = limits
        case .failure(let above): return .failure(Refusal(.limitAboveMaximum, above.description))
        }
        let key = "\(assignment.jobID)/\(assignment.attempt)"
        let resolved = assignment
        let sandboxSlots = sandboxSlotsUsed  // stateful sandboxes hold slots too
        let admitted: Bool = running.withLock { running in
            if running[key] != nil { return true }  // a repeated assignment: already running
            guard running.count + sandboxSlots < config.slots else { return false }
            running[key] = Task { await self.execute(resolved, in: runtime, key: key) }
            return true
        }
        guard admitted else {
            return .failure(Refusal(.noFreeSlot, "all \(config.slots) slots are busy"))
        }
        return .success(assignment)
    }

    private func execute(_ assignment: Hangar_V1_Assignment, in runtime: any Runtime, key: String) async {
        if logger.logLevel <= .debug {
            logger.debug(
                "running",
                metadata: [
                    "job.id": "\(assignment.jobID)", "attempt": "\(assignment.attempt)",
                    "tenant": "\(assignment.tenant)", "runtime": "\(runtime.name)",
                ]
            )
        }
        let outcome: RunOutcome
        if let sandbox = pools?.take(assignment.spec) {
            logger.debug("warm sandbox", metadata: ["job.id": "\(assignment.jobID)"])
            outcome = await sandbox.run(assignment.spec, jobID: assignment.jobID)
        } else {
            outcome = await OutputTap.$current.withValue(outputTap(for: assignment)) {
                await runtime.run(assignment.spec, jobID: assignment.jobID)
            }
        }
        // Listed as reporting before it leaves the running set: a heartbeat built meanwhile lists
        // it in one or the other (it reads running first).
        reporting.withLock { _ = $0.insert(key) }
        running.withLock { _ = $0.removeValue(forKey: key) }
        await report(outcome, for: assignment)
        reporting.withLock { _ = $0.remove(key) }
    }

    /// Publishes the job's output chunks on `hangar.logs.<tenant>.<job>` as they are read (best
    /// effort: nothing waits for a reader, and the Result carries the whole capped output).
    private func outputTap(for assignment: Hangar_V1_Assignment) -> OutputTap? {
        guard Subjects.isValidToken(assignment.tenant) else { return nil }
        let subject = Subjects.logs(tenant: assignment.tenant, job: assignment.jobID)
        let nats = self.nats
        let attempt = String(assignment.attempt)
        return OutputTap { stream, offset, chunk in
            try? nats.publish(
                subject,
                payload: chunk,
                headers: ["Hangar-Stream": stream.rawValue, "Hangar-Offset": String(offset), "Hangar-Attempt": attempt]
            )
        }
    }

    /// Hands the result to the results outbox and returns once it is in the stream: the node
    /// keeps nothing afterwards, the stream holds it until the scheduler has stored it.
    private func report(_ outcome: RunOutcome, for assignment: Hangar_V1_Assignment) async {
        var result = Hangar_V1_AttemptResult()
        result.jobID = assignment.jobID
        result.attempt = assignment.attempt
        result.nodeID = config.nodeID
        result.status = outcome.status
        result.exitCode = outcome.exitCode
        result.signal = outcome.signal
        result.stdout = outcome.stdout
        result.stderr = outcome.stderr
        result.stdoutTruncated = outcome.stdoutTruncated
        result.stderrTruncated = outcome.stderrTruncated
        result.usage.cpuTimeUs = outcome.cpuTimeMicroseconds
        result.usage.peakMemoryBytes = outcome.peakMemoryBytes
        result.usage.stdoutBytes = outcome.stdoutBytes
        result.usage.stderrBytes = outcome.stderrBytes
        result.usage.pidsLimitHits = outcome.pidsLimitHits
        result.startMs = outcome.startMilliseconds
        result.runMs = outcome.runMilliseconds
        result.message = outcome.message
        result.files = outcome.filesOut
        await results.send(result)
    }
}

/// Why the node refused an assignment.
struct Refusal: Error {
    let refused: Hangar_V1_AssignRefused

    init(_ reason: Hangar_V1_RefuseReason, _ message: String) {
        var refused = Hangar_V1_AssignRefused()
        refused.reason = reason
        refused.message = message
        self.refused = refused
    }
}

/// A node agent failure a person can act on.
public struct NodeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
