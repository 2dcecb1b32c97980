import Foundation
import HangarShared
import Logging
import Synchronization

/// Holds a node's stateful sandboxes: per ``SandboxStart``, a ``ProcessSandbox`` (runtime
/// `process`, a bubblewrap sandbox) or, where runc is available on a root node, a
/// ``ContainerSandbox`` (runtime `container`, a runc container; runtime `gvisor`, the same run by
/// runsc where it is available) or a ``MicroVMSandbox`` (runtime `microvm`, a qemu microVM, where
/// the node offers that runtime), each with `hangar-sandbox-agent`
/// as its first process, the start's limits, grants and network and, for its commands, its
/// environment. Both kinds expose the same agent channel, so data plane, files and code contexts do
/// not tell them apart. Both enforce the start's `NETWORK_ALLOWLIST` (a ``JobNetwork`` per sandbox,
/// removed with it) and host path grants (binds at the same paths); a start asking for what they
/// cannot enforce is refused, never run without it.
/// Templates: `host`, and on `process`, `container` and `gvisor` every directory template of the
/// node's store, with a writable layer of the sandbox's own over it (``TemplateOverlay``; the
/// template's environment under the start's). A microVM runs its guest's own root, so `microvm`
/// takes only `host`; other runtimes and templates are refused with a message naming them.
///
/// A sandbox whose agent goes away on its own (it crashed, the memory limit killed it) is noticed
/// by a watcher that polls the agent channel, killed to clean up what is left, forgotten and
/// reported through the start's `died` callback.
///
/// Restarts: sandboxes of every runtime outlive the node process. Each is
/// written to the node's ``SandboxRegistry`` once started, and the next node process with the same
/// node id re-adopts it (``readopt(nodeID:died:)``): it reconnects to its agent and holds it again,
/// with its files, processes and limits as they were, and takes over every command the agent ran
/// on meanwhile as a background command (its output waited in the sandbox, and the agent kept the
/// last 64 KiB of a background command's; `attach` goes on from there), and every code context
/// with its state (its kernel's arguments name it). What lived in the node process is not kept:
/// output the node had already read beyond that (a foreground command's output not yet sent to its
/// client), a cell running at the restart (it finishes in its kernel unheard) and watches.
public final class ProcessSandboxHost: SandboxHost {
    private let agentPath: String
    /// The runc runtime of `container` sandboxes; nil when runc is not there or the node not root.
    private let container: ContainerRuntime?
    /// The runsc runtime of `gvisor` sandboxes; nil when runsc is not there or the node not root.
    private let gvisor: GVisorRuntime?
    /// The node's microvm runtime, whose VMs become `microvm` sandboxes; nil: none.
    private let microvm: MicroVMRuntime?
    /// The node's directory templates; nil: only `host`.
    private let templates: TemplateStore?
    private let logger: Logger
    private let state = Mutex(State())
    /// How often a watcher checks whether a sandbox's agent is still there.
    static let watchInterval = Duration.milliseconds(200)
    /// How long a re-adopted sandbox's agent has to answer while its commands are taken over.
    static let takeOverTimeout = Duration.seconds(10)
    /// What `process` sandboxes draw on; re-adopted ones too.
    private let resources: NodeResources
    /// Where sandboxes that outlive the node are written; nil when the node is not root.
    private let registry: SandboxRegistry?

    private struct Held {
        /// Its registry entry, when it outlives the node.
        var entry: SandboxRegistry.Entry?
        let tenant: String
        let sandbox: any StatefulSandbox
        let environment: [String: String]
        let code: CodeContexts
        var background = BackgroundCommands()
        let watcher: Task<Void, Never>
    }

    private struct State {
        /// The node id registry entries are written for; nil until ``readopt(nodeID:died:)``.
        var nodeID: String?
        var held: [String: Held] = [:]
        /// Ids being started; a kill meanwhile is recorded and carried out once the start ends.
        var starting: Set<String> = []
        var killedWhileStarting: Set<String> = []
    }

    /// A host starting `agentPath` (``ProcessSandbox/locateAgent()``) in bubblewrap sandboxes that
    /// draw on `resources`, their writable layers under `workRoot`; with the runc at `runcPath`
    /// (when it is there and the node runs as root), also in runc containers for runtime
    /// `container` (``ContainerSandbox``; nil: no container sandboxes), and with the runsc at
    /// `runscPath` in gVisor sandboxes for runtime `gvisor` (on `gvisorPlatform`); `templates`: the
    /// node's directory templates sandboxes may be made from (nil: only `host`);
    /// `warmSandboxes`: the size of each runtime's pool of warm sandboxes (``WarmSandboxPool``).
    public init(
        agentPath: String,
        bubblewrapPath: String = "/usr/bin/bwrap",
        runcPath: String? = "/usr/sbin/runc",
        runscPath: String? = "/usr/bin/runsc",
        gvisorPlatform: String = "ptrace",
        microvm: MicroVMRuntime? = nil,
        templates: TemplateStore? = nil,
        resources: NodeResources = .standard,
        workRoot: String = ProcessSandbox.defaultWorkRoot,
        cellOutputBytes: Int = CodeContexts.maxCellOutputBytes,
        warmSandboxes: Int = 0,
        logger: Logger = Logger(label: "hangar.sandbox")
    ) {
        self.cellOutputBytes = cellOutputBytes
        self.agentPath = agentPath
        self.resources = resources
        registry = geteuid() == 0 ? SandboxRegistry(ledger: resources.ledger) : nil
        self.templates = templates
        if let runcPath, geteuid() == 0, access(runcPath, X_OK) == 0 {
            container = ContainerRuntime(runcPath: runcPath, templates: templates, resources: resources)
        } else {
            container = nil
        }
        self.microvm = microvm
        if let runscPath, geteuid() == 0, access(runscPath, X_OK) == 0 {
            gvisor = GVisorRuntime(
                runscPath: runscPath,
                platform: gvisorPlatform,
                templates: templates,
                resources: resources
            )
        } else {
            gvisor = nil
        }
        self.logger = logger
        let startProcess:
            @Sendable (String, WarmSandboxPool.Profile) async throws(SandboxStartError) -> ProcessSandbox = {
                [agentPath, bubblewrapPath, resources, workRoot, logger] id, profile throws(SandboxStartError) in
                try await ProcessSandbox.start(
                    id: id,
                    limits: profile.limits,
                    template: profile.template,
                    grants: profile.grants,
                    network: profile.network,
                    agentPath: agentPath,
                    bubblewrapPath: bubblewrapPath,
                    resources: resources,
                    workRoot: workRoot,
                    logger: logger
                )
            }
        self.startProcess = startProcess
        // One pool per runtime that holds sandboxes here; each makes nothing until its runtime's
        // first create (it learns the profile from it).
        var pools: [String: WarmSandboxPool] = [:]
        var starts: [String: StartSandbox] = ["process": Self.starting(startProcess)]
        if let engine = container?.engine {
            starts["container"] = Self.starting(engine, agentPath: agentPath, logger: logger)
        }
        if let engine = gvisor?.engine {
            starts["gvisor"] = Self.starting(engine, agentPath: agentPath, logger: logger)
        }
        if let microvm { starts["microvm"] = Self.starting(microvm, logger: logger) }
        for (runtime, startSandbox) in starts where warmSandboxes > 0 {
            let start: @Sendable (WarmSandboxPool.Profile) async -> WarmSandboxPool.Entry? = {
                [cellOutputBytes, logger] profile in
                let sandbox: any StatefulSandbox
                do {
                    sandbox = try await startSandbox("warm-\(UInt32.random(in: 0...UInt32.max))", profile)
                } catch {
                    logger.warning(
                        "a warm sandbox could not start",
                        metadata: ["error": "\(error)", "sandbox.runtime": "\(runtime)"]
                    )
                    return nil
                }
                let code = CodeContexts(
                    agent: sandbox.agent,
                    environment: profile.template.env,
                    cellOutputBytes: cellOutputBytes
                )
                do {
                    try await code.prepareDefault(language: "python")
                } catch {
                    // No python3 in the sandbox: it is still a ready sandbox, its contexts start cold.
                    logger.notice("a warm sandbox has no python context", metadata: ["error": "\(error)"])
                }
                return WarmSandboxPool.Entry(sandbox: sandbox, code: code)
            }
            pools[runtime] = WarmSandboxPool(size: warmSandboxes, make: start) { entry in
                if let problem = await entry.sandbox.kill() {
                    logger.error("a warm sandbox was not cleaned up", metadata: ["problem": "\(problem)"])
                }
            }
        }
        warmPools = pools
    }

    /// Starts a sandbox of one runtime with the given id and profile.
    private typealias StartSandbox =
        @Sendable (String, WarmSandboxPool.Profile) async throws(SandboxStartError) -> any StatefulSandbox

    /// ``StartSandbox`` of `process` sandboxes.
    private static func starting(
        _ startProcess:
            @escaping @Sendable (String, WarmSandboxPool.Profile) async throws(SandboxStartError) ->
            ProcessSandbox
    ) -> StartSandbox {
        { id, profile throws(SandboxStartError) in try await startProcess(id, profile) }
    }

    /// ``StartSandbox`` of `container` or `gvisor` sandboxes (`engine`'s).
    private static func starting(_ engine: OCIEngine, agentPath: String, logger: Logger) -> StartSandbox {
        { id, profile throws(SandboxStartError) in
            try await ContainerSandbox.start(
                id: id,
                limits: profile.limits,
                grants: profile.grants,
                network: profile.network,
                template: profile.template,
                agentPath: agentPath,
                engine: engine,
                logger: logger
            )
        }
    }

    /// ``StartSandbox`` of `microvm` sandboxes.
    private static func starting(_ runtime: MicroVMRuntime, logger: Logger) -> StartSandbox {
        { id, profile throws(SandboxStartError) in
            try await MicroVMSandbox.start(
                id: id,
                limits: profile.limits,
                grants: profile.grants,
                network: profile.network,
                runtime: runtime,
                logger: logger
            )
        }
    }

    /// Starts a `process` sandbox of this host with the given id and profile.
    private let startProcess:
        @Sendable (String, WarmSandboxPool.Profile) async throws(SandboxStartError) -> ProcessSandbox

    /// Creates with no environment of their own served from here, a pool per runtime
    /// (``WarmSandboxPool``); empty: none (`warmSandboxes` 0).
    let warmPools: [String: WarmSandboxPool]

    /// The `process` runtime's pool.
    var warm: WarmSandboxPool? { warmPools["process"] }

    /// Ready warm sandboxes of `runtime`, and its creates served warm and cold (nil without a pool).
    public func warmCounts(_ runtime: String) -> (ready: Int, served: UInt64, missed: UInt64)? {
        warmPools[runtime]?.counts
    }

    /// ``warmCounts(_:)`` of `process`.
    public var warmCounts: (ready: Int, served: UInt64, missed: UInt64)? { warmCounts("process") }

    /// What a warm sandbox must have been made with to serve `request` of `template`, or nil when
    /// none can: a sandbox with no environment of its own (a warm sandbox's python context runs
    /// with its template's only).
    static func warmProfile(_ request: Hangar_V1_SandboxStart, template: Template) -> WarmSandboxPool.Profile? {
        guard request.env.isEmpty else { return nil }
        return WarmSandboxPool.Profile(
            limits: limits(request.limits),
            grants: request.grants,
            network: request.network,
            template: template
        )
    }

    /// Ends the warm sandboxes (at the node's stop).
    public func stop() async {
        for pool in warmPools.values { await pool.stop() }
    }

    /// Bytes of output the node forwards for one code cell (see ``CodeContexts``).
    private let cellOutputBytes: Int

    /// The runtimes every host makes stateful sandboxes with.
    public static let runtimes: Set<String> = ["process"]

    /// The runtimes this host makes stateful sandboxes with: ``runtimes``, `container` when runc is
    /// available, `gvisor` when runsc is, and `microvm` when the node has that runtime.
    public var availableRuntimes: Set<String> {
        Self.runtimes.union(container == nil ? [] : ["container"]).union(gvisor == nil ? [] : ["gvisor"])
            .union(microvm == nil ? [] : ["microvm"])
    }

    /// The limits of a sandbox from the scheduler's resolved `limits` (unset ones keep the defaults).
    static func limits(_ limits: Hangar_V1_Limits) -> SandboxLimits {
        var result = SandboxLimits()
        if limits.memoryBytes > 0 { result.memoryBytes = limits.memoryBytes }
        if limits.pids > 0 { result.pids = limits.pids }
        if limits.cpuMillis > 0 { result.cpuMillis = limits.cpuMillis }
        if limits.fileSizeBytes > 0 { result.diskBytes = limits.fileSizeBytes }
        if limits.openFiles > 0 { result.openFiles = limits.openFiles }
        return result
    }

    public func start(
        _ request: Hangar_V1_SandboxStart,
        died: @escaping @Sendable (String) -> Void
    )
        async throws(SandboxRefusal)
    {
        let id = request.sandboxID
        guard Subjects.isValidToken(id) else { throw SandboxRefusal("the start names no valid sandbox id") }
        let runtime = request.runtime.isEmpty ? "process" : request.runtime
        let available = availableRuntimes
        guard available.contains(runtime) else {
            throw SandboxRefusal(
                "runtime '\(runtime)' has no stateful sandboxes on this node; use \(available.sorted().joined(separator: ", "))"
            )
        }
        let template: Template
        do {
            template = try Self.template(named: request.template, runtime: runtime, in: templates)
        } catch {
            throw SandboxRefusal(error.description)
        }
        let environment = template.env.merging(request.env) { _, own in own }
        if let problem = Self.checkGrants(request.grants) { throw SandboxRefusal(problem) }
        let fresh = state.withLock { state in
            guard state.held[id] == nil, !state.starting.contains(id) else { return false }
            state.starting.insert(id)
            return true
        }
        guard fresh else { return }  // a repeated start
        let sandbox: any StatefulSandbox
        var code: CodeContexts?
        do throws(SandboxStartError) {
            let engine = runtime == "container" ? container?.engine : runtime == "gvisor" ? gvisor?.engine : nil
            if let pool = warmPools[runtime], let profile = Self.warmProfile(request, template: template),
                let entry = pool.take(profile)
            {
                sandbox = entry.sandbox
                code = entry.code
                logger.debug("a warm sandbox serves a create", metadata: ["sandbox.id": "\(id)"])
            } else if runtime == "microvm", let microvm {
                sandbox = try await MicroVMSandbox.start(
                    id: id,
                    limits: Self.limits(request.limits),
                    grants: request.grants,
                    network: request.network,
                    runtime: microvm,
                    logger: logger
                )
            } else if let engine {
                sandbox = try await ContainerSandbox.start(
                    id: id,
                    limits: Self.limits(request.limits),
                    grants: request.grants,
                    network: request.network,
                    template: template,
                    agentPath: agentPath,
                    engine: engine,
                    logger: logger
                )
            } else {
                let profile = WarmSandboxPool.Profile(
                    limits: Self.limits(request.limits),
                    grants: request.grants,
                    network: request.network,
                    template: template
                )
                sandbox = try await startProcess(id, profile)
            }
        } catch {
            state.withLock { state in
                state.starting.remove(id)
                state.killedWhileStarting.remove(id)
            }
            throw SandboxRefusal("the sandbox could not start: \(error.description)")
        }
        let watcher = watch(id, sandbox, died: died)
        let owner = (pid: getpid(), start: SandboxLedger.startTime(of: getpid()) ?? 0)
        let (killed, entry) = state.withLock { state -> (Bool, SandboxRegistry.Entry?) in
            state.starting.remove(id)
            if state.killedWhileStarting.remove(id) != nil { return (true, nil) }
            var entry: SandboxRegistry.Entry?
            let savedProcess = (sandbox as? ProcessSandbox)?.saved
            let savedContainer = (sandbox as? ContainerSandbox)?.saved
            let savedMicroVM = (sandbox as? MicroVMSandbox)?.saved
            if let nodeID = state.nodeID, savedProcess != nil || savedContainer != nil || savedMicroVM != nil {
                entry = SandboxRegistry.Entry(
                    sandboxID: id,
                    nodeID: nodeID,
                    tenant: request.tenant,
                    environment: environment,
                    ownerPID: owner.pid,
                    ownerStart: owner.start,
                    // The node agent's deadline for it, as it will note it (one write, not two).
                    deadlineUnixMs: request.timeoutMs > 0
                        ? unixMilliseconds() + Int64(request.timeoutMs)
                            + Int64(JobLimits.milliseconds(NodeAgent.sandboxTimeoutGrace)) : nil,
                    sandbox: savedProcess,
                    container: savedContainer,
                    microvm: savedMicroVM
                )
            }
            state.held[id] = Held(
                entry: entry,
                tenant: request.tenant,
                sandbox: sandbox,
                environment: environment,
                code: code
                    ?? CodeContexts(agent: sandbox.agent, environment: environment, cellOutputBytes: cellOutputBytes),
                watcher: watcher
            )
            return (false, entry)
        }
        if killed {
            watcher.cancel()
            await tearDown(id, sandbox)
            throw SandboxRefusal("the sandbox was killed while it started")
        }
        if let entry, let problem = registry?.save(entry) {
            logger.warning(
                "a sandbox is not in the registry: a restart of this node would end it",
                metadata: ["sandbox.id": "\(id)", "problem": "\(problem)"]
            )
        }
    }

    /// A watcher of `sandbox`'s agent: when it goes away on its own, the sandbox is cleaned up
    /// and reported through `died`.
    private func watch(
        _ id: String,
        _ sandbox: any StatefulSandbox,
        died: @escaping @Sendable (String) -> Void
    ) -> Task<Void, Never> {
        Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: Self.watchInterval)
                if Task.isCancelled { return }
                if let reason = sandbox.agent.goneReason {
                    await self?.agentGone(id, reason: reason, died: died)
                    return
                }
            }
        }
    }

    public func leave() async -> [String] {
        let left = state.withLock { state -> [(String, Held)] in
            let left = state.held.filter { $0.value.entry != nil }
            for id in left.keys { state.held.removeValue(forKey: id) }
            return left.sorted { $0.key < $1.key }
        }
        for (id, held) in left {
            held.watcher.cancel()
            // Hung up on, its agent keeps the sandbox and waits for the next node.
            held.sandbox.detach()
            logger.notice(
                "left a stateful sandbox running for the next start of this node",
                metadata: ["sandbox.id": "\(id)"]
            )
        }
        return left.map(\.0)
    }

    /// Takes over every command of a re-adopted sandbox (its output and exit waited in the sandbox
    /// for the next node): a code context's kernel into `code`, so the context goes on with its
    /// state (``CodeContexts/restore(pid:_:)``); any other command into `background`, so that
    /// `attach` and `ps` find it (``BackgroundCommands/takeOver(_:agent:)``). A kernel that cannot
    /// be taken over as a context is ended, so its memory goes back. The number of commands and
    /// of contexts taken over; a failure when the agent stopped answering: an agent that does (a
    /// microVM's guest kernel is the tenant's to break) must not hold up the node's start, so its
    /// channel is closed at `timeout`.
    static func takeOver(
        _ sandbox: any StatefulSandbox,
        into background: BackgroundCommands,
        code: CodeContexts,
        within timeout: Duration
    ) async -> Result<(commands: Int, contexts: Int), SandboxStartError> {
        let deadline = Task { [agent = sandbox.agent] in
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { agent.close() }
        }
        let taken = await takeOver(sandbox, into: background, code: code)
        deadline.cancel()
        if let gone = sandbox.agent.goneReason {
            return .failure(
                SandboxStartError("its agent stopped answering while its commands were taken over: \(gone)")
            )
        }
        return .success(taken)
    }

    private static func takeOver(
        _ sandbox: any StatefulSandbox,
        into background: BackgroundCommands,
        code: CodeContexts
    ) async -> (commands: Int, contexts: Int) {
        guard let listed = try? await sandbox.agent.listProcesses() else { return (0, 0) }
        let kernel = CodeKernel.argv(language: "").dropLast()
        var taken = (commands: 0, contexts: 0)
        for process in listed {
            if let context = CodeKernel.context(of: process.argv), await code.restore(pid: process.pid, context) {
                taken.contexts += 1
                continue
            }
            guard await background.takeOver(process.pid, agent: sandbox.agent) else { continue }
            taken.commands += 1
            if process.argv.starts(with: kernel) { try? await sandbox.agent.signal(pid: process.pid, SIGKILL) }
        }
        return taken
    }

    public func noteDeadline(_ sandboxID: String, unixMs deadlineUnixMs: Int64?) {
        let entry = state.withLock { state -> SandboxRegistry.Entry? in
            guard var held = state.held[sandboxID], var entry = held.entry else { return nil }
            // Within a second of what is written (the deadline noted at its start): not rewritten.
            if let old = entry.deadlineUnixMs, let new = deadlineUnixMs, abs(old - new) < 1000 { return nil }
            entry.deadlineUnixMs = deadlineUnixMs
            held.entry = entry
            state.held[sandboxID] = held
            return entry
        }
        if let entry { registry?.save(entry) }
    }

    /// Reconnects to the sandbox of a registry entry: a `process` or `microvm` sandbox, or a
    /// `container` (`gvisor`) one when this node has runc (runsc).
    private func adopt(_ entry: SandboxRegistry.Entry) async -> Result<any StatefulSandbox, SandboxStartError> {
        if let saved = entry.sandbox {
            return await ProcessSandbox.adopt(saved, resources: resources, logger: logger).map { $0 }
        }
        if let saved = entry.microvm {
            let resources = microvm?.resources ?? resources
            return await MicroVMSandbox.adopt(saved, resources: resources, logger: logger).map { $0 }
        }
        if let saved = entry.container {
            let gVisor = saved.gVisor ?? false
            guard let engine = gVisor ? gvisor?.engine : container?.engine else {
                let runtime = gVisor ? "gvisor" : "container"
                return .failure(
                    SandboxStartError("it is a \(runtime) sandbox, and this node has no \(runtime) runtime")
                )
            }
            return await ContainerSandbox.adopt(saved, engine: engine, logger: logger).map { $0 }
        }
        return .failure(SandboxStartError("its registry entry names no sandbox"))
    }

    public func readopt(
        nodeID: String,
        died: @escaping @Sendable (_ sandboxID: String, _ message: String) -> Void
    ) async -> SandboxReadoption {
        state.withLock { $0.nodeID = nodeID }
        var result = SandboxReadoption()
        guard let registry else { return result }
        let owner = (pid: getpid(), start: SandboxLedger.startTime(of: getpid()) ?? 0)
        for var entry in registry.orphans(of: nodeID) {
            let id = entry.sandboxID
            let sandbox: any StatefulSandbox
            switch await adopt(entry) {
            case .success(let adopted): sandbox = adopted
            case .failure(let error):
                registry.remove(id)
                result.failures.append((id, error.description))
                continue
            }
            entry.ownerPID = owner.pid
            entry.ownerStart = owner.start
            let background = BackgroundCommands()
            let code = CodeContexts(
                agent: sandbox.agent,
                environment: entry.environment,
                cellOutputBytes: cellOutputBytes
            )
            let taken: (commands: Int, contexts: Int)
            switch await Self.takeOver(sandbox, into: background, code: code, within: Self.takeOverTimeout) {
            case .success(let counts): taken = counts
            case .failure(let error):
                _ = await sandbox.kill()
                registry.remove(id)
                result.failures.append((id, error.description))
                continue
            }
            let watcher = watch(id, sandbox) { message in died(id, message) }
            state.withLock { state in
                state.held[id] = Held(
                    entry: entry,
                    tenant: entry.tenant,
                    sandbox: sandbox,
                    environment: entry.environment,
                    code: code,
                    background: background,
                    watcher: watcher
                )
            }
            registry.save(entry)
            result.sandboxes.append((id, entry.deadlineUnixMs))
            result.resources.formUnion(entry.resources)
            logger.notice(
                "re-adopted a stateful sandbox",
                metadata: [
                    "sandbox.id": "\(id)", "tenant": "\(entry.tenant)", "commands": "\(taken.commands)",
                    "code.contexts": "\(taken.contexts)",
                ]
            )
        }
        return result
    }

    /// The template `name` names for a sandbox of `runtime`: `host` (also for ""), or a directory
    /// template of `store` on any runtime but `microvm`.
    static func template(
        named name: String,
        runtime: String,
        in store: TemplateStore?
    ) throws(TemplateError) -> Template {
        guard !name.isEmpty, name != TemplateName.host else { return .host }
        guard runtime != "microvm" else {
            throw TemplateError(
                "template '\(name)' has no microvm sandboxes: a microVM runs its guest's own root filesystem; use 'host'"
            )
        }
        guard let store else {
            throw TemplateError("template '\(name)' is not on this node (it has no template store)")
        }
        return try store.template(named: name)
    }

    /// The places of a sandbox's own (its writable layer and its agent), which no granted host path
    /// may reach: a bind there would hide them, or be hidden by them.
    static let ownPaths = ["/home/user", "/root", "/tmp", "/.hangar"]

    /// Why the start's path grants cannot be given to a sandbox of this host, or nil.
    static func checkGrants(_ grants: Hangar_V1_Grants) -> String? {
        for (list, paths) in [("allow_read", grants.allowRead), ("allow_write", grants.allowWrite)] {
            for (index, path) in paths.enumerated() {
                guard let granted = GrantPath(path) else {
                    return "grants.\(list)[\(index)]: '\(path.prefix(64))' is not an absolute normalized path"
                }
                if let own = ownPaths.first(where: { granted.covers($0) || granted.isUnder($0) }) {
                    return "grants.\(list)[\(index)]: '\(path)' reaches \(own), a sandbox's own place; "
                        + "a sandbox cannot be granted it"
                }
            }
        }
        return nil
    }

    public func kill(_ sandboxID: String, reason: String) async {
        let held = state.withLock { state in
            if state.starting.contains(sandboxID) { state.killedWhileStarting.insert(sandboxID) }
            return state.held.removeValue(forKey: sandboxID)
        }
        guard let held else { return }
        held.watcher.cancel()
        logger.info("killing a stateful sandbox", metadata: ["sandbox.id": "\(sandboxID)", "reason": "\(reason)"])
        await tearDown(sandboxID, held.sandbox)
        if held.entry != nil { registry?.remove(sandboxID) }
    }

    public var sandboxIDs: [String] { state.withLock { Array($0.held.keys).sorted() } }

    public func dataTarget(_ sandboxID: String, tenant: String) -> SandboxDataTarget? {
        state.withLock { state in
            guard let held = state.held[sandboxID], held.tenant == tenant else { return nil }
            return SandboxDataTarget(
                agent: held.sandbox.agent,
                environment: held.environment,
                code: held.code,
                background: held.background
            )
        }
    }

    /// The agent of `id` went away without a kill: forget the sandbox, clean up what is left of it
    /// and report its death.
    private func agentGone(_ id: String, reason: String, died: @Sendable (String) -> Void) async {
        let held = state.withLock { $0.held.removeValue(forKey: id) }
        guard let held else { return }  // killed meanwhile
        logger.warning(
            "a stateful sandbox's agent went away",
            metadata: ["sandbox.id": "\(id)", "reason": "\(reason)"]
        )
        await tearDown(id, held.sandbox)
        if held.entry != nil { registry?.remove(id) }
        died("the sandbox's agent went away: \(reason)")
    }

    private func tearDown(_ id: String, _ sandbox: any StatefulSandbox) async {
        if let problem = await sandbox.kill() {
            logger.error(
                "a stateful sandbox was not cleaned up",
                metadata: ["sandbox.id": "\(id)", "problem": "\(problem)"]
            )
        }
    }
}
