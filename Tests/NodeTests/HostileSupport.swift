import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

// Helpers of the hostile suite: every case runs as a tenant job in each of the three runtimes, and
// afterwards checks that the host was not harmed.

/// The three runtimes the hostile suite attacks. The OCI ones keep their state and bundles in the
/// same per-machine test directories as the other OCI tests (see ``OCIKind``).
enum HostileRuntime: String, CaseIterable, CustomStringConvertible, Sendable {
    case process
    case container
    case gvisor

    var description: String { rawValue }

    var runtime: any Runtime {
        switch self {
        case .process: return ProcessRuntime()
        case .container: return OCIKind.runc.runtime
        case .gvisor: return OCIKind.gvisor.runtime
        }
    }

    /// The OCI flavour, for its state and bundle directories; nil for the process runtime.
    var ociKind: OCIKind? {
        switch self {
        case .process: return nil
        case .container: return .runc
        case .gvisor: return .gvisor
        }
    }

    /// How much longer than the program's own run time a job may take: sandbox start-up and
    /// teardown (gVisor on ptrace is slow to boot and to tear down when the machine is busy). Not
    /// a speed figure (those are the benchmarks'): it says the job ended at its limit, not long
    /// after. With every node suite on two cores, a fork bomb's process job once took 2.2 s past
    /// its limit.
    var allowance: Duration {
        switch self {
        case .process: return .seconds(4)
        case .container: return .seconds(5)
        case .gvisor: return .seconds(8)
        }
    }

    /// A wall-clock limit of `milliseconds` for the program, plus what gVisor needs to boot.
    func timeout(_ milliseconds: UInt32) -> UInt32 {
        self == .gvisor ? milliseconds + 1000 : milliseconds
    }
}

/// One hostile job after it ran.
struct HostileRun: Sendable {
    let kind: HostileRuntime
    /// Unique to this run: part of the job id (hence of its cgroup, bundle and container id) and the
    /// last argv element of the program, so that every process of the job carries it.
    let tag: String
    let jobID: String
    let outcome: RunOutcome
    /// From the call to `Runtime.run` until it returned.
    let elapsed: Duration

    var stdout: String { String(decoding: outcome.stdout, as: UTF8.self) }
    var stderr: String { String(decoding: outcome.stderr, as: UTF8.self) }
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }

    /// The words after `key` on the first stdout line that starts with `key `, or nil.
    func field(_ key: String) -> [String]? {
        lines.first { $0.hasPrefix(key + " ") }.map { $0.split(separator: " ").dropFirst().map(String.init) }
    }

    /// For `#expect` messages.
    var summary: String {
        "\(kind): \(outcome.status) exit \(outcome.exitCode) “\(outcome.message)” stdout: \(stdout.prefix(1500)) "
            + "stderr: \(stderr.prefix(600))"
    }
}

/// The hostile suite's helpers; a namespace so nothing clashes with the other test files.
enum Hostile {
    /// Python that opens files until the open-files limit refuses one: prints "files N EMFILE".
    static let openUntilEMFILE = """
        import errno
        files = []
        try:
            while len(files) < 100000:
                files.append(open('/dev/null'))
            print('files unlimited')
        except OSError as error:
            print('files', len(files), errno.errorcode.get(error.errno), flush=True)
        """

    /// Ten digits: usable as a sleep argument ("30.<tag>") and unlikely to appear anywhere else.
    static func tag() -> String {
        String(UInt64.random(in: 1_000_000_000...9_999_999_999))
    }

    /// A spec for `argv` with the hostile suite's defaults: 10 s wall clock, 128 MiB, 64 pids.
    static func spec(
        _ argv: [String],
        _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }
    ) -> Hangar_V1_JobSpec {
        var spec = Hangar_V1_JobSpec()
        spec.argv = argv
        spec.limits.timeoutMs = 10_000
        spec.limits.memoryBytes = 128 << 20
        spec.limits.pids = 64
        configure(&spec)
        return spec
    }

    /// Runs `script` with `sh -c` (`$0` is the marker, then `arguments`) as job `<name>-<tag>`.
    static func shell(
        _ kind: HostileRuntime,
        _ name: String,
        _ script: String,
        arguments: [String] = [],
        tag: String = tag(),
        _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }
    ) async -> HostileRun {
        await run(kind, name, spec(["/bin/sh", "-c", script, "hostile-\(tag)"] + arguments, configure), tag: tag)
    }

    /// Runs `script` with `python3 -c` (`sys.argv[1]` is the marker, then `arguments`).
    static func python(
        _ kind: HostileRuntime,
        _ name: String,
        _ script: String,
        arguments: [String] = [],
        tag: String = tag(),
        _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }
    ) async -> HostileRun {
        let argv = ["/usr/bin/python3", "-c", script, "hostile-\(tag)"] + arguments
        return await run(kind, name, spec(argv, configure), tag: tag)
    }

    static func run(_ kind: HostileRuntime, _ name: String, _ spec: Hangar_V1_JobSpec, tag: String) async -> HostileRun
    {
        let jobID = "hostile-\(name)-\(tag)"
        let began = ContinuousClock.now
        let outcome = await kind.runtime.run(spec, jobID: jobID)
        return HostileRun(kind: kind, tag: tag, jobID: jobID, outcome: outcome, elapsed: ContinuousClock.now - began)
    }

    // MARK: The host after the job

    /// Host processes with the tag in an argv element: the job's own (runc and the process runtime
    /// run them as host processes) and the runtime's (`runc`/`runsc` carry the container id, which
    /// carries the job id).
    static func survivors(of tag: String, within timeout: Duration = .seconds(3)) async -> [String] {
        let end = ContinuousClock.now + timeout
        while true {
            let alive = OCITest.processes(withArgument: tag, containing: true)
            if alive.isEmpty || ContinuousClock.now >= end {
                return alive.map { pid in "\(pid): \(commandLine(of: pid).prefix(200))" }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Job cgroups, bundles and runtime state whose name contains the tag: every `hangar` parent in
    /// every cgroup hierarchy (and the process runtime's own parents), the OCI state and bundle
    /// directories.
    static func residue(of tag: String) -> [String] {
        var found = Set(leftoverCgroups(containing: tag))
        let hierarchies = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []
        for parent in hierarchies.map({ "/sys/fs/cgroup/\($0)/hangar" }) + ["/sys/fs/cgroup/hangar"] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
            found.formUnion(entries.filter { $0.contains(tag) }.map { parent + "/" + $0 })
        }
        for kind in OCIKind.allCases {
            for directory in [kind.directories.state, kind.directories.bundles, "/run/hangar-scratch"] {
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
                found.formUnion(entries.filter { $0.contains(tag) }.map { directory + "/" + $0 })
            }
        }
        return found.sorted()
    }

    /// The host is unharmed after `run`: no process of the job is left, no cgroup, bundle or state
    /// of it, and a trivial follow-up job in the same runtime still succeeds (and leaves nothing).
    static func expectHostUnharmed(after run: HostileRun, sourceLocation: SourceLocation = #_sourceLocation) async {
        #expect(await survivors(of: run.tag) == [], "\(run.kind)", sourceLocation: sourceLocation)
        #expect(residue(of: run.tag) == [], "\(run.kind)", sourceLocation: sourceLocation)
        let after = tag()
        let followUp = await shell(run.kind, "after", "echo follow-up", tag: after)
        #expect(followUp.outcome.status == .succeeded, "\(followUp.summary)", sourceLocation: sourceLocation)
        #expect(followUp.stdout == "follow-up\n", "\(followUp.summary)", sourceLocation: sourceLocation)
        #expect(residue(of: after) == [], "\(run.kind)", sourceLocation: sourceLocation)
    }

    // MARK: Observing the host

    static func commandLine(of pid: String) -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
        return String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
    }

    /// The pids-controller directories of the job cgroups whose name contains `tag`.
    static func pidsCgroups(containing tag: String) -> [String] {
        residue(of: tag).filter { FileManager.default.fileExists(atPath: $0 + "/pids.current") }
    }

    /// What the pids controller saw while a job ran: the most tasks at once, its limit, and how
    /// many forks it refused.
    struct PidsSample: Sendable {
        var peak = 0
        var limit: Int?
        var refused = 0
    }

    /// Samples the job's pids cgroups every 10 ms until cancelled.
    static func samplePids(of tag: String) -> Task<PidsSample, Never> {
        Task {
            var sample = PidsSample()
            while !Task.isCancelled {
                for directory in pidsCgroups(containing: tag) {
                    if let current = number(directory + "/pids.current") { sample.peak = max(sample.peak, current) }
                    if let limit = number(directory + "/pids.max") { sample.limit = limit }
                    let events = (try? String(contentsOfFile: directory + "/pids.events", encoding: .utf8)) ?? ""
                    for line in events.split(separator: "\n") where line.hasPrefix("max ") {
                        sample.refused = max(sample.refused, Int(line.dropFirst(4)) ?? 0)
                    }
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
            return sample
        }
    }

    static func number(_ path: String) -> Int? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap {
            Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Identity of a host file: any write, truncation or replacement changes it.
    static func fingerprint(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return "\(info.st_ino) \(info.st_size) \(info.st_mode) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) "
            + "\(info.st_ctim.tv_sec).\(info.st_ctim.tv_nsec)"
    }

    /// A listening TCP socket on the host's 127.0.0.1, non-blocking, and its port.
    static func loopbackListener() -> (fd: Int32, port: UInt16)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            return nil
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    /// A listening Unix socket in the host's abstract namespace (`@name`), non-blocking.
    static func abstractListener(_ name: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = [UInt8(0)] + Array(name.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            for (index, byte) in bytes.enumerated() where index < path.count { path[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && listen(fd, 16) == 0 }
        }
        guard bound else {
            close(fd)
            return nil
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Whether anyone connected to a non-blocking listening socket (a connection is queued).
    static func somebodyConnected(to listener: Int32) -> Bool {
        let connection = accept(listener, nil, nil)
        if connection >= 0 {
            close(connection)
            return true
        }
        return false
    }
}
