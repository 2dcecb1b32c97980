import Foundation
import Glibc
import HangarShared

/// The shared machinery of ``ContainerRuntime`` and ``GVisorRuntime``: writes the bundle, creates the
/// job's cgroup, runs `<tool> run` under ``SandboxProcess`` (piped stdio, wall-clock deadline,
/// output caps, cancellation), and afterwards always kills and deletes the container, sweeps its
/// cgroup and removes the bundle.
struct OCIEngine: Sendable {
    enum Flavor: Sendable, Equatable {
        case runc(userNamespace: OCIUserNamespace?)
        case runsc(platform: String)
    }

    static let defaultTimeout = Duration.seconds(10)
    static let defaultOutputBytes = 1 << 20
    /// How long the runtime's own commands (`kill`, `delete`, `--version`) may take.
    static let toolTimeout = Duration.seconds(15)
    /// After a kill, how long to keep reading what the container still writes.
    static let drainTimeout = Duration.milliseconds(250)

    let flavor: Flavor
    let executable: String
    let directories: OCIDirectories
    /// Directory templates jobs may ask for; nil for `host` only.
    var templates: TemplateStore? = nil
    /// The node's uids, subnets and ready-made user namespaces.
    var resources: NodeResources = .standard

    /// `runc` or `runsc`.
    var toolName: String {
        switch flavor {
        case .runc: return "runc"
        case .runsc: return "runsc"
        }
    }

    /// Flags that go before every subcommand.
    var globalArguments: [String] {
        switch flavor {
        case .runc:
            return ["--root", directories.state]
        case .runsc(let platform):
            return [
                "--root", directories.state, "--platform=\(platform)", "--network=none", "--rootless=false",
                "--oci-seccomp",
            ]
        }
    }

    /// Host tasks gVisor needs besides the job's own: the sentry's and gofer's threads (about a
    /// hundred for a small job) and, on ptrace, a stub thread per guest thread. Without it a small
    /// `pids` limit keeps the sandbox from booting at all.
    static let gVisorPidsOverhead: Int64 = 256

    func configOptions(cgroupsPath: String) -> OCIConfigOptions {
        switch flavor {
        case .runc(let userNamespace):
            return OCIConfigOptions(userNamespace: userNamespace, copiesScratchUp: true, cgroupsPath: cgroupsPath)
        case .runsc:
            return OCIConfigOptions(
                userNamespace: nil,
                copiesScratchUp: false,
                cgroupsPath: cgroupsPath,
                pidsOverhead: Self.gVisorPidsOverhead,
                allowsClone3: true
            )
        }
    }

    // MARK: Running a job

    func run(_ requested: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        let began = ContinuousClock.now
        if Task.isCancelled {
            var outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled before the container started"
            return outcome
        }
        guard let version = JobCgroup.mountedVersion() else {
            return .error("\(toolName): no cgroup v2 and no cgroup v1 memory hierarchy under /sys/fs/cgroup")
        }
        let id = Self.containerID(for: jobID)
        let cgroup = JobCgroup.placed(
            at: directories.cgroupParent + "/" + id,
            version: version,
            ledger: resources.ledger
        )
        var options = configOptions(cgroupsPath: "/" + directories.cgroupParent + "/" + id)
        let spec: Hangar_V1_JobSpec
        do throws(TemplateError) {
            let resolved = try Template.resolve(requested, in: templates)
            options.root = try resolved.template.layout()
            spec = resolved.spec
        } catch {
            return .error(error.description)
        }
        let userNamespace = options.userNamespace
        let scratch: JobScratch?
        do throws(ScratchError) {
            scratch = try makeScratch(for: spec, id: id, userNamespace: userNamespace)
        } catch {
            return .error(error.description)
        }
        var owned: (namespace: OwnedUserNamespace, user: UInt32)?
        if let userNamespace, geteuid() == 0 {
            let ownNetwork = spec.network.mode == .networkAllowlist
            switch await ownUserNamespace(mapping: userNamespace, limits: spec.limits, network: ownNetwork) {
            case .success(let created):
                owned = created
                options.userNamespacePath = created.namespace.path
            case .failure(let error):
                _ = scratch?.remove()
                return .error(error.description)
            }
        }
        var network: JobNetwork?
        if spec.network.mode == .networkAllowlist {
            guard case .runc = flavor else {
                _ = scratch?.remove()
                return .error(
                    "NETWORK_ALLOWLIST is not supported by the gvisor runtime (runsc keeps its own network stack); "
                        + "use the process or container runtime"
                )
            }
            do {
                network = try await JobNetwork.create(
                    egress: try Egress(network: spec.network, grants: spec.grants),
                    upstream: resources.dnsUpstream,
                    namespaceOf: owned?.namespace.pid,
                    subnets: resources.subnets,
                    ledger: resources.ledger
                )
            } catch {
                _ = scratch?.remove()
                await release(owned, cgroup: cgroup)
                return .error("cannot set up the job's network: \(error.description)")
            }
        }
        let outcome = await run(
            spec,
            id: id,
            began: began,
            cgroup: cgroup,
            options: options,
            scratch: scratch,
            network: network
        )
        await network?.remove()
        await release(owned, cgroup: cgroup)
        return outcome
    }

    /// The smallest `open_files` and `file_size_bytes` a container in an ``OwnedUserNamespace``
    /// may have: runc itself runs under them (it opens about 20 files and writes its state).
    static let launcherMinimumOpenFiles: UInt32 = 32
    static let launcherMinimumFileSize: UInt64 = 1 << 20

    /// A user namespace owned by a host uid of the job's own (``OwnedUserNamespace``), or why not.
    func ownUserNamespace(
        mapping: OCIUserNamespace,
        limits: Hangar_V1_Limits,
        network: Bool = false
    ) async -> Result<(namespace: OwnedUserNamespace, user: UInt32), OCIRuntimeError> {
        if limits.openFiles > 0 && limits.openFiles < Self.launcherMinimumOpenFiles {
            return .failure(
                OCIRuntimeError(
                    "the container runtime needs limits.open_files of at least \(Self.launcherMinimumOpenFiles) "
                        + "(runc runs under the job's own rlimits), got \(limits.openFiles)"
                )
            )
        }
        if limits.fileSizeBytes > 0 && limits.fileSizeBytes < Self.launcherMinimumFileSize {
            return .failure(
                OCIRuntimeError(
                    "the container runtime needs limits.file_size_bytes of at least \(Self.launcherMinimumFileSize) "
                        + "(runc runs under the job's own rlimits), got \(limits.fileSizeBytes)"
                )
            )
        }
        // A namespace that also holds the job's network is made for it; the others come ready-made.
        if !network { return await resources.namespaces.take(mapping: mapping) }
        guard let user = resources.users.acquire() else {
            return .failure(OCIRuntimeError("all \(resources.users.count) sandbox users are in use"))
        }
        do throws(OCIRuntimeError) {
            return .success(
                (
                    try await OwnedUserNamespace.create(
                        owner: user,
                        mapping: mapping,
                        network: network,
                        ledger: resources.ledger
                    ), user
                )
            )
        } catch {
            resources.users.release(user)
            return .failure(error)
        }
    }

    /// Ends the namespace's holder; the uid goes back to the pool unless the container's cgroup
    /// could not be removed (a process of the job may still be charged to it).
    func release(_ owned: (namespace: OwnedUserNamespace, user: UInt32)?, cgroup: JobCgroup) async {
        await release(namespace: owned?.namespace, user: owned?.user, cgroup: cgroup)
    }

    /// The same for a container whose namespace's holder this node may not have (a re-adopted
    /// sandbox's ended with the node process before).
    func release(namespace: OwnedUserNamespace?, user: UInt32?, cgroup: JobCgroup) async {
        await namespace?.remove()
        if let user, !cgroup.exists { resources.users.release(user) }
    }

    /// `command` started through util-linux `prlimit` with `rlimits` set, so that the runtime and
    /// the container it starts inherit them; `command` itself when there are none.
    /// Whether `run` copies the container's output through pipes of its own: runc in the
    /// foreground does (runsc hands the descriptors to the sandbox). See
    /// ``SandboxCommand/relaysOutput``.
    var relaysOutput: Bool { !isGVisor }

    /// Whether this is runsc (gVisor), not runc.
    var isGVisor: Bool {
        if case .runsc = flavor { return true }
        return false
    }

    static func launching(_ command: SandboxCommand, under rlimits: [OCIRlimit]) -> SandboxCommand {
        guard !rlimits.isEmpty else { return command }
        let names = ["RLIMIT_NOFILE": "nofile", "RLIMIT_FSIZE": "fsize", "RLIMIT_CORE": "core", "RLIMIT_CPU": "cpu"]
        var launched = command
        launched.executable = LimitShim.prlimitPath
        launched.arguments =
            ["prlimit"]
            + rlimits.compactMap { limit in names[limit.type].map { "--\($0)=\(limit.soft):\(limit.hard)" } }
            + ["--", command.executable] + command.arguments.dropFirst()
        return launched
    }

    private func run(
        _ spec: Hangar_V1_JobSpec,
        id: String,
        began: ContinuousClock.Instant,
        cgroup: JobCgroup,
        options: OCIConfigOptions,
        scratch: JobScratch?,
        network: JobNetwork?
    ) async -> RunOutcome {
        let clock = ContinuousClock()
        let limits = spec.limits
        let timeout = limits.timeoutMs > 0 ? Duration.milliseconds(Int64(limits.timeoutMs)) : Self.defaultTimeout
        let outputLimit = limits.outputBytes > 0 ? Int(clamping: limits.outputBytes) : Self.defaultOutputBytes
        let userNamespace = options.userNamespace
        let config: OCIJobConfig
        do throws(OCIInvalidJob) {
            config = try OCIJobConfig(job: spec, options: options, hostScratch: scratch?.path, network: network?.path)
        } catch {
            _ = scratch?.remove()
            return .error(error.message)
        }
        let bundle: OCIBundle
        do throws(OCIRuntimeError) {
            bundle = try OCIBundle(
                base: directories.bundles,
                name: id,
                config: config,
                userNamespace: userNamespace,
                ledger: resources.ledger
            )
        } catch {
            _ = scratch?.remove()
            return .error("\(toolName): \(error.description)")
        }
        resources.ledger.made(ledgerEntry(id: id, bundle: bundle))
        let logPath = bundle.path + "/\(toolName).log"
        let result: SandboxResult
        let prepared: Duration
        do throws(OCIRuntimeError) {
            do throws(CgroupError) {
                try cgroup.make(CgroupLimits(config.spec.linux.resources))
            } catch {
                throw OCIRuntimeError(error.description)
            }
            var arguments = [toolName] + globalArguments + ["--log", logPath, "--log-format", "json", "run"]
            if case .runc = flavor { arguments.append("--keep") }  // keep the cgroup to read it
            arguments += ["--bundle", bundle.path, id]
            var command = SandboxCommand(
                executable: executable,
                arguments: arguments,
                environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                stdin: spec.stdin,
                timeout: timeout,
                outputLimit: outputLimit,
                drainTimeout: Self.drainTimeout,
                containment: limits.cpuTimeMs > 0 || relaysOutput
                    ? CgroupContainment(
                        cgroup,
                        cpuTime: limits.cpuTimeMs > 0 ? .milliseconds(Int64(limits.cpuTimeMs)) : nil
                    )
                    : nil
            )
            command.relaysOutput = relaysOutput
            command.tap = OutputTap.current
            command.ledger = resources.ledger
            command = Self.launching(command, under: config.inheritedRlimits)
            prepared = clock.now - began
            do throws(SandboxSpawnError) {
                result = try await SandboxProcess(command).waitKillingOnCancellation()
            } catch {
                throw OCIRuntimeError("cannot start \(toolName): \(error.description)")
            }
        } catch {
            var leftovers = await teardown(id: id, killFirst: true, cgroup: cgroup, bundle: bundle)
            if let problem = scratch?.remove() { leftovers.append(problem) }
            return .error(([error.description] + leftovers).joined(separator: "; "))
        }
        let usage = cgroup.usage()
        let failure = Self.runtimeFailure(in: CgroupFile.read(logPath) ?? "")
        let exitedByItself: Bool
        switch result.termination {
        case .exited, .signaled: exitedByItself = result.killReason == nil
        case .lost: exitedByItself = false
        }
        let leftovers = await teardown(
            id: id,
            killFirst: result.killReason != nil,
            stopped: exitedByItself,
            cgroup: cgroup,
            bundle: bundle
        )
        var outcome = OCIEnding(
            tool: toolName,
            program: spec.argv[0],
            limits: limits,
            timeout: timeout,
            outputLimit: outputLimit
        ).outcome(of: result, usage: usage, runtimeFailure: failure)
        outcome.startMilliseconds = JobLimits.milliseconds(prepared + result.spawnTime)
        if let scratch {
            outcome.collectFiles(from: scratch, spec: spec, capBytes: outputLimit)
            if let problem = scratch.remove() { outcome.appendMessage(problem) }
        }
        if !leftovers.isEmpty {
            outcome.appendMessage("cleanup incomplete: " + leftovers.joined(separator: "; "))
        }
        return outcome
    }

    /// A host tmpfs for `/tmp` when the job asks for files back (see ``JobScratch``), else nil.
    private func makeScratch(
        for spec: Hangar_V1_JobSpec,
        id: String,
        userNamespace: OCIUserNamespace?
    )
        throws(ScratchError) -> JobScratch?
    {
        guard !spec.filesOut.isEmpty else { return nil }
        try JobScratch.checkFilesOut(spec)
        let limits = spec.limits
        let size = limits.fileSizeBytes > 0 ? limits.fileSizeBytes : OCIJobConfig.defaultScratchBytes
        let owner = (userNamespace?.hostID ?? 0) + OCIJobConfig.uid
        return try JobScratch.create(name: id, sizeBytes: size, owner: (owner, owner), ledger: resources.ledger)
    }

    /// Kills the container if asked, deletes it, sweeps its cgroup and removes the bundle. Runs to
    /// the end even when the calling task is cancelled. Returns what could not be cleaned up.
    ///
    /// `stopped`: the runtime's `run` came back by itself, so the container's init is dead and with
    /// it every process of its pid namespace (runsc has also destroyed its sandbox). Then a
    /// `delete` (another exec of the tool, tens of milliseconds) only removes the runtime's state
    /// directory, which the sweep below does as well; the cgroup is destroyed here either way.
    func teardown(
        id: String,
        killFirst: Bool,
        stopped: Bool = false,
        cgroup: JobCgroup,
        bundle: OCIBundle
    ) async -> [String] {
        var leftovers: [String] = []
        defer { if leftovers.isEmpty { resources.ledger.gone(ledgerEntry(id: id, bundle: bundle)) } }
        if stopped && !killFirst {
            leftovers += sweepState(of: id)
            leftovers += await Self.remove(cgroup)
            if let problem = bundle.remove() { leftovers.append(problem) }
            return leftovers
        }
        if killFirst { _ = await tool(["kill", id, "KILL"]) }
        let deleted = await tool(["delete", "--force", id])
        if deleted.succeeded || deleted.output.contains("not exist") {
            // A runtime killed while it created the container leaves state it no longer knows.
            leftovers += sweepState(of: id)
        } else {
            leftovers.append("\(toolName) delete --force \(id): \(deleted.output)")
        }
        leftovers += await Self.remove(cgroup)
        if let problem = bundle.remove() { leftovers.append(problem) }
        return leftovers
    }

    /// Kills what is left in the container's cgroup and removes it from every hierarchy; what could
    /// not be removed, as leftovers.
    private static func remove(_ cgroup: JobCgroup) async -> [String] {
        do {
            try await cgroup.remove()
            return []
        } catch {
            return [error.description]
        }
    }

    /// Writes the bundle this engine would run `spec` in, under a cgroup of its own, and returns
    /// its directory (for benchmarks: the container alone, without the node around it).
    func writeBundle(for requested: Hangar_V1_JobSpec, id: String) throws -> String {
        var options = configOptions(cgroupsPath: "/" + directories.cgroupParent + "/" + id)
        let resolved = try Template.resolve(requested, in: templates)
        options.root = try resolved.template.layout()
        let config = try OCIJobConfig(job: resolved.spec, options: options)
        return try OCIBundle(
            base: directories.bundles,
            name: id,
            config: config,
            userNamespace: options.userNamespace,
            ledger: resources.ledger
        ).path
    }

    /// How ``SandboxLedger`` names a container of this engine, so that a node started after this
    /// one crashed can kill and delete it.
    func ledgerEntry(id: String, bundle: OCIBundle) -> SandboxLedger.Resource {
        .container(tool: executable, globalArguments: globalArguments, id: id, bundle: bundle.path)
    }

    /// Removes what the runtime keeps in its state directory for a container it no longer has:
    /// runc's `<id>/` directory, runsc's `<id>_sandbox:<id>.state` and `.lock` files.
    private func sweepState(of id: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directories.state)) ?? []
        var leftovers: [String] = []
        for entry in entries where entry == id || entry.hasPrefix(id + "_") {
            let path = directories.state + "/" + entry
            do {
                try FileManager.default.removeItem(atPath: path)
            } catch {
                leftovers.append("cannot remove \(toolName) state \(path): \(error.localizedDescription)")
            }
        }
        return leftovers
    }

    /// Runs one of the tool's own subcommands to completion; never killed by task cancellation.
    func tool(_ subcommand: [String]) async -> (succeeded: Bool, output: String) {
        let command = SandboxCommand(
            executable: executable,
            arguments: [toolName] + globalArguments + subcommand,
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            timeout: Self.toolTimeout,
            outputLimit: 64 * 1024,
            ledger: resources.ledger
        )
        do throws(SandboxSpawnError) {
            let result = try await SandboxProcess(command).wait()
            let output = String(decoding: result.stdout + result.stderr, as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let succeeded = result.termination == .exited(0) && result.killReason == nil
            if result.killReason == .timedOut {
                return (false, "no answer within \(JobLimits.milliseconds(Self.toolTimeout)) ms")
            }
            return (succeeded, output.isEmpty ? "\(result.termination)" : output)
        } catch {
            return (false, error.description)
        }
    }

    /// The first error the runtime logged (`{"level":"error","msg":…}` lines of `--log-format json`).
    static func runtimeFailure(in log: String) -> String? {
        struct Entry: Decodable {
            var level: String?
            var msg: String?
        }
        let decoder = JSONDecoder()
        for line in log.split(separator: "\n") {
            guard let entry = try? decoder.decode(Entry.self, from: Data(line.utf8)) else { continue }
            if entry.level == "error" || entry.level == "fatal", let message = entry.msg { return message }
        }
        return nil
    }

    /// `hangar-<job id, sanitised and shortened>-<12 random hex digits>`: unique per run, and valid
    /// as a container id (`[A-Za-z0-9_.-]`), a directory name and a cgroup name.
    static func containerID(for jobID: String) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
        let cleaned = String(jobID.prefix(32).map { allowed.contains($0) ? $0 : "_" })
        let random = String(UInt64.random(in: 0...UInt64(0xFFFF_FFFF_FFFF)), radix: 16)
        let suffix = String(repeating: "0", count: 12 - random.count) + random
        return cleaned.isEmpty ? "hangar-\(suffix)" : "hangar-\(cleaned)-\(suffix)"
    }

    // MARK: Probing

    func probe() async -> RuntimeProbe {
        guard access(executable, X_OK) == 0 else {
            return RuntimeProbe(available: false, detail: "\(toolName) not found at \(executable)")
        }
        let version = await tool(["--version"])
        guard version.succeeded, let first = version.output.split(separator: "\n").first else {
            return RuntimeProbe(available: false, detail: "\(executable) --version failed: \(version.output)")
        }
        // "runc version 1.1.5+ds1" → "runc 1.1.5+ds1"
        var detail = first.replacingOccurrences(of: " version ", with: " ")
        if case .runsc(let platform) = flavor { detail += ", platform \(platform)" }
        var trial = Hangar_V1_JobSpec()
        trial.argv = ["/bin/true"]
        trial.limits.timeoutMs = 15_000
        let outcome = await run(trial, jobID: "probe")
        guard outcome.status == .succeeded else {
            let reason = outcome.message.isEmpty ? "status \(outcome.status)" : outcome.message
            let stderr = String(decoding: outcome.stderr.prefix(500), as: UTF8.self)
            return RuntimeProbe(
                available: false,
                detail: "\(detail) cannot run a container here: \(reason)" + (stderr.isEmpty ? "" : " (\(stderr))")
            )
        }
        return RuntimeProbe(available: true, detail: detail)
    }
}
