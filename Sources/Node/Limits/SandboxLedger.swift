import Foundation
import Glibc
import Synchronization

/// What a node process has set up on the host for its sandboxes and not yet taken down, written
/// down as it goes, so that the next node to start can take down what a crashed one left: a node
/// killed with `kill -9` leaves runc/runsc containers running tenant code (they do not die with
/// `runc run`), cgroups, scratch mounts, bundles, network namespaces and share sockets.
///
/// One file per node process, `<directory>/<pid>.<start time>.ledger`, of JSON lines `["+", kind,
/// args…]` when a resource is made and `["-", kind, args…]` when it is gone. ``sweep()`` takes
/// down everything still listed in the files of processes that no longer run (the start time
/// tells a reused pid apart), then deletes those files. Nothing here is durable on purpose: every
/// resource listed lives in memory or on a tmpfs and is gone after a reboot anyway.
public final class SandboxLedger: Sendable {
    /// A resource of the host that a sandbox used.
    public enum Resource: Sendable, Hashable {
        /// A cgroup directory (one per controller on v1).
        case cgroup(directory: String)
        /// A job's scratch tmpfs mount point.
        case scratch(path: String)
        /// A network namespace under `/run/netns` and the host end of its veth pair.
        case network(namespace: String, hostInterface: String)
        /// A runc/runsc container: the tool, its global arguments (state root…), the container id
        /// and its bundle directory.
        case container(tool: String, globalArguments: [String], id: String, bundle: String)
        /// A process the node spawned (a session leader): its process group is killed if that
        /// very process (same start time) still runs.
        case process(pid: Int32, start: UInt64)
        /// A unix socket the node listens on (a microVM's virtiofs share), alone in a directory of
        /// its own: both are removed.
        case socket(path: String)

        var fields: [String] {
            switch self {
            case .cgroup(let directory): ["cgroup", directory]
            case .scratch(let path): ["scratch", path]
            case .network(let namespace, let interface): ["network", namespace, interface]
            case .container(let tool, let arguments, let id, let bundle):
                ["container", tool, id, bundle] + arguments
            case .process(let pid, let start): ["process", String(pid), String(start)]
            case .socket(let path): ["socket", path]
            }
        }

        init?(fields: [String]) {
            switch (fields.first, fields.count) {
            case ("cgroup", 2): self = .cgroup(directory: fields[1])
            case ("scratch", 2): self = .scratch(path: fields[1])
            case ("socket", 2): self = .socket(path: fields[1])
            case ("network", 3): self = .network(namespace: fields[1], hostInterface: fields[2])
            case ("process", 3):
                guard let pid = Int32(fields[1]), pid > 1, let start = UInt64(fields[2]) else { return nil }
                self = .process(pid: pid, start: start)
            case ("container", 4...):
                self = .container(
                    tool: fields[1],
                    globalArguments: Array(fields[4...]),
                    id: fields[2],
                    bundle: fields[3]
                )
            default: return nil
            }
        }
    }

    /// Where node agents keep their ledgers.
    public static let defaultDirectory = "/run/hangar/ledger"

    /// Where this ledger's file goes when opened, and where ``sweep()`` looks for dead nodes' files.
    public let directory: String
    private let file = Mutex(OpenFile())

    /// The ledger file while it is written, and what it lists as outstanding (so it can be
    /// rewritten short: without compaction a node's ledger would grow by every job it ever ran).
    private struct OpenFile {
        var fd: Int32 = -1
        var path = ""
        var written = 0
        var outstanding: [Resource: Int] = [:]
        /// Opens not yet matched by a ``close()`` (several node agents may share a test process).
        var opens = 0
    }

    /// Past this many bytes the file is rewritten with only what is outstanding.
    public static let compactionThreshold = 1 << 20

    /// A ledger for `directory` that writes nowhere until opened. A node has one
    /// (``NodeResources/ledger``); the runtimes note there what its sandboxes make.
    ///
    /// Its file is named for the process, so two ledgers open at the same time in one process
    /// need directories of their own (a second ``open(identity:)`` of the same file throws).
    public init(directory: String = defaultDirectory) {
        self.directory = directory
    }

    /// Starts writing the ledger in ``directory`` (created 0700) under this process's pid and start
    /// time, or under `identity` (tests: a process that has exited); later calls only count, so the
    /// ledger stays open until as many ``close()`` calls.
    /// Throws if the file cannot be created, or another ledger of this process writes it.
    public func open(identity: (pid: Int32, start: UInt64)? = nil) throws {
        let directory = self.directory
        try file.withLock { state in
            guard state.fd < 0 else {
                state.opens += 1
                return
            }
            try FileManager.default.createDirectory(
                atPath: directory,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700]
            )
            let owner = identity ?? (getpid(), Self.startTime(of: getpid()) ?? 0)
            let path = directory + "/" + Self.fileName(pid: owner.pid, start: owner.start)
            let opened = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            guard opened >= 0 else {
                throw SandboxLedgerError("cannot create \(path): \(String(cString: strerror(errno)))")
            }
            // A lock of this open file: a second ledger of this process on the same file would
            // interleave its notes and delete the file under the first at its clean stop.
            guard flock(opened, LOCK_EX | LOCK_NB) == 0 else {
                Glibc.close(opened)
                throw SandboxLedgerError("\(path) is written by another ledger of this process")
            }
            state.fd = opened
            state.path = path
            state.opens = 1
        }
    }

    /// Stops writing the ledger, at a clean stop (the last of its openers): the file is deleted
    /// when it lists nothing outstanding (everything made is gone), else kept for the next node's
    /// sweep. Returns what is still outstanding (nothing while other openers remain); later notes
    /// are not written until the ledger is opened again.
    @discardableResult
    public func close() -> [Resource] {
        file.withLock { state in
            guard state.fd >= 0 else { return [] }
            state.opens -= 1
            guard state.opens <= 0 else { return [] }
            let outstanding = state.outstanding.flatMap { Array(repeating: $0.key, count: $0.value) }
            Glibc.close(state.fd)
            if outstanding.isEmpty { unlink(state.path) }
            state = OpenFile()
            return outstanding
        }
    }

    /// Whether the ledger is being written.
    public var isOpen: Bool { file.withLock { $0.fd >= 0 } }

    /// The size of the ledger file as written so far (after the last compaction).
    public var writtenBytes: Int { file.withLock { $0.written } }

    /// Notes that `resource` now exists.
    public func made(_ resource: Resource) { append(["+"] + resource.fields, resource, made: true) }

    /// Notes that `resource` is gone.
    public func gone(_ resource: Resource) { append(["-"] + resource.fields, resource, made: false) }

    private func append(_ fields: [String], _ resource: Resource, made: Bool) {
        file.withLock { state in
            guard state.fd >= 0, let line = Self.line(fields) else { return }
            if made {
                state.outstanding[resource, default: 0] += 1
            } else if let count = state.outstanding[resource] {
                state.outstanding[resource] = count > 1 ? count - 1 : nil
            } else {
                return  // never listed (or listed by another ledger): nothing to undo
            }
            // One write(2) per line on an O_APPEND file: lines never interleave.
            state.written += line.withUnsafeBytes { max(0, Glibc.write(state.fd, $0.baseAddress, $0.count)) }
            if state.written > Self.compactionThreshold { Self.compact(&state) }
        }
    }

    private static func line(_ fields: [String]) -> Data? {
        guard var line = try? JSONSerialization.data(withJSONObject: fields) else { return nil }
        line.append(0x0A)
        return line
    }

    /// Rewrites the file with only the outstanding resources (a new file renamed over the old one,
    /// so a crash meanwhile leaves one or the other whole) and goes on appending to it.
    private static func compact(_ state: inout OpenFile) {
        var text = Data()
        for (resource, count) in state.outstanding {
            for _ in 0..<count { text += line(["+"] + resource.fields) ?? Data() }
        }
        let temporary = state.path + ".tmp"
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let written = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == text.count, rename(temporary, state.path) == 0 else {
            Glibc.close(fd)
            unlink(temporary)
            return
        }
        _ = flock(fd, LOCK_EX | LOCK_NB)
        Glibc.close(state.fd)
        state.fd = fd
        state.written = text.count
    }

    // MARK: Sweeping

    /// What one sweep found and did.
    public struct SweepReport: Sendable {
        /// Node processes whose leftovers were taken down.
        public var processes: [Int32] = []
        /// What was taken down.
        public var removed: [Resource] = []
        /// What could not be, and why.
        public var problems: [String] = []
    }

    /// Takes down everything the ledgers in ``directory`` list for node processes that no longer
    /// run, but `sparing` and `forgetting`: see ``sweep(directory:sparing:forgetting:)``.
    public func sweep(sparing: Set<Resource> = [], forgetting: Set<Resource> = []) async -> SweepReport {
        await Self.sweep(directory: directory, sparing: sparing, forgetting: forgetting)
    }

    /// Takes down everything the ledgers in `directory` list for node processes that no longer
    /// run, but `sparing`, which stays listed for a later sweep, and `forgetting` (what a node
    /// re-adopted and now lists in its own ledger), which is dropped from the files and left as it
    /// is. Always spared too: the resources of every stateful sandbox in the ``SandboxRegistry``
    /// next to the ledgers that still runs, of any node id (its own node may re-adopt it; several
    /// nodes may share a ledger directory, and any of them may sweep, whatever its runtimes).
    public static func sweep(
        directory: String,
        sparing: Set<Resource> = [],
        forgetting: Set<Resource> = []
    ) async -> SweepReport {
        let sparing = sparing.union(SandboxRegistry(directory: directory + "/sandboxes").stillRunning())
        var report = SweepReport()
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names.sorted() where name.hasSuffix(".ledger") {
            let parts = name.dropLast(".ledger".count).split(separator: ".")
            guard parts.count == 2, let pid = Int32(parts[0]), let start = UInt64(parts[1]) else { continue }
            if let running = startTime(of: pid), running == start { continue }  // still alive
            let path = directory + "/" + name
            let listed = outstandingResources(in: path).filter { !forgetting.contains($0) }
            let spared = listed.filter { sparing.contains($0) }
            let outstanding = listed.filter { !sparing.contains($0) }
            var problems: [String] = []
            // Containers first (their processes are in the cgroups), then what they used.
            for resource in outstanding.sorted(by: { order($0) < order($1) }) {
                if let problem = await takeDown(resource) {
                    problems.append(problem)
                } else {
                    report.removed.append(resource)
                }
            }
            report.processes.append(pid)
            report.problems += problems
            if problems.isEmpty && spared.isEmpty {
                unlink(path)
            } else {
                // Keep what is left for the next sweep.
                let remaining = spared + outstanding.filter { !report.removed.contains($0) }
                let text = remaining.compactMap { resource -> String? in
                    (try? JSONSerialization.data(withJSONObject: ["+"] + resource.fields)).map {
                        String(decoding: $0, as: UTF8.self)
                    }
                }.joined(separator: "\n")
                try? (text + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            }
        }
        return report
    }

    /// The resources a ledger file lists as made and not gone, in the order they were made.
    public static func outstandingResources(in path: String) -> [Resource] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        var live: [Resource] = []
        for line in data.split(separator: 0x0A) {
            guard let fields = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String],
                let sign = fields.first, let resource = Resource(fields: Array(fields.dropFirst()))
            else { continue }
            if sign == "+" {
                live.append(resource)
            } else if sign == "-", let index = live.lastIndex(of: resource) {
                live.remove(at: index)
            }
        }
        return live
    }

    private static func order(_ resource: Resource) -> Int {
        switch resource {
        case .process: 0
        case .container: 0
        case .cgroup: 1
        case .scratch: 2
        case .socket: 2
        case .network: 3
        }
    }

    /// Takes one resource down; nil when it is gone (or was already), else why not.
    static func takeDown(_ resource: Resource) async -> String? {
        switch resource {
        case .process(let pid, let start):
            guard startTime(of: pid) == start else { return nil }  // gone, or the pid is another's now
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            return nil
        case .container(let tool, let arguments, let id, let bundle):
            _ = await run(tool, arguments + ["kill", id, "KILL"])
            let deleted = await run(tool, arguments + ["delete", "--force", id])
            if !deleted.succeeded && !deleted.output.contains("not exist") {
                return "\(tool) delete \(id): \(deleted.output)"
            }
            umount2(bundle + "/rootfs", Int32(MNT_DETACH))  // the bundle's own root tmpfs, if any
            try? FileManager.default.removeItem(atPath: bundle)
            return nil
        case .cgroup(let directory):
            let end = ContinuousClock.now + .seconds(3)
            while true {
                for pid in CgroupFile.pids(directory + "/cgroup.procs") { kill(pid, SIGKILL) }
                if rmdir(directory) == 0 || errno == ENOENT { return nil }
                guard ContinuousClock.now < end else {
                    return "cannot remove cgroup \(directory): \(String(cString: strerror(errno)))"
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
        case .scratch(let path):
            if umount2(path, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
                return "cannot unmount \(path): \(String(cString: strerror(errno)))"
            }
            if rmdir(path) != 0 && errno != ENOENT {
                return "cannot remove \(path): \(String(cString: strerror(errno)))"
            }
            return nil
        case .socket(let path):
            var status = stat()
            if lstat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFSOCK { unlink(path) }
            let directory = (path as NSString).deletingLastPathComponent
            // A gVisor agent's directory was bound into its sandbox: whatever else is there goes too.
            if rmdir(directory) != 0 && errno != ENOENT {
                let why = errno
                if why == ENOTEMPTY, (try? FileManager.default.removeItem(atPath: directory)) != nil { return nil }
                return "cannot remove \(directory): \(String(cString: strerror(why)))"
            }
            return nil
        case .network(let namespace, let interface):
            _ = await run("/usr/sbin/ip", ["link", "del", interface])
            let deleted = await run("/usr/sbin/ip", ["netns", "del", namespace])
            if !deleted.succeeded && FileManager.default.fileExists(atPath: "/run/netns/" + namespace) {
                return "ip netns del \(namespace): \(deleted.output)"
            }
            return nil
        }
    }

    /// Runs a tool of the sweep, noted in no ledger (a node sweeps before it opens its own).
    private static func run(_ executable: String, _ arguments: [String]) async -> (succeeded: Bool, output: String) {
        let command = SandboxCommand(
            executable: executable,
            arguments: [executable] + arguments,
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            timeout: .seconds(20),
            outputLimit: 16 * 1024
        )
        do throws(SandboxSpawnError) {
            let result = try await SandboxProcess(command).wait()
            let output = String(decoding: result.stdout + result.stderr, as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            return (result.termination == .exited(0) && result.killReason == nil, output)
        } catch {
            return (false, error.description)
        }
    }

    static func fileName(pid: Int32, start: UInt64) -> String { "\(pid).\(start).ledger" }

    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), nil if no such process.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)" come fields 3…; the start time is field 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }
}

/// The ledger could not be opened.
public struct SandboxLedgerError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
