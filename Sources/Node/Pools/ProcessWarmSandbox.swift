import Foundation
import Glibc
import HangarShared
import Synchronization

extension ProcessRuntime: WarmableRuntime {
    /// A bubblewrap sandbox set up exactly like a fresh job's (namespaces, template root, seccomp,
    /// `/tmp` tmpfs, cgroup, rlimits, unprivileged host user), running a shell that waits on a pipe
    /// for its program; see ``WarmScript``.
    public func prepareWarm(template: String, profile: WarmProfile) async throws(WarmError) -> any WarmSandbox {
        try await ProcessWarmSandbox.prepare(runtime: self, template: template, profile: profile)
    }
}

/// What waits in a warm process sandbox for its job.
enum WarmWaiter: Sendable, Equatable {
    /// `/bin/sh -c` ``WarmScript/waiter``: it reads a script that `exec`s the job's argv.
    case shell
    /// The wasm worker in its `--warm` mode (at `executable` in the sandbox), holding the module at
    /// `preload` parsed: it reads its own command line, the job's argv after argv[0] joined by NULs.
    case wasmWorker(executable: String, preload: String?)

    /// The sandbox's program while it waits, on descriptors 3, 4 and 5 (``WarmScript/process``).
    var argv: [String] {
        let script = WarmScript.process
        switch self {
        case .shell:
            return ["/bin/sh", "-c", script.waiter]
        case .wasmWorker(let executable, let preload):
            return [executable, "--warm", "\(script.control)", "\(script.stdin)", "\(script.ready)"]
                + (preload.map { [$0] } ?? [])
        }
    }

    /// How the sandbox's cgroup is named, before its template.
    var cgroupPrefix: String {
        switch self {
        case .shell: "warm-"
        case .wasmWorker: "warm-wasm-"
        }
    }

    /// What the node writes on the control pipe to start `spec`: for the worker, its command line,
    /// and the module when it came with the job (``carriedModule(_:)``; see the worker's header).
    func control(for spec: Hangar_V1_JobSpec) -> Data {
        switch self {
        case .shell: return Data(WarmScript.process.script(for: spec).utf8)
        case .wasmWorker:
            let line = Data(spec.argv.dropFirst().joined(separator: "\0").utf8)
            guard let module = carriedModule(spec) else { return line }
            return Data("--module-bytes=\(module.count)\0".utf8) + line + Data([0]) + module
        }
    }

    /// The largest module a warm worker takes on its control pipe; a larger one starts cold.
    static let maxCarriedModuleBytes = 16 << 20

    /// The module of a worker's job `spec` when it is the job's only file, named plainly in the
    /// working directory (the worker writes it there itself): its bytes, which the control pipe
    /// carries instead of the sandbox staging the file. Nil for the shell, and for any other files.
    func carriedModule(_ spec: Hangar_V1_JobSpec) -> Data? {
        guard case .wasmWorker = self, spec.files.count == 1, let file = spec.files.first,
            !file.path.isEmpty, !file.path.contains("/"), file.path != ".", file.path != "..",
            file.content.count <= Self.maxCarriedModuleBytes,
            let separator = spec.argv.firstIndex(of: "--"), separator + 1 < spec.argv.count
        else { return nil }
        let workdir = spec.cwd.isEmpty ? "/tmp" : spec.cwd
        return spec.argv[separator + 1] == workdir + "/" + file.path ? file.content : nil
    }
}

/// A waiting bubblewrap sandbox of ``ProcessRuntime``. Creation fixes the template, the `/tmp` size
/// and file-size limit, the open-files limit and the output cap (``WarmProfile``); at assignment
/// the job's memory, pids and CPU bandwidth are written into the sandbox's cgroup, its wall clock
/// starts and its CPU-time limit is watched from the CPU time the sandbox had used until then.
final class ProcessWarmSandbox: WarmSandbox {
    let template: String
    let profile: WarmProfile
    /// What waits in it.
    let waiter: WarmWaiter
    let process: SandboxProcess
    let cgroup: JobCgroup
    private let containment: WarmContainment
    /// The node's ends of the script pipe and the stdin pipe.
    private let control: Int32
    private let stdinWriter: Int32
    /// The sandbox's own host user (``SandboxUsers``), nil when the node is not root.
    private let user: UInt32?
    /// Where ``user`` goes back to.
    private let users: SandboxUsers
    private let used = Atomic<Bool>(false)

    /// How long a sandbox may wait unused; the pool replaces idle ones long before.
    static let lifetime = Duration.seconds(24 * 3600)
    /// How long setting up may take.
    static let readyTimeout = Duration.seconds(15)

    private init(
        template: String,
        profile: WarmProfile,
        waiter: WarmWaiter,
        process: SandboxProcess,
        cgroup: JobCgroup,
        containment: WarmContainment,
        control: Int32,
        stdinWriter: Int32,
        user: UInt32?,
        users: SandboxUsers
    ) {
        self.template = template
        self.profile = profile
        self.waiter = waiter
        self.process = process
        self.cgroup = cgroup
        self.containment = containment
        self.control = control
        self.stdinWriter = stdinWriter
        self.user = user
        self.users = users
    }

    /// Sets up a sandbox of `template` with `profile` in which `waiter` waits; its cgroup allows
    /// `extraMemoryBytes` more than the profile's memory until a job's limits replace the pool's.
    static func prepare(
        runtime: ProcessRuntime,
        template: String,
        profile: WarmProfile,
        waiter: WarmWaiter = .shell,
        extraMemoryBytes: UInt64 = 0
    ) async throws(WarmError) -> ProcessWarmSandbox {
        guard case .success(let host) = runtime.cgroups, case .success(let filter) = ProcessRuntime.seccomp else {
            throw WarmError("cgroups or seccomp are unavailable")
        }
        var waiting = Hangar_V1_JobSpec()
        waiting.template = template
        waiting.argv = waiter.argv
        let limits = profile.limits
        let invocation: BubblewrapInvocation
        do {
            let resolved = try Template.resolve(waiting, in: runtime.templates)
            // The script's pipes are 3, 4 and 5 (``WarmScript/process``); bubblewrap's files follow.
            invocation = try BubblewrapInvocation(
                spec: resolved.spec,
                limits: limits,
                seccomp: filter,
                root: try resolved.template.layout(),
                binds: runtime.programBinds,
                firstDescriptor: 6
            )
        } catch let error as TemplateError {
            throw WarmError(error.description)
        } catch let error as InvalidJob {
            throw WarmError(error.message)
        } catch {
            throw WarmError("\(error)")
        }
        var user: UInt32?
        if geteuid() == 0 {
            guard let uid = runtime.resources.users.acquire() else {
                throw WarmError("all \(runtime.resources.users.count) sandbox users are in use")
            }
            user = uid
        }
        do {
            return try await prepare(
                runtime: runtime,
                template: template,
                profile: profile,
                waiter: waiter,
                extraMemoryBytes: extraMemoryBytes,
                host: host,
                invocation: invocation,
                user: user
            )
        } catch {
            // Nothing of the sandbox runs any more when preparing fails (see below).
            if let user { runtime.resources.users.release(user) }
            throw error
        }
    }

    private static func prepare(
        runtime: ProcessRuntime,
        template: String,
        profile: WarmProfile,
        waiter: WarmWaiter,
        extraMemoryBytes: UInt64,
        host: CgroupHost,
        invocation: BubblewrapInvocation,
        user: UInt32?
    ) async throws(WarmError) -> ProcessWarmSandbox {
        var limits = profile.limits
        limits.memoryBytes += extraMemoryBytes
        var opened: [Int32] = invocation.files
        func closeAll() { for fd in opened { close(fd) } }
        let control: (read: Int32, write: Int32)
        let stdin: (read: Int32, write: Int32)
        let ready: (read: Int32, write: Int32)
        let cgroup: JobCgroup
        do throws(WarmError) {
            control = try PipeIO.pipe()
            opened += [control.read, control.write]
            stdin = try PipeIO.pipe()
            opened += [stdin.read, stdin.write]
            ready = try PipeIO.pipe()
            opened += [ready.read, ready.write]
            do {
                cgroup = try JobCgroup.create(
                    on: host,
                    name: waiter.cgroupPrefix + template,
                    limits: limits,
                    ledger: runtime.resources.ledger
                )
            } catch {
                throw WarmError("cannot create the sandbox's cgroup: \(error.description)")
            }
        } catch {
            closeAll()
            throw error
        }
        let containment = WarmContainment(cpuTime: cgroup.cpuTimeMicroseconds, killAll: cgroup.killAll)
        let shim = LimitShim(
            procsFiles: cgroup.procsFiles,
            limits: limits,
            program: runtime.bubblewrapPath,
            arguments: ["bwrap"] + invocation.arguments,
            user: user
        )
        // 3, 4 and 5 of ``WarmScript/process``, then the seccomp filter and bubblewrap's files.
        let command = SandboxCommand(
            executable: shim.executable,
            arguments: shim.arguments,
            timeout: lifetime,
            outputLimit: profile.outputBytes,
            inheritedFiles: [control.read, stdin.read, ready.write] + invocation.files,
            containment: containment,
            ledger: runtime.resources.ledger
        )
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        for fd in invocation.files + [control.read, stdin.read, ready.write] { close(fd) }
        let process: SandboxProcess
        do {
            process = try spawned.get()
        } catch {
            for fd in [control.write, stdin.write, ready.read] { close(fd) }
            try? await cgroup.remove()
            throw WarmError("cannot start bubblewrap: \(error.description)")
        }
        let isReady = await PipeIO.awaitByte(on: ready.read, timeout: readyTimeout)
        close(ready.read)
        guard isReady else {
            for fd in [control.write, stdin.write] { close(fd) }
            process.kill()
            let result = try? await process.wait()
            try? await cgroup.remove()
            let stderr = result.map { String(decoding: $0.stderr.prefix(500), as: UTF8.self) } ?? ""
            throw WarmError(
                "the sandbox did not get ready within \(JobLimits.milliseconds(readyTimeout)) ms"
                    + (stderr.isEmpty ? "" : ": \(stderr)")
            )
        }
        return ProcessWarmSandbox(
            template: template,
            profile: profile,
            waiter: waiter,
            process: process,
            cgroup: cgroup,
            containment: containment,
            control: control.write,
            stdinWriter: stdin.write,
            user: user,
            users: runtime.resources.users
        )
    }

    func accepts(_ spec: Hangar_V1_JobSpec) -> Bool {
        var fitting = spec
        if waiter.carriedModule(spec) != nil { fitting.files = [] }  // it travels on the control pipe
        return WarmScript.fits(fitting, template: template, profile: profile)
    }
}

extension ProcessWarmSandbox: ScriptedWarmSandbox {
    static let noun = "sandbox"

    func claim() -> Bool {
        !used.exchange(true, ordering: .sequentiallyConsistent)
    }

    /// Writes the job's memory, pids and CPU limits over the pool's (memory+swap first when
    /// raising, which cgroup v1 requires).
    func applyJobLimits(_ limits: JobLimits) throws(CgroupError) {
        try cgroup.applyLimits(CgroupLimits(limits), raisingMemoryTo: limits.memoryBytes)
    }

    func start(_ spec: Hangar_V1_JobSpec, limits: JobLimits, cpuBaseline: UInt64) {
        containment.arm(cpuTime: limits.cpuTime, baseline: cpuBaseline)
        PipeIO.writeAndClose(spec.stdin, to: stdinWriter)
        PipeIO.writeAndClose(waiter.control(for: spec), to: control)
    }

    func finish(
        _ spec: Hangar_V1_JobSpec,
        result: SandboxResult,
        limits: JobLimits,
        cpuBaseline: UInt64
    ) async -> (outcome: RunOutcome, cleanupProblem: String?) {
        if !cgroup.processes().isEmpty { await cgroup.killAll() }
        let outcome = ProcessRuntime.outcome(of: result, usage: usage(since: cpuBaseline), limits: limits)
        return (outcome, await removeCgroup())
    }

    func abandon() async -> String? {
        await removeCgroup()
    }

    /// Kills the sandbox, waits for it and removes its cgroup.
    func discard() async {
        close(control)
        close(stdinWriter)
        process.kill()
        _ = try? await process.wait()
        _ = await removeCgroup()
    }

    /// Removes the sandbox's cgroup, then gives its user back: a uid whose processes may still live
    /// is never handed to another sandbox. The problem, if the cgroup stays.
    private func removeCgroup() async -> String? {
        do {
            try await cgroup.remove()
            if let user { users.release(user) }
            return nil
        } catch {
            return "the job's cgroup was not removed: \(error)"
        }
    }
}
