import Foundation
import Glibc
import HangarShared
import Synchronization

extension ContainerRuntime: WarmableRuntime {
    /// A container created and started exactly like a fresh job's (bundle, template root, user
    /// namespace, seccomp, masked paths, cgroup, rlimits), running a shell that waits on a pipe for
    /// its program (``WarmScript/container``).
    ///
    /// Started, not only created: `runc create` + `runc start` at assignment would cost a second
    /// runc process (tens of milliseconds) on the hot path and split the container's stdio between
    /// two runc invocations; the waiting shell gives the same isolation with a pipe write on it.
    public func prepareWarm(template: String, profile: WarmProfile) async throws(WarmError) -> any WarmSandbox {
        try await OCIWarmSandbox.prepare(engine: engine, template: template, profile: profile)
    }
}

extension GVisorRuntime: WarmableRuntime {
    /// A gVisor sandbox created and started like a fresh job's, whose shell waits on its stdin for
    /// the job (``FramedWarmScript``: runsc has no `--preserve-fds`); ready once `runsc state` says
    /// it runs.
    public func prepareWarm(template: String, profile: WarmProfile) async throws(WarmError) -> any WarmSandbox {
        try await OCIWarmSandbox.prepare(engine: engine, template: template, profile: profile)
    }
}

/// A waiting container of ``ContainerRuntime`` (or, with its stdin as the channel, of
/// ``GVisorRuntime``). Creation fixes the template, the `/tmp` size and
/// RLIMIT_FSIZE, RLIMIT_NOFILE and the output cap (``WarmProfile``); a job with a CPU-time limit
/// starts cold, since a fresh container also sets RLIMIT_CPU from it. At assignment the job's
/// memory, pids and CPU bandwidth are written into the container's cgroup and its wall clock starts.
final class OCIWarmSandbox: WarmSandbox {
    let template: String
    let profile: WarmProfile
    private let engine: OCIEngine
    private let id: String
    let process: SandboxProcess
    let cgroup: JobCgroup
    private let bundle: OCIBundle
    private let containment: WarmContainment
    /// The script pipe (runc), or -1 (runsc: the script comes on stdin, see ``framed``).
    private let control: Int32
    private let stdinWriter: Int32
    /// runsc: the handshake over stdin.
    private let framed: FramedWarmScript?
    /// The container's user namespace and its owner, when the node made one (``OwnedUserNamespace``).
    private let owned: (namespace: OwnedUserNamespace, user: UInt32)?
    private let used = Atomic<Bool>(false)

    static let readyTimeout = Duration.seconds(20)
    static let script = WarmScript.container

    private init(
        template: String,
        profile: WarmProfile,
        engine: OCIEngine,
        id: String,
        process: SandboxProcess,
        cgroup: JobCgroup,
        bundle: OCIBundle,
        containment: WarmContainment,
        control: Int32,
        stdinWriter: Int32,
        framed: FramedWarmScript?,
        owned: (namespace: OwnedUserNamespace, user: UInt32)?
    ) {
        self.template = template
        self.profile = profile
        self.engine = engine
        self.id = id
        self.process = process
        self.cgroup = cgroup
        self.bundle = bundle
        self.containment = containment
        self.control = control
        self.stdinWriter = stdinWriter
        self.framed = framed
        self.owned = owned
    }

    static func prepare(
        engine: OCIEngine,
        template: String,
        profile: WarmProfile
    ) async throws(WarmError)
        -> OCIWarmSandbox
    {
        var owned: (namespace: OwnedUserNamespace, user: UInt32)?
        if let mapping = engine.configOptions(cgroupsPath: "").userNamespace, geteuid() == 0 {
            var limits = Hangar_V1_Limits()
            limits.fileSizeBytes = profile.fileSizeBytes
            limits.openFiles = profile.openFiles
            switch await engine.ownUserNamespace(mapping: mapping, limits: limits) {
            case .success(let created): owned = created
            case .failure(let error): throw WarmError(error.description)
            }
        }
        do {
            return try await prepare(engine: engine, template: template, profile: profile, owned: owned)
        } catch {
            // Preparing kills and deletes what it started before it throws.
            await owned?.namespace.remove()
            if let owned { engine.resources.users.release(owned.user) }
            throw error
        }
    }

    private static func prepare(
        engine: OCIEngine,
        template: String,
        profile: WarmProfile,
        owned: (namespace: OwnedUserNamespace, user: UInt32)?
    ) async throws(WarmError)
        -> OCIWarmSandbox
    {
        guard let version = JobCgroup.mountedVersion() else { throw WarmError("no usable cgroup hierarchy") }
        let framed = engine.toolName == "runsc" ? FramedWarmScript() : nil
        var waiting = Hangar_V1_JobSpec()
        waiting.template = template
        waiting.argv = ["/bin/sh", "-c", framed?.waiter ?? script.waiter]
        waiting.limits.outputBytes = UInt64(profile.outputBytes)
        waiting.limits.fileSizeBytes = profile.fileSizeBytes
        waiting.limits.openFiles = profile.openFiles
        let id = OCIEngine.containerID(for: "warm-\(template)")
        let ledger = engine.resources.ledger
        let cgroup = JobCgroup.placed(at: engine.directories.cgroupParent + "/" + id, version: version, ledger: ledger)
        var options = engine.configOptions(cgroupsPath: "/" + engine.directories.cgroupParent + "/" + id)
        options.userNamespacePath = owned?.namespace.path
        let config: OCIJobConfig
        let bundle: OCIBundle
        do {
            let resolved = try Template.resolve(waiting, in: engine.templates)
            options.root = try resolved.template.layout()
            config = try OCIJobConfig(job: resolved.spec, options: options)
            bundle = try OCIBundle(
                base: engine.directories.bundles,
                name: id,
                config: config,
                userNamespace: options.userNamespace,
                ledger: ledger
            )
            ledger.made(engine.ledgerEntry(id: id, bundle: bundle))
        } catch let error as TemplateError {
            throw WarmError(error.description)
        } catch let error as OCIInvalidJob {
            throw WarmError(error.message)
        } catch {
            throw WarmError("\(error)")
        }
        var opened: [Int32] = []
        let pipes: [(read: Int32, write: Int32)]
        do throws(WarmError) {
            pipes = try (0..<3).map { _ throws(WarmError) in
                let pipe = try PipeIO.pipe()
                opened += [pipe.read, pipe.write]
                return pipe
            }
            do {
                try cgroup.make(CgroupLimits(config.spec.linux.resources))
            } catch {
                throw WarmError(error.description)
            }
        } catch {
            for fd in opened { close(fd) }
            _ = await engine.teardown(id: id, killFirst: false, cgroup: cgroup, bundle: bundle)
            throw error
        }
        let (control, stdin, ready) = (pipes[0], pipes[1], pipes[2])
        let containment = WarmContainment(cpuTime: cgroup.cpuTimeMicroseconds, killAll: cgroup.killAll)
        var arguments = [engine.toolName] + engine.globalArguments
        arguments += ["--log", bundle.path + "/\(engine.toolName).log", "--log-format", "json", "run"]
        if framed == nil { arguments.append("--keep") }  // runsc run has no --keep
        var executable = engine.executable
        var inherited = [control.read, stdin.read, ready.write]
        if framed == nil {
            arguments += ["--preserve-fds", "3", "--bundle", bundle.path, id]
        } else {
            // runsc passes its own stdin to the container: make the stdin pipe runsc's stdin (fd 3
            // of a shell that execs runsc); the control and ready pipes are not used.
            arguments += ["--bundle", bundle.path, id]
            arguments = ["sh", "-c", "exec \"$0\" \"$@\" <&3 3<&-", engine.executable] + Array(arguments.dropFirst())
            executable = "/bin/sh"
            inherited = [stdin.read]
        }
        var command = OCIEngine.launching(
            SandboxCommand(
                executable: executable,
                arguments: arguments,
                environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                timeout: ProcessWarmSandbox.lifetime,
                outputLimit: profile.outputBytes,
                inheritedFiles: inherited,
                drainTimeout: OCIEngine.drainTimeout,
                containment: containment,
                ledger: ledger
            ),
            under: config.inheritedRlimits
        )
        command.relaysOutput = engine.relaysOutput
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        for fd in [control.read, stdin.read, ready.write] { close(fd) }
        if framed != nil { close(control.write) }
        let process: SandboxProcess
        do {
            process = try spawned.get()
        } catch {
            for fd in [framed == nil ? control.write : -1, stdin.write, ready.read] where fd >= 0 { close(fd) }
            _ = await engine.teardown(id: id, killFirst: true, cgroup: cgroup, bundle: bundle)
            throw WarmError("cannot start \(engine.toolName): \(error.description)")
        }
        let isReady: Bool
        if framed != nil {
            isReady = await Self.awaitRunning(engine: engine, id: id, process: process)
        } else {
            isReady = await PipeIO.awaitByte(on: ready.read, timeout: readyTimeout)
        }
        close(ready.read)
        guard isReady else {
            for fd in [framed == nil ? control.write : -1, stdin.write] where fd >= 0 { close(fd) }
            process.kill()
            let result = try? await process.wait()
            let failure = OCIEngine.runtimeFailure(in: CgroupFile.read(bundle.path + "/\(engine.toolName).log") ?? "")
            _ = await engine.teardown(id: id, killFirst: true, cgroup: cgroup, bundle: bundle)
            let stderr = result.map { String(decoding: $0.stderr.prefix(500), as: UTF8.self) } ?? ""
            throw WarmError(
                "the container did not get ready within \(JobLimits.milliseconds(readyTimeout)) ms: "
                    + (failure ?? stderr)
            )
        }
        return OCIWarmSandbox(
            template: template,
            profile: profile,
            engine: engine,
            id: id,
            process: process,
            cgroup: cgroup,
            bundle: bundle,
            containment: containment,
            control: framed == nil ? control.write : -1,
            stdinWriter: stdin.write,
            framed: framed,
            owned: owned
        )
    }

    /// runsc: polls `runsc state` until the container runs (its shell then reads stdin), within
    /// ``readyTimeout``; false if it does not or runsc exited.
    static func awaitRunning(engine: OCIEngine, id: String, process: SandboxProcess) async -> Bool {
        let deadline = ContinuousClock.now + readyTimeout
        while ContinuousClock.now < deadline, !process.hasEnded {
            let state = await engine.tool(["state", id])
            if state.succeeded && state.output.contains("\"running\"") { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    func accepts(_ spec: Hangar_V1_JobSpec) -> Bool {
        spec.limits.cpuTimeMs == 0 && WarmScript.fits(spec, template: template, profile: profile)
    }
}

extension OCIWarmSandbox: ScriptedWarmSandbox {
    static let noun = "container"

    func claim() -> Bool {
        !used.exchange(true, ordering: .sequentiallyConsistent)
    }

    /// The job's memory, pids and CPU bandwidth over the pool's (memory+swap first when raising,
    /// which cgroup v1 requires).
    func applyJobLimits(_ limits: JobLimits) throws(CgroupError) {
        let resources = CgroupLimits(
            OCIResources(
                devices: [],
                memory: OCIMemory(
                    limit: Int64(clamping: limits.memoryBytes),
                    swap: Int64(clamping: limits.memoryBytes)
                ),
                cpu: OCICPU(
                    quota: Int64(UInt64(limits.cpuMillis) * OCIJobConfig.cpuPeriodMicroseconds / 1000),
                    period: OCIJobConfig.cpuPeriodMicroseconds
                ),
                // gVisor's sentry and gofer need host tasks of their own, as in a fresh sandbox.
                pids: OCIPids(limit: Int64(limits.pids) + (framed == nil ? 0 : OCIEngine.gVisorPidsOverhead))
            )
        )
        try cgroup.applyLimits(resources, raisingMemoryTo: limits.memoryBytes)
    }

    func start(_ spec: Hangar_V1_JobSpec, limits: JobLimits, cpuBaseline: UInt64) {
        if let framed {
            PipeIO.writeAndClose(framed.input(for: spec), to: stdinWriter)
        } else {
            PipeIO.writeAndClose(spec.stdin, to: stdinWriter)
            PipeIO.writeAndClose(Data(Self.script.script(for: spec).utf8), to: control)
        }
    }

    func finish(
        _ spec: Hangar_V1_JobSpec,
        result: SandboxResult,
        limits: JobLimits,
        cpuBaseline: UInt64
    ) async -> (outcome: RunOutcome, cleanupProblem: String?) {
        let usage = usage(since: cpuBaseline)
        let failure = OCIEngine.runtimeFailure(in: CgroupFile.read(bundle.path + "/\(engine.toolName).log") ?? "")
        // The script pipes are closed already (by the threads that wrote them). A runtime whose
        // `run` came back by itself has no container left to delete (see OCIEngine.teardown):
        // skipping that exec of the tool is most of a warm container's clean-up time.
        let exitedByItself: Bool
        switch result.termination {
        case .exited, .signaled: exitedByItself = result.killReason == nil
        case .lost: exitedByItself = false
        }
        let leftovers = await engine.teardown(
            id: id,
            killFirst: result.killReason != nil,
            stopped: exitedByItself,
            cgroup: cgroup,
            bundle: bundle
        )
        await engine.release(owned, cgroup: cgroup)
        let outcome = OCIEnding(
            tool: engine.toolName,
            program: spec.argv[0],
            limits: spec.limits,
            timeout: limits.timeout,
            outputLimit: limits.outputBytes
        ).outcome(of: result, usage: usage, runtimeFailure: failure)
        return (outcome, leftovers.isEmpty ? nil : "cleanup incomplete: " + leftovers.joined(separator: "; "))
    }

    func abandon() async -> String? {
        _ = await engine.teardown(id: id, killFirst: true, cgroup: cgroup, bundle: bundle)
        await engine.release(owned, cgroup: cgroup)
        return nil
    }

    /// Closes the pipes (not yet handed to a writer), kills and deletes the container, sweeps its
    /// cgroup and bundle.
    func discard() async {
        if control >= 0 { close(control) }
        close(stdinWriter)
        process.kill()
        _ = try? await process.wait()
        _ = await engine.teardown(id: id, killFirst: true, cgroup: cgroup, bundle: bundle)
        await engine.release(owned, cgroup: cgroup)
    }
}
