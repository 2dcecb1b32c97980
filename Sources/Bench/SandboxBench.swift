import Foundation
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Logging
import Synchronization

/// `hangar-bench sandboxes`: stateful sandboxes (issue 16) measured at the client, against a real
/// cluster on loopback: a nats-server child, the scheduler and one node in this process, the node
/// holding real bubblewrap sandboxes with the real `hangar-sandbox-agent` (next to this program, or
/// at `$HANGAR_SANDBOX_AGENT`). Steps:
/// 1. create → ready: the create request answered with the sandbox running (each killed after);
///    1b. the same for `container` sandboxes (runc) where the node has runc;
/// 2. exec `/bin/true` round trip on a running sandbox, against a bare `posix_spawn` + wait of
///    `/bin/true` and a raw NATS request/reply round trip, both in the same run;
/// 3. write then read 1 MiB (`files.write`, `files.read`); 3b. the code interpreter (``CodeBench``);
///    3c. a create and its first cell served by the node's warm sandbox, against the same cold
///    (the node runs with one warm sandbox; the other steps' creates carry an `env`, so they start
///    cold);
/// 4. `--count` (100) idle sandboxes of 64 MiB at once on the node: the time to create them, the
///    resident memory they cost, and whether each answers an exec afterwards;
/// 5. the other runtimes (`--runtimes LIST`, default `container,gvisor,microvm`: those the node can
///    hold here): create → ready, exec and 1 MiB for each (``measureRuntimes(_:runtimes:creates:execs:files:)``).
///
/// Every sandbox created is killed at the end, also when a step fails.
enum SandboxBench {
    struct Options {
        var quick = false
        var count: Int?
        /// A directory template step 3c is measured with too (`--template NAME`), from the store of
        /// `--state-dir DIR` (default `/var/lib/hangar`).
        var template: String?
        var stateDirectory = TemplateStore.defaultStateDirectory
        /// Step 5's runtimes.
        var runtimes = ["container", "gvisor", "microvm"]

        init(_ arguments: [String]) throws {
            var iterator = arguments.makeIterator()
            while let argument = iterator.next() {
                switch argument {
                case "--quick": quick = true
                case "--count":
                    guard let text = iterator.next(), let number = Int(text), number > 0 else {
                        throw BenchError("--count needs a positive number")
                    }
                    count = number
                case "--template":
                    guard let name = iterator.next(), TemplateName.isValid(name) else {
                        throw BenchError("--template needs a template name")
                    }
                    template = name
                case "--state-dir":
                    guard let path = iterator.next() else { throw BenchError("--state-dir needs a folder") }
                    stateDirectory = path
                case "--runtimes":
                    guard let list = iterator.next() else { throw BenchError("--runtimes needs a list (or \"\")") }
                    runtimes = list.split(separator: ",").map(String.init)
                    for runtime in runtimes where !["container", "gvisor", "microvm"].contains(runtime) {
                        throw BenchError("--runtimes: \(runtime) is not one of container, gvisor, microvm")
                    }
                default:
                    throw BenchError(
                        "unknown argument \(argument) (--quick, --count N, --template NAME, --state-dir DIR, --runtimes LIST)"
                    )
                }
            }
        }

        var creates: Int { quick ? 10 : 30 }
        var execs: Int { quick ? 50 : 200 }
        var files: Int { quick ? 10 : 30 }
        var idle: Int { count ?? (quick ? 20 : 100) }
    }

    static let tenant = "bench"
    static let idleMemoryBytes: UInt64 = 64 << 20

    /// Prints the report, or the reason the bench failed (on stderr, exit status 1).
    static func main(_ arguments: [String]) async {
        do {
            print(try await run(arguments))
        } catch {
            FileHandle.standardError.write(Data("hangar-bench sandboxes: \(error)\n".utf8))
            exit(1)
        }
    }

    /// The environment of creates meant to start cold (no warm sandbox serves one with an env).
    static let cold = ["HANGAR_BENCH": "cold"]

    static func run(_ arguments: [String]) async throws -> String {
        let options = try Options(arguments)
        guard geteuid() == 0 else { throw BenchError("stateful process sandboxes need root (the node runs here)") }
        guard let agentPath = ProcessSandbox.locateAgent() else {
            throw BenchError(
                "no hangar-sandbox-agent next to \(CommandLine.arguments[0]) (nor $HANGAR_SANDBOX_AGENT); "
                    + "build it: swift build -c release --product hangar-sandbox-agent"
            )
        }
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "hangar-sbx-bench-\(UUID().uuidString)"
        )
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(directory: directory.appendingPathComponent("nats"))
        defer { server.stop() }
        func connect(_ name: String) async throws -> NATSConnection {
            try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name, logger: logger))
        }

        // The scheduler: no rate limit, room for all the idle sandboxes of step 4 in the tenant's
        // policy, and enough CPU overcommit that they fit one node at their default CPU limit (one
        // core each; the node offers its cores × the overcommit).
        let cores = ProcessInfo.processInfo.activeProcessorCount
        var config = SchedulerConfig(databasePath: directory.appendingPathComponent("hangar.sqlite").path)
        config.tenants.defaults.rate = 1e9
        config.tenants.defaults.burst = 1e9
        config.tenants.defaults.maxLiveSandboxes = options.idle + 16
        config.cpuOvercommit = max(config.cpuOvercommit, Double(options.idle + 16) / Double(cores))
        let scheduler = Scheduler(
            config: config,
            nats: try await connect("scheduler"),
            store: try Store(path: config.databasePath),
            logger: logger
        )
        let resources = NodeResources(users: SandboxUsers.standard())
        // One warm sandbox (step 3c); the other steps' creates carry an `env`, which a warm
        // sandbox does not serve, so they measure cold starts.
        let templates = options.template.map { _ in TemplateStore(stateDirectory: options.stateDirectory) }
        if let name = options.template, let templates {
            do {
                _ = try templates.template(named: name)
            } catch {
                throw BenchError("--template: \(error.description)")
            }
        }
        // Step 5's microvm sandboxes, when asked for and the machine can boot one.
        var microvm: MicroVMRuntime?
        var microvmUnavailable: String?
        if options.runtimes.contains("microvm") {
            let runtime = MicroVMRuntime(resources: resources, logger: logger)
            let probe = await runtime.probe()
            if probe.available { microvm = runtime } else { microvmUnavailable = probe.detail }
        }
        let host = ProcessSandboxHost(
            agentPath: agentPath,
            microvm: microvm,
            templates: templates,
            resources: resources,
            warmSandboxes: 1,
            logger: logger
        )
        var nodeConfig = NodeConfig(nodeID: "bench-sbx", slots: options.idle + 16)
        nodeConfig.heartbeatInterval = .milliseconds(200)
        nodeConfig.templates = templates
        let agent = NodeAgent(
            config: nodeConfig,
            nats: try await connect("node"),
            // `container` too where runc is (step 1b: the scheduler places a container sandbox only
            // on a node that offers the runtime).
            runtimes: [ProcessRuntime(templates: templates, resources: resources)]
                + (host.availableRuntimes.contains("container")
                    ? [ContainerRuntime(templates: templates, resources: resources)] : [])
                + (host.availableRuntimes.contains("gvisor")
                    ? [GVisorRuntime(templates: templates, resources: resources)] : []) + (microvm.map { [$0] } ?? []),
            resources: resources,
            sandboxHost: host,
            logger: logger
        )
        let tasks = [Task { try await scheduler.run() }, Task { try await agent.run() }]
        let client = try await connect("client")
        let cluster = BenchCluster(url: server.url, client: client, host: host)

        let report: String
        do {
            report = try await measure(
                cluster,
                options: options,
                agentPath: agentPath,
                resources: resources,
                cores: cores,
                config: config,
                microvmUnavailable: microvmUnavailable
            )
        } catch {
            await cluster.cleanUp()
            for task in tasks { task.cancel() }
            for task in tasks { _ = try? await task.value }
            throw error
        }
        await cluster.cleanUp()
        for task in tasks { task.cancel() }
        for task in tasks { _ = try? await task.value }
        return report
    }

    private static func measure(
        _ cluster: BenchCluster,
        options: Options,
        agentPath: String,
        resources: NodeResources,
        cores: Int,
        config: SchedulerConfig,
        microvmUnavailable: String?
    ) async throws -> String {
        let client = cluster.client
        let loadAtStart = ProcessMemory.loadAverage()
        // The node is up once a sandbox can be created on it (its heartbeat and the process
        // runtime's probe first); that first sandbox is also the warm-up.
        let first = try await cluster.firstSandbox(within: .seconds(30))
        try await cluster.kill(first.id)

        // 1. create → ready, each killed after (the kill is not timed); interleaved with the
        // node's share of it: the same sandbox started straight on the host (cgroup, writable
        // layer, bubblewrap, the agent's first answer), no scheduler, no NATS; killed after.
        let (create, directStart) = try await interleavedCreates(
            cluster,
            step: "step 1",
            runtime: "process",
            rounds: options.creates,
            warmUp: 0
        ) { index in
            let direct = try await ProcessSandbox.start(
                id: "bench-direct-\(index)",
                agentPath: agentPath,
                resources: resources,
                logger: Logger(label: "bench")
            )
            return { await direct.kill() }
        }
        let container = try await measureContainer(
            cluster,
            options: options,
            agentPath: agentPath,
            resources: resources
        )

        // 2. exec /bin/true on one running sandbox, interleaved with its baselines (a bare
        // posix_spawn + wait of /bin/true, a raw NATS request/reply), so that all three see the
        // same load.
        let echoConnection = try await NATSConnection(
            options: NATSConnectionOptions(servers: [cluster.url], name: "echo", logger: client.options.logger)
        )
        let echo = try echoConnection.subscribe("bench.echo")
        let echoTask = Task {
            for await message in echo { try? echoConnection.reply(to: message, payload: message.payload) }
        }
        try await echoConnection.flush()
        let echoPayload = try Hangar_V1_SandboxExecRequest.with { $0.argv = ["/bin/true"] }.serializedData()
        let sandbox = try await cluster.create(env: Self.cold)
        for _ in 0..<10 {
            try await cluster.execTrue(sandbox)
            try spawnAndWait("/bin/true")
            _ = try await client.request("bench.echo", payload: echoPayload, timeout: .seconds(5))
        }
        var execTimes: [Duration] = []
        var spawnTimes: [Duration] = []
        var natsTimes: [Duration] = []
        for index in 0..<options.execs {
            var start = ContinuousClock.now
            do {
                try await cluster.execTrue(sandbox)
            } catch {
                throw BenchError("step 2 (exec /bin/true), exec \(index + 1) of \(options.execs): \(error)")
            }
            execTimes.append(start.duration(to: .now))
            start = ContinuousClock.now
            try spawnAndWait("/bin/true")
            spawnTimes.append(start.duration(to: .now))
            start = ContinuousClock.now
            _ = try await client.request("bench.echo", payload: echoPayload, timeout: .seconds(5))
            natsTimes.append(start.duration(to: .now))
        }
        let exec = Percentiles(execTimes)
        let spawn = Percentiles(spawnTimes)
        let nats = Percentiles(natsTimes)

        // 3. write then read 1 MiB in the same sandbox.
        var generator = SystemRandomNumberGenerator()
        let content = Data((0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        _ = try await cluster.write(sandbox, path: "/home/user/warm.bin", content)
        var writeTimes: [Duration] = []
        var readTimes: [Duration] = []
        var bothTimes: [Duration] = []
        for index in 0..<options.files {
            let path = "/home/user/bench-\(index).bin"
            let start = ContinuousClock.now
            let read: Data
            do {
                try await cluster.write(sandbox, path: path, content)
                let written = ContinuousClock.now
                writeTimes.append(start.duration(to: written))
                read = try await cluster.read(sandbox, path: path)
                readTimes.append(written.duration(to: .now))
            } catch {
                throw BenchError("step 3 (write + read 1 MiB), round \(index + 1) of \(options.files): \(error)")
            }
            bothTimes.append(start.duration(to: .now))
            guard read == content else {
                throw BenchError("step 3: read back \(read.count) bytes that differ from the 1 MiB written")
            }
        }
        let write = Percentiles(writeTimes)
        let read = Percentiles(readTimes)
        let files = Percentiles(bothTimes)
        // Baseline: the same MiB through NATS to the echo responder and back (one round trip
        // carrying it both ways, as the write and the read together do).
        var bigEchoTimes: [Duration] = []
        for _ in 0..<options.files {
            let start = ContinuousClock.now
            let echoed = try await client.request("bench.echo", payload: content, timeout: .seconds(5))
            bigEchoTimes.append(start.duration(to: .now))
            guard echoed.payload.count == content.count else { throw BenchError("the echo lost bytes") }
        }
        let bigEcho = Percentiles(bigEchoTimes)
        // The node's share: the same write and read straight on the sandbox's agent channel, no
        // NATS.
        guard let target = cluster.host.dataTarget(sandbox.id, tenant: Self.tenant) else {
            throw BenchError("step 3: the node does not hold sandbox \(sandbox.id)")
        }
        var agentTimes: [Duration] = []
        for index in 0..<options.files {
            let path = "/home/user/agent-\(index).bin"
            let start = ContinuousClock.now
            try await target.agent.writeFile(path, data: content)
            let read = try await target.agent.readWholeFile(path)
            agentTimes.append(start.duration(to: .now))
            guard read == content else { throw BenchError("step 3: the agent read back other bytes") }
        }
        let agentFiles = Percentiles(agentTimes)
        echoTask.cancel()
        echo.unsubscribe()
        await echoConnection.close()
        // 3b. The code interpreter (issue 17) in the same sandbox.
        let code = try await CodeBench.measure(cluster, sandbox: sandbox, runs: options.execs)
        try await cluster.kill(sandbox.id)
        try await cluster.waitUntilNodeHoldsNone(within: .seconds(30))
        // 3c. Creates served by the node's warm sandbox, against cold ones.
        let (warmTable, warmReady) = try await CodeBench.measureWarm(cluster, runs: options.creates)
        var warm = warmTable
        try await cluster.waitUntilNodeHoldsNone(within: .seconds(30))
        if let template = options.template {
            warm += try await CodeBench.measureWarm(cluster, runs: options.creates, template: template).table
            try await cluster.waitUntilNodeHoldsNone(within: .seconds(30))
        }
        // 5. The other runtimes (before step 4, whose idle sandboxes would crowd them).
        var (others, skipped) = try await measureRuntimes(
            cluster,
            runtimes: options.runtimes,
            creates: options.quick ? 3 : 10,
            execs: options.quick ? 20 : 100,
            files: options.quick ? 5 : 10
        )
        if let microvmUnavailable {
            skipped = skipped.filter { !$0.hasPrefix("`microvm`") } + ["`microvm`: \(microvmUnavailable)"]
        }
        let othersTable = runtimesTable(others, skipped: skipped, process: (create, warmReady, exec, files))
        await cluster.host.stop()  // no warm sandbox during step 4's memory figures

        // 4. `idle` sandboxes of 64 MiB live at once on the node.
        try await Task.sleep(for: .seconds(1))
        let before = ProcessMemory.own()
        var idle: [Hangar_V1_SandboxInfo] = []
        var stoppedBecause: String?
        let idleStart = ContinuousClock.now
        for index in 0..<options.idle {
            do {
                idle.append(try await cluster.create(memoryBytes: idleMemoryBytes))
            } catch {
                stoppedBecause = "create \(index + 1) of \(options.idle) failed: \(error)"
                break
            }
        }
        let idleElapsed = idleStart.duration(to: .now)
        try await Task.sleep(for: .seconds(2))  // idle: let the agents settle
        let after = ProcessMemory.own()
        let children = ProcessMemory.sandboxProcesses()
        var execFailures: [String] = []
        let execStart = ContinuousClock.now
        for info in idle {
            do {
                try await cluster.execTrue(info)
            } catch {
                execFailures.append("\(info.id): \(error)")
            }
        }
        let execAllElapsed = execStart.duration(to: .now)

        return code + warm + "\n" + (othersTable.isEmpty ? "" : othersTable + "\n")
            + report(
                options: options,
                loadAtStart: loadAtStart,
                cores: cores,
                config: config,
                create: create,
                directStart: directStart,
                container: container,
                exec: exec,
                spawn: spawn,
                nats: nats,
                write: write,
                read: read,
                files: files,
                agentFiles: agentFiles,
                bigEcho: bigEcho,
                idle: IdleFigures(
                    asked: options.idle,
                    created: idle.count,
                    stoppedBecause: stoppedBecause,
                    elapsed: idleElapsed,
                    before: before,
                    after: after,
                    children: children,
                    execFailures: execFailures,
                    execElapsed: execAllElapsed
                )
            )
    }

    /// Step 1b, where the node has runc: `container` sandboxes' create → ready through the
    /// scheduler, interleaved with the node's share of it (`ContainerSandbox.start` on the host);
    /// each killed after, untimed. Nil without runc.
    private static func measureContainer(
        _ cluster: BenchCluster,
        options: Options,
        agentPath: String,
        resources: NodeResources
    ) async throws -> (create: Percentiles, direct: Percentiles)? {
        guard cluster.host.availableRuntimes.contains("container") else { return nil }
        let runtime = ContainerRuntime(resources: resources)
        return try await interleavedCreates(
            cluster,
            step: "step 1b",
            runtime: "container",
            rounds: options.creates,
            warmUp: 1
        ) { index in
            let direct = try await ContainerSandbox.start(
                id: "bench-direct-c\(index)",
                agentPath: agentPath,
                runtime: runtime,
                logger: Logger(label: "bench")
            )
            return { await direct.kill() }
        }
    }

    /// Creates of `runtime` sandboxes through the scheduler (create → ready, cold), each
    /// interleaved with the node's share of it (`direct` starts one straight on the host and
    /// returns its kill); every sandbox killed after, untimed. The first `warmUp` rounds are not
    /// counted.
    private static func interleavedCreates(
        _ cluster: BenchCluster,
        step: String,
        runtime: String,
        rounds: Int,
        warmUp: Int,
        direct: (Int) async throws -> @Sendable () async -> String?
    ) async throws -> (create: Percentiles, direct: Percentiles) {
        var createTimes: [Duration] = []
        var startTimes: [Duration] = []
        for index in 0..<(rounds + warmUp) {
            var start = ContinuousClock.now
            let info: Hangar_V1_SandboxInfo
            do {
                info = try await cluster.create(env: Self.cold, runtime: runtime)
            } catch {
                throw BenchError("\(step) (\(runtime) create → ready), create \(index + 1): \(error)")
            }
            if index >= warmUp { createTimes.append(start.duration(to: .now)) }
            try await cluster.kill(info.id)
            try await cluster.waitUntilNodeHoldsNone(within: .seconds(30))
            start = ContinuousClock.now
            let kill: @Sendable () async -> String?
            do {
                kill = try await direct(index)
            } catch {
                throw BenchError("\(step), \(runtime) sandbox started on the host, \(index + 1): \(error)")
            }
            if index >= warmUp { startTimes.append(start.duration(to: .now)) }
            if let problem = await kill() { throw BenchError("\(step), a direct sandbox's kill: \(problem)") }
        }
        return (Percentiles(createTimes), Percentiles(startTimes))
    }

    struct IdleFigures {
        var asked: Int
        var created: Int
        var stoppedBecause: String?
        var elapsed: Duration
        var before: ProcessMemory.Figures
        var after: ProcessMemory.Figures
        var children: ProcessMemory.Children
        var execFailures: [String]
        var execElapsed: Duration
    }

    private static func report(
        options: Options,
        loadAtStart: String,
        cores: Int,
        config: SchedulerConfig,
        create: Percentiles,
        directStart: Percentiles,
        container: (create: Percentiles, direct: Percentiles)?,
        exec: Percentiles,
        spawn: Percentiles,
        nats: Percentiles,
        write: Percentiles,
        read: Percentiles,
        files: Percentiles,
        agentFiles: Percentiles,
        bigEcho: Percentiles,
        idle: IdleFigures
    ) -> String {
        func verdict(_ met: Bool) -> String { met ? "**met**" : "**not met**" }
        let overSpawn = seconds(exec.p50) - seconds(spawn.p50)
        let machine =
            "\(cores) cores, "
            + String(format: "%.0f GiB", Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824)
        func row(_ what: String, _ sample: Percentiles, goal: String = "", met: String = "") -> String {
            "| \(what) | \(sample.count) | \(ms(sample.p50)) | \(ms(sample.p90)) | \(ms(sample.p99)) | \(goal) | \(met) |\n"
        }
        var table = """
            | what (at the client) | n | p50 | p90 | p99 | goal (issue 16) | |
            |---|---|---|---|---|---|---|

            """
        table += row(
            "create → ready (create answered with the sandbox running; cold: a create with an `env`)",
            create,
            goal: "p50 ≤ 25 ms",
            met: verdict(seconds(create.p50) <= 0.025)
        )
        table += row(
            "node side alone, same run: `ProcessSandbox.start` → agent ready (no scheduler, no NATS)",
            directStart
        )
        if let container {
            // Cold: issue 16's goal is for creates from a warm pool (step 3c), which serves `process`.
            table += row(
                "`container` create → ready (a runc container, cold: a create with an `env`)",
                container.create
            )
            table += row(
                "node side alone, same run: `ContainerSandbox.start` → agent ready (no scheduler, no NATS)",
                container.direct
            )
        }
        table += row(
            "exec `/bin/true` round trip (`hangar.sbx.….exec`, until its exit event)",
            exec,
            goal: "≤ 2 ms above bare posix_spawn",
            met: verdict(overSpawn <= 0.002)
        )
        table += row("baseline: posix_spawn + wait of `/bin/true` from the bench process", spawn)
        table += row("baseline: raw NATS request/reply (echo responder, same server)", nats)
        table += row(
            "write then read 1 MiB (`files.write` + `files.read`)",
            files,
            goal: "≤ 10 ms",
            met: verdict(seconds(files.p50) <= 0.010)
        )
        table += row("… of which write 1 MiB", write)
        table += row("… of which read 1 MiB", read)
        table += row("baseline: raw NATS request/reply, 1 MiB each way (echo responder)", bigEcho)
        table += row("node side alone: the same write and read on the agent's channel (no NATS)", agentFiles)

        let perSandbox = { (kib: Int) in String(format: "%.1f MiB", Double(kib) / 1024 / Double(max(1, idle.created))) }
        let ownGrowth = idle.after.rssKiB - idle.before.rssKiB
        let idleVerdict =
            idle.asked < 100
            ? "not tested (--count \(idle.asked), below the goal's 100)"
            : verdict(idle.created == idle.asked && idle.execFailures.isEmpty)
        let idleText = """
            Step 4, idle sandboxes: \(idle.created) of \(idle.asked) created \
            (memory limit \(idleMemoryBytes >> 20) MiB each, default CPU limit of one core each), one after \
            another, in \(String(format: "%.2f", seconds(idle.elapsed))) s \
            (\(ms(idle.elapsed / max(1, idle.created))) each on average)\(idle.stoppedBecause.map { "; stopped: \($0)" } ?? "").
            All live at once, each answered an exec of `/bin/true` afterwards: \
            \(idle.created - idle.execFailures.count) of \(idle.created) \
            (in \(String(format: "%.2f", seconds(idle.execElapsed))) s, one after another).\
            \(idle.execFailures.isEmpty ? "" : " First failures: " + idle.execFailures.prefix(3).joined(separator: "; "))
            Resident memory with \(idle.created) idle sandboxes (from /proc): their \(idle.children.processes) \
            processes (\(idle.children.byName.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))) \
            RSS \(idle.children.rssKiB / 1024) MiB, PSS \(idle.children.pssKiB / 1024) MiB; their memory cgroups' \
            usage \(idle.children.cgroupBytes >> 20) MiB (\(idle.children.cgroups) cgroups; \
            includes page cache and kernel memory). The node's own process (here one process with the \
            scheduler and the client) grew by \(ownGrowth / 1024) MiB RSS (\(idle.before.rssKiB / 1024) → \
            \(idle.after.rssKiB / 1024) MiB). Per idle sandbox: **\(perSandbox(idle.children.rssKiB + ownGrowth)) \
            RSS** (node growth + sandbox processes), \(perSandbox(idle.children.pssKiB + ownGrowth)) counting \
            the sandbox processes' PSS. Goal (issue 16): 100 idle 64 MiB sandboxes on one node — \
            \(idleVerdict).

            """
        return """
            ## Stateful sandboxes (`swift run -c release hangar-bench sandboxes\(options.quick ? " --quick" : "")\(options.count.map { " --count \($0)" } ?? "")`)

            Machine: \(machine). A real nats-server on loopback; the scheduler and one node (the \
            `process` runtime, \(options.idle + 16) slots, CPU overcommit \(String(format: "%.0f", config.cpuOvercommit))×) in \
            this process, the node holding bubblewrap sandboxes with the real `hangar-sandbox-agent`; \
            tenant `\(tenant)` without authorization. Times at the client, sequential requests; each \
            step's baselines interleaved with it, in the same run. p99 of fewer than 100 samples is their maximum. Load average \
            (1, 5, 15 min) at the start: \(loadAtStart); at the end: \(ProcessMemory.loadAverage()).

            \(table)
            exec − bare spawn (p50): \(String(format: "%.3f ms", overSpawn * 1000)); exec / bare spawn: \
            \(ratio(exec.p50, spawn.p50))×; exec / raw NATS round trip: \(ratio(exec.p50, nats.p50))×.

            \(idleText)
            """
    }
}

/// p50, p90 and p99 of a set of durations (the nearest rank at or below).
struct Percentiles {
    let count: Int
    let p50: Duration
    let p90: Duration
    let p99: Duration

    init(_ durations: [Duration]) {
        let sorted = durations.sorted()
        count = sorted.count
        func at(_ fraction: Double) -> Duration {
            sorted.isEmpty ? .zero : sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
        }
        p50 = at(0.5)
        p90 = at(0.9)
        p99 = at(0.99)
    }
}

/// The bench's client side of the cluster: creates, kills, execs and file operations, each with a
/// deadline, remembering every sandbox it created so that ``cleanUp()`` can kill them all.
final class BenchCluster: Sendable {
    let url: String
    let client: NATSConnection
    let host: ProcessSandboxHost
    private let live = Mutex<Set<String>>([])

    init(url: String, client: NATSConnection, host: ProcessSandboxHost) {
        self.url = url
        self.client = client
        self.host = host
    }

    /// A request to the scheduler or a node, with a message naming what timed out.
    private func request(_ subject: String, _ payload: Data, timeout: Duration, what: String) async throws -> Data {
        do {
            return try await client.request(subject, payload: payload, timeout: timeout).payload
        } catch let error as NATSError where error.kind == .timeout {
            throw BenchError("\(what): no answer within \(timeout)")
        } catch let error as NATSError where error.kind == .noResponders {
            throw BenchError("\(what): nobody listens on \(subject)")
        }
    }

    /// Creates a sandbox (of `runtime`) and returns it once it runs (the scheduler answers then).
    func create(
        memoryBytes: UInt64? = nil,
        env: [String: String] = [:],
        template: String = "host",
        runtime: String = "process"
    ) async throws -> Hangar_V1_SandboxInfo {
        var request = Hangar_V1_SandboxCreateRequest()
        request.runtime = runtime
        request.template = template
        request.timeoutMs = 1_800_000
        request.env = env
        if let memoryBytes { request.limits.memoryBytes = memoryBytes }
        let payload = try await self.request(
            Subjects.sandbox(tenant: SandboxBench.tenant, verb: "create"),
            try request.serializedData(),
            timeout: .seconds(40),
            what: "create"
        )
        let reply = try Hangar_V1_SandboxCreateReply(serializedBytes: payload)
        switch reply.outcome {
        case .created(let info):
            if info.state != .sandboxEnded { _ = live.withLock { $0.insert(info.id) } }
            guard info.state == .sandboxRunning, !info.nodeID.isEmpty else {
                throw BenchError("sandbox \(info.id) is not running (\(info.state)): \(info.message)")
            }
            return info
        case .rejected(let rejected):
            throw BenchError("create rejected (\(rejected.reason)): \(rejected.message)")
        case nil:
            throw BenchError("the scheduler answered create with an empty reply")
        }
    }

    /// The first sandbox (of `runtime`, with `env`), retried until the node has joined and the
    /// runtime is probed.
    func firstSandbox(
        within limit: Duration,
        env: [String: String] = [:],
        runtime: String = "process"
    ) async throws -> Hangar_V1_SandboxInfo {
        let deadline = ContinuousClock.now + limit
        while true {
            do {
                return try await create(env: env, runtime: runtime)
            } catch {
                if ContinuousClock.now + .milliseconds(500) > deadline {
                    throw BenchError("no sandbox could be created within \(limit): \(error)")
                }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// Kills a sandbox through the scheduler.
    func kill(_ id: String) async throws {
        let payload = try await request(
            Subjects.sandbox(tenant: SandboxBench.tenant, verb: "kill"),
            try Hangar_V1_SandboxKillRequest.with { $0.sandboxID = id }.serializedData(),
            timeout: .seconds(10),
            what: "kill \(id)"
        )
        let reply = try Hangar_V1_SandboxReply(serializedBytes: payload)
        if case .error(let error) = reply.outcome, error.code != .sandboxNotRunning {
            throw BenchError("kill \(id): \(error.message)")
        }
        _ = live.withLock { $0.remove(id) }
    }

    /// Runs `/bin/true` in the sandbox: publishes the exec with a fresh inbox as its reply subject
    /// and waits for its exit event (at most 15 s).
    func execTrue(_ info: Hangar_V1_SandboxInfo) async throws {
        let subject = Subjects.sandboxData(
            node: info.nodeID,
            tenant: SandboxBench.tenant,
            sandbox: info.id,
            verb: "exec"
        )
        let payload = try Hangar_V1_SandboxExecRequest.with { $0.argv = ["/bin/true"] }.serializedData()
        let inbox = client.options.inboxPrefix + ".bench." + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        // The subscription reaches the server before the request: both go down one connection.
        let events = try client.subscribe(inbox)
        defer { events.unsubscribe() }
        try client.publish(subject, payload: payload, replyTo: inbox)
        let exited = try await withThrowingTaskGroup(of: Hangar_V1_AgentExited?.self) { group in
            group.addTask {
                for await message in events {
                    let event = try Hangar_V1_SandboxExecEvent(serializedBytes: message.payload)
                    switch event.kind {
                    case .started, .output, nil: continue
                    case .exited(let exited): return exited
                    case .error(let error): throw BenchError("exec: the node answered \(error.code): \(error.message)")
                    case .agentError(let error): throw BenchError("exec: the sandbox refused it: \(error.message)")
                    }
                }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: .seconds(15))
                throw BenchError("exec /bin/true in \(info.id): no exit event within 15 s")
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let exited else { throw BenchError("exec: the events ended without an exit") }
        guard exited.exitCode == 0, exited.signal == 0 else {
            throw BenchError("exec /bin/true exited with code \(exited.exitCode), signal \(exited.signal)")
        }
    }

    /// One data-plane operation on the sandbox's node (at most 15 s); the agent's or node's error thrown.
    private func operation(
        _ info: Hangar_V1_SandboxInfo,
        _ verb: String,
        _ request: Hangar_V1_SandboxOpRequest
    ) async throws -> Hangar_V1_SandboxOpReply {
        let payload = try await self.request(
            Subjects.sandboxData(node: info.nodeID, tenant: SandboxBench.tenant, sandbox: info.id, verb: verb),
            try request.serializedData(),
            timeout: .seconds(15),
            what: verb
        )
        let reply = try Hangar_V1_SandboxOpReply(serializedBytes: payload)
        switch reply.outcome {
        case .error(let error): throw BenchError("\(verb): the node answered \(error.code): \(error.message)")
        case .agentError(let error): throw BenchError("\(verb): the sandbox answered \(error.code): \(error.message)")
        case nil: throw BenchError("\(verb): an empty answer")
        default: return reply
        }
    }

    /// Writes `content` (at most 1 MiB: one message) to `path` in the sandbox.
    func write(_ info: Hangar_V1_SandboxInfo, path: String, _ content: Data) async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.write.path = path
        request.write.data = content
        let reply = try await operation(info, "files.write", request)
        guard case .ok = reply.outcome else { throw BenchError("files.write: unexpected answer \(reply)") }
    }

    /// Reads `path` from the sandbox, a MiB per request, until its end.
    func read(_ info: Hangar_V1_SandboxInfo, path: String) async throws -> Data {
        var content = Data()
        while true {
            var request = Hangar_V1_SandboxOpRequest()
            request.read.path = path
            request.read.offset = UInt64(content.count)
            request.read.length = 1 << 20
            let reply = try await operation(info, "files.read", request)
            guard case .data(let data) = reply.outcome else { throw BenchError("files.read: unexpected answer") }
            content += data.data
            if data.eof || data.data.isEmpty { return content }
        }
    }

    /// Waits until the node holds no sandbox.
    func waitUntilNodeHoldsNone(within limit: Duration) async throws {
        let deadline = ContinuousClock.now + limit
        while !host.sandboxIDs.isEmpty {
            guard ContinuousClock.now < deadline else {
                throw BenchError("the node still holds \(host.sandboxIDs.count) sandboxes \(limit) after their kill")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Kills every sandbox this bench created through the scheduler, waits for the node to let go
    /// of them, and kills what the node still holds itself.
    func cleanUp() async {
        let ids = live.withLock { Array($0) }.sorted()
        for id in ids {
            do {
                try await kill(id)
            } catch {
                FileHandle.standardError.write(Data("cleanup: \(error)\n".utf8))
            }
        }
        do {
            try await waitUntilNodeHoldsNone(within: .seconds(30))
        } catch {
            FileHandle.standardError.write(Data("cleanup: \(error); killing them on the node\n".utf8))
            for id in host.sandboxIDs { await host.kill(id, reason: "the bench ended") }
        }
    }
}

/// Resident memory read from /proc.
enum ProcessMemory {
    struct Figures {
        var rssKiB: Int
    }

    /// This process (the node, with the scheduler and the client).
    static func own() -> Figures { Figures(rssKiB: statusField("/proc/self/status", "VmRSS") ?? 0) }

    /// The sandboxes' processes: every descendant of this process but the nats-server.
    struct Children {
        var processes = 0
        var byName: [String: Int] = [:]
        var rssKiB = 0
        var pssKiB = 0
        var cgroups = 0
        var cgroupBytes = 0
    }

    static func sandboxProcesses() -> Children {
        var parent: [Int32: Int32] = [:]
        var name: [Int32: String] = [:]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")")
            else { continue }
            name[pid] = String(stat[stat.index(after: open)..<close])
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let ppid = Int32(fields[1]) { parent[pid] = ppid }
        }
        let me = getpid()
        func isSandboxProcess(_ pid: Int32) -> Bool {
            var current = pid
            var hops = 0
            while let up = parent[current], hops < 64 {
                if name[current] == "nats-server" { return false }
                if up == me { return true }
                current = up
                hops += 1
            }
            return false
        }
        var children = Children()
        var cgroups: Set<String> = []
        for pid in parent.keys where isSandboxProcess(pid) {
            children.processes += 1
            children.byName[name[pid] ?? "?", default: 0] += 1
            children.rssKiB += statusField("/proc/\(pid)/status", "VmRSS") ?? 0
            children.pssKiB += statusField("/proc/\(pid)/smaps_rollup", "Pss") ?? 0
            // cgroup v1: the memory controller's hierarchy; v2: the unified one.
            if let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) {
                let lines = text.split(separator: "\n")
                if let line = lines.first(where: { $0.contains(":memory:") }),
                    let path = line.split(separator: ":", maxSplits: 2).last
                {
                    cgroups.insert("/sys/fs/cgroup/memory\(path)/memory.usage_in_bytes")
                } else if let line = lines.first(where: { $0.hasPrefix("0::") }) {
                    cgroups.insert("/sys/fs/cgroup\(line.dropFirst(3))/memory.current")
                }
            }
        }
        for file in cgroups {
            if let text = try? String(contentsOfFile: file, encoding: .utf8),
                let bytes = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
            {
                children.cgroups += 1
                children.cgroupBytes += bytes
            }
        }
        return children
    }

    /// The first three fields of /proc/loadavg.
    static func loadAverage() -> String {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").prefix(3).joined(separator: ", ")
    }

    /// A "Name: 1234 kB" field of a /proc file, in KiB.
    static func statusField(_ path: String, _ field: String) -> Int? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.dropFirst(field.count + 1).split(whereSeparator: \.isWhitespace).first ?? "")
        }
        return nil
    }
}
