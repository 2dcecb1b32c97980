import Foundation
import Glibc
import HangarShared

/// Runs a job's argv inside bubblewrap: every namespace unshared (no network but loopback), all
/// capabilities dropped, uid/gid 65534, a read-only view of the host's `/usr` and a few `/etc`
/// files, and a size-bounded private tmpfs at `/tmp`. Killing the outer `bwrap` tears down the
/// job's pid namespace, so nothing the job started (daemons included) survives it.
public struct ProcessRuntime: Runtime {
    /// Always "process".
    public let name = "process"
    /// Where the `bwrap` binary is.
    public let bubblewrapPath: String

    /// Wall-clock limit when the spec's `timeoutMs` is 0.
    public static let defaultTimeout = Duration.seconds(10)
    /// Per-stream output cap when the spec's `outputBytes` is 0.
    public static let defaultOutputBytes = 1 << 20
    /// Size of the `/tmp` tmpfs when the spec's `fileSizeBytes` is 0.
    public static let defaultScratchBytes: UInt64 = 64 << 20
    /// `PATH` inside the sandbox unless the job sets its own.
    public static let defaultPath = "/usr/local/bin:/usr/bin:/bin"

    /// A runtime that runs jobs with the `bwrap` at `bubblewrapPath`.
    public init(bubblewrapPath: String = "/usr/bin/bwrap") {
        self.bubblewrapPath = bubblewrapPath
    }

    /// Available iff `bwrap` runs and a trivial sandbox running `/usr/bin/true` succeeds within 5 s.
    public func probe() async -> RuntimeProbe {
        guard access(bubblewrapPath, X_OK) == 0 else {
            return RuntimeProbe(available: false, detail: "bubblewrap not found at \(bubblewrapPath)")
        }
        let versionCommand = SandboxCommand(
            executable: bubblewrapPath,
            arguments: ["bwrap", "--version"],
            timeout: .seconds(5),
            outputLimit: 4096
        )
        let version: String
        do {
            let result = try await SandboxProcess.run(versionCommand)
            let output = String(decoding: result.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard result.termination == .exited(0), result.killReason == nil, !output.isEmpty else {
                return RuntimeProbe(
                    available: false,
                    detail: "\(bubblewrapPath) --version failed: \(result.termination)"
                )
            }
            version = output
        } catch {
            return RuntimeProbe(available: false, detail: error.description)
        }
        var trial = Hangar_V1_JobSpec()
        trial.argv = ["/usr/bin/true"]
        trial.limits.timeoutMs = 5000
        let outcome = await run(trial, jobID: "probe")
        guard outcome.status == .succeeded else {
            let reason = outcome.message.isEmpty ? "status \(outcome.status)" : outcome.message
            return RuntimeProbe(available: false, detail: "\(version) cannot create a sandbox here: \(reason)")
        }
        return RuntimeProbe(available: true, detail: version)
    }

    /// Runs the job in a fresh sandbox and kills it on timeout, output overflow or task cancellation.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        let clock = ContinuousClock()
        let began = clock.now
        if Task.isCancelled {
            var outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled before the sandbox started"
            return outcome
        }
        let limits = spec.limits
        let timeout = limits.timeoutMs > 0 ? Duration.milliseconds(Int64(limits.timeoutMs)) : Self.defaultTimeout
        let outputLimit = limits.outputBytes > 0 ? Int(clamping: limits.outputBytes) : Self.defaultOutputBytes
        let invocation: BubblewrapInvocation
        do {
            invocation = try BubblewrapInvocation(spec: spec)
        } catch {
            return .error(error.message)
        }
        let command = SandboxCommand(
            executable: bubblewrapPath,
            arguments: ["bwrap"] + invocation.arguments,
            stdin: spec.stdin,
            timeout: timeout,
            outputLimit: outputLimit,
            inheritedFiles: invocation.files
        )
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        for fd in invocation.files { close(fd) }  // the process holds its own copies
        let prepared = clock.now - began
        let result: SandboxResult
        do throws(SandboxSpawnError) {
            result = try await spawned.get().waitKillingOnCancellation()
        } catch {
            return .error("cannot start bubblewrap: \(error.description)")
        }
        var outcome = Self.outcome(of: result, timeout: timeout, outputLimit: outputLimit)
        outcome.startMilliseconds = Self.milliseconds(prepared + result.spawnTime)
        return outcome
    }

    static func outcome(of result: SandboxResult, timeout: Duration, outputLimit: Int) -> RunOutcome {
        var outcome: RunOutcome
        switch result.killReason {
        case .timedOut:
            outcome = RunOutcome(status: .timedOut)
            outcome.message = "wall-clock limit of \(milliseconds(timeout)) ms reached; the sandbox was killed"
        case .outputLimit:
            outcome = RunOutcome(status: .outputLimit)
            let streams = [result.stdoutTruncated ? "stdout" : nil, result.stderrTruncated ? "stderr" : nil]
            outcome.message =
                "\(streams.compactMap { $0 }.joined(separator: " and ")) went over the "
                + "\(outputLimit)-byte limit; the sandbox was killed"
        case .cancelled:
            outcome = RunOutcome(status: .cancelled)
            outcome.message = "cancelled; the sandbox was killed"
        case nil:
            switch result.termination {
            case .exited(0):
                outcome = RunOutcome(status: .succeeded)
            case .exited(let code):
                outcome = RunOutcome(status: .failed)
                outcome.message = sandboxComplaint(result.stderr) ?? "exited with code \(code)"
            case .signaled(let signal):
                outcome = RunOutcome(status: .failed)
                outcome.message = "killed by signal \(signal)"
            case .lost:
                outcome = .error("the sandbox's exit status was lost (does the node ignore SIGCHLD?)")
            }
        }
        switch result.termination {
        case .exited(let code): outcome.exitCode = code
        case .signaled(let signal): outcome.signal = signal
        case .lost: break
        }
        outcome.stdout = result.stdout
        outcome.stderr = result.stderr
        outcome.stdoutTruncated = result.stdoutTruncated
        outcome.stderrTruncated = result.stderrTruncated
        outcome.stdoutBytes = result.stdoutBytes
        outcome.stderrBytes = result.stderrBytes
        outcome.cpuTimeMicroseconds = result.cpuTimeMicroseconds
        outcome.peakMemoryBytes = result.peakMemoryBytes
        outcome.runMilliseconds = milliseconds(result.runTime)
        return outcome
    }

    /// bubblewrap's own complaint ("bwrap: execvp nope: No such file or directory"), if that is
    /// what ended the job.
    private static func sandboxComplaint(_ stderr: Data) -> String? {
        let text = String(decoding: stderr.prefix(1024), as: UTF8.self)
        guard text.hasPrefix("bwrap: ") else { return nil }
        return "sandbox: " + (text.split(separator: "\n").first.map(String.init) ?? text)
    }

    private static func milliseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }
}

/// A spec that cannot run in the process runtime; `message` says why.
struct InvalidJob: Error {
    var message: String
}

/// The `bwrap` arguments for one job, and the descriptors `--file` reads from (passed as 3, 4, …).
struct BubblewrapInvocation {
    private(set) var arguments: [String] = []
    private(set) var files: [Int32] = []

    /// Host directories that are symlinks into `/usr` on merged-/usr systems.
    static let systemDirectories = ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"]
    /// What programs need from the host's `/etc`, bound read-only when present.
    static let etcFiles = [
        "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl",
        "/etc/ca-certificates", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts",
    ]
    static let maxFiles = 256

    init(spec: Hangar_V1_JobSpec) throws(InvalidJob) {
        guard let program = spec.argv.first, !program.isEmpty else { throw InvalidJob(message: "argv is empty") }
        if (spec.argv + [spec.cwd]).contains(where: { $0.utf8.contains(0) }) {
            throw InvalidJob(message: "argv and cwd must not contain NUL bytes")
        }
        switch spec.network.mode {
        case .networkNone, .networkLoopback: break
        default:
            throw InvalidJob(message: "network mode \(spec.network.mode) is not supported by the process runtime")
        }
        let workdir = spec.cwd.isEmpty ? "/tmp" : spec.cwd
        guard workdir.hasPrefix("/"), !workdir.split(separator: "/").contains("..") else {
            throw InvalidJob(message: "cwd must be an absolute path without \"..\", got \"\(spec.cwd)\"")
        }
        let scratchBytes =
            spec.limits.fileSizeBytes > 0 ? spec.limits.fileSizeBytes : ProcessRuntime.defaultScratchBytes

        arguments = [
            "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--hostname", "sandbox", "--uid", "65534", "--gid", "65534", "--clearenv",
        ]
        for (key, value) in try Self.environment(spec.env) { arguments += ["--setenv", key, value] }
        arguments += ["--ro-bind", "/usr", "/usr"]
        for directory in Self.systemDirectories {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: directory) {
                arguments += ["--symlink", target, directory]
            } else {
                arguments += ["--ro-bind-try", directory, directory]
            }
        }
        for path in Self.etcFiles { arguments += ["--ro-bind-try", path, path] }
        arguments += ["--proc", "/proc", "--dev", "/dev", "--size", String(scratchBytes), "--tmpfs", "/tmp"]
        let inScratch = workdir == "/tmp" || workdir.hasPrefix("/tmp/")
        if inScratch && workdir != "/tmp" { arguments += ["--dir", workdir] }
        if !spec.files.isEmpty {
            guard inScratch else { throw InvalidJob(message: "files need a working directory under /tmp") }
            try stage(spec.files, in: workdir, scratchBytes: scratchBytes)
        }
        // The root is bwrap's own tmpfs; freeze it so only /tmp (a separate mount) is writable.
        arguments += ["--remount-ro", "/", "--chdir", workdir, "--"] + spec.argv
    }

    /// The job's environment plus the default `PATH` and `HOME`, sorted by name.
    private static func environment(_ env: [String: String]) throws(InvalidJob) -> [(String, String)] {
        for (key, value) in env where key.isEmpty || key.contains("=") || (key + value).utf8.contains(0) {
            throw InvalidJob(message: "invalid environment variable name \"\(key)\"")
        }
        var all = env
        if all["PATH"] == nil { all["PATH"] = ProcessRuntime.defaultPath }
        if all["HOME"] == nil { all["HOME"] = "/tmp" }
        return all.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Copies each file into an anonymous memory file that `bwrap --file` writes into the scratch
    /// tmpfs, so the files count against its size bound and never touch the host's disk.
    private mutating func stage(
        _ inputs: [Hangar_V1_FileIn],
        in workdir: String,
        scratchBytes: UInt64
    ) throws(InvalidJob) {
        guard inputs.count <= Self.maxFiles else {
            throw InvalidJob(message: "at most \(Self.maxFiles) files, got \(inputs.count)")
        }
        let total = inputs.reduce(UInt64(0)) { $0 + UInt64($1.content.count) }
        guard total <= scratchBytes else {
            throw InvalidJob(message: "files total \(total) bytes, more than the \(scratchBytes)-byte /tmp")
        }
        let paths = try Self.checkedPaths(inputs.map(\.path))
        do {
            for (index, input) in inputs.enumerated() {
                let fd = try Self.memoryFile(holding: input.content)
                files.append(fd)
                let mode = input.mode == 0 ? 0o644 : input.mode & 0o777
                arguments += [
                    "--perms", "0" + String(mode, radix: 8), "--file", String(3 + index), workdir + "/" + paths[index],
                ]
            }
        } catch {
            for fd in files { close(fd) }
            files = []
            throw error
        }
    }

    /// Relative paths of plain components only (no "", ".", ".."), no duplicates, and no file that
    /// is also another file's directory.
    private static func checkedPaths(_ paths: [String]) throws(InvalidJob) -> [String] {
        var seen = Set<String>()
        var directories = Set<String>()
        for path in paths {
            let components = path.split(separator: "/", omittingEmptySubsequences: false)
            guard !path.isEmpty, path.utf8.count <= 4096, !path.utf8.contains(0),
                components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
            else {
                throw InvalidJob(
                    message: "file path \"\(path)\" must be relative, without \".\", \"..\" or empty parts"
                )
            }
            guard seen.insert(path).inserted else { throw InvalidJob(message: "file path \"\(path)\" appears twice") }
            for end in 1..<components.count { directories.insert(components[0..<end].joined(separator: "/")) }
        }
        if let clash = paths.first(where: directories.contains) {
            throw InvalidJob(message: "file path \"\(clash)\" is also used as a directory")
        }
        return paths
    }

    private static func memoryFile(holding content: Data) throws(InvalidJob) -> Int32 {
        let fd = GlibcExtensions.anonymousFile(named: "hangar-file")
        guard fd >= 0 else {
            throw InvalidJob(message: "cannot create a memory file: \(String(cString: strerror(errno)))")
        }
        let written = content.withUnsafeBytes { bytes -> Bool in
            var offset = 0
            while offset < bytes.count {
                let count = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return false }
                offset += count
            }
            return true
        }
        guard written, lseek(fd, 0, SEEK_SET) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw InvalidJob(message: "cannot write a memory file: \(reason)")
        }
        return fd
    }
}
