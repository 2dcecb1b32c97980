import Foundation
import Glibc

/// The stateful sandboxes a node holds that can outlive it (see ``ProcessSandbox`` and
/// ``ContainerSandbox``), one JSON file per sandbox in `<ledger directory>/sandboxes`, so that the
/// next node process on this host re-adopts them instead of sweeping them away. Written when a
/// sandbox has started, removed when it ends; an entry names the node process that holds the
/// sandbox, and only entries of node processes that no longer run (and of the same node id) are
/// re-adopted. Every sweep of the ledger directory spares the sandboxes listed here that still run.
struct SandboxRegistry: Sendable {
    /// One held sandbox.
    struct Entry: Codable, Sendable, Equatable {
        /// The scheduler's id of the sandbox.
        var sandboxID: String
        var nodeID: String
        var tenant: String
        /// Its commands' environment.
        var environment: [String: String]
        /// The node process holding it: pid and start time.
        var ownerPID: Int32
        var ownerStart: UInt64
        /// When the node kills it at the latest (its timeout plus the grace), in unix milliseconds;
        /// nil: no timeout of the node's.
        var deadlineUnixMs: Int64?
        /// A `process` sandbox's state, a `container` (`gvisor`) sandbox's or a `microvm` one's (one
        /// of the three).
        var sandbox: ProcessSandbox.Saved?
        var container: ContainerSandbox.Saved?
        var microvm: MicroVMSandbox.Saved?

        /// The sandbox's first host process, whose life is the sandbox's: bubblewrap, the
        /// container's init, or qemu.
        var leader: (pid: Int32, start: UInt64)? {
            if let sandbox { return (sandbox.leaderPID, sandbox.leaderStart) }
            if let container { return (container.agentPID, container.agentStart) }
            if let microvm { return (microvm.qemuPID, microvm.qemuStart) }
            return nil
        }

        /// What the node's ledger lists for the sandbox.
        var resources: [SandboxLedger.Resource] {
            (sandbox?.resources ?? []) + (container?.resources ?? []) + (microvm?.resources ?? [])
        }
    }

    /// Where the entries are.
    let directory: String

    /// The registry next to `ledger`'s files.
    init(ledger: SandboxLedger) {
        directory = ledger.directory + "/sandboxes"
    }

    /// The registry in `directory`.
    init(directory: String) {
        self.directory = directory
    }

    /// Writes `entry` (whole: a new file renamed over the old one, so a crash leaves one or the
    /// other). Returns why not, or nil. Plain system calls on the node's tmpfs: it is on every
    /// sandbox's create path (Foundation's atomic write took about 1 ms here).
    @discardableResult
    func save(_ entry: Entry) -> String? {
        guard let data = try? JSONEncoder().encode(entry) else { return "the entry cannot be encoded" }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            return "cannot create \(directory): \(String(cString: strerror(errno)))"
        }
        let target = path(entry.sandboxID)
        let temporary = target + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return "cannot write \(temporary): \(String(cString: strerror(errno)))" }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == data.count, rename(temporary, target) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(temporary)
            return "cannot write \(target): \(why)"
        }
        return nil
    }

    /// Forgets the sandbox `sandboxID` (it ended).
    func remove(_ sandboxID: String) {
        unlink(path(sandboxID))
    }

    /// The entries of node `nodeID` whose node process no longer runs.
    func orphans(of nodeID: String) -> [Entry] {
        entries().map(\.entry).filter { entry in
            entry.nodeID == nodeID && SandboxLedger.startTime(of: entry.ownerPID) != entry.ownerStart
        }
    }

    /// The ledger resources of every registered sandbox (of any node id) that still runs: held by
    /// a node process, or left for its node to re-adopt; no sweep takes them down. (Several nodes
    /// may share a ledger directory, and sweep it at the same time.) An entry whose sandbox and
    /// node process have both ended is deleted.
    func stillRunning() -> Set<SandboxLedger.Resource> {
        var resources: Set<SandboxLedger.Resource> = []
        for (file, entry) in entries() {
            if let leader = entry.leader, SandboxLedger.startTime(of: leader.pid) == leader.start {
                resources.formUnion(entry.resources)
            } else if SandboxLedger.startTime(of: entry.ownerPID) != entry.ownerStart {
                unlink(file)
            }
        }
        return resources
    }

    /// Every entry with its file, by sandbox id; an unreadable one is deleted (its sandbox is then
    /// left to the sweep).
    private func entries() -> [(file: String, entry: Entry)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var entries: [(file: String, entry: Entry)] = []
        for name in names.sorted() where name.hasSuffix(".json") {
            let file = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: file),
                let entry = try? JSONDecoder().decode(Entry.self, from: data),
                name == entry.sandboxID + ".json"
            else {
                unlink(file)
                continue
            }
            entries.append((file, entry))
        }
        return entries
    }

    private func path(_ sandboxID: String) -> String { directory + "/" + sandboxID + ".json" }
}
