import Foundation
import Glibc

/// A granted job's (or sandbox's) host paths, shared into its VM: the grant set's view
/// (``GrantViews``: the granted paths bound read-only or read-write on a small tmpfs, denies
/// hidden, and a manifest of the mounts at its root) served by a `virtiofsd` of the VM's own, which
/// qemu reaches through a `vhost-user-fs-device` tagged ``tag``. In the guest the agent mounts the
/// share and binds each mount of the manifest at its own path (`Sources/GuestAgent/share.c`).
///
/// `virtiofsd` acts for the guest with its own credentials, so it does not run as host root: it
/// runs as root of a user namespace that maps ids 0-65535 onto host ids 100000-165535 (as
/// containers do, ``OCIUserNamespace/standard``), owned by a host uid of its own. What the guest
/// creates belongs to those host ids (its uid 65534 is host 165534), and on host files the daemon
/// has no more rights than any unprivileged user: a guest, even one whose kernel is taken over,
/// cannot read a host file that is not readable by others, write one that is not writable by
/// others, or leave a set-uid-root file behind. In its own namespaces (`-o sandbox=namespace`) the
/// view is its root, so nothing beyond the view is reachable; the view's read-only binds and
/// hidden denies hold whatever the guest asks.
///
/// The daemon gets a listening socket the node made, so qemu can connect at once; it exits when
/// qemu's connection ends, and ``stop()`` kills it in any case.
///
/// A sandbox's share outlives its node as its VM does: the daemon serves qemu on, and the next
/// node process re-adopts it from its ``Saved`` state (``adopt(_:views:users:)``), to take it down
/// with its VM. (The namespace's holder ends with the node; the daemon keeps the namespace.)
struct MicroVMShare: Sendable {
    /// The virtiofs tag the guest mounts.
    static let tag = "hangar-grants"
    /// Where the daemons' sockets are made, one private directory each.
    static let socketRoot = "/run/hangar-virtiofs"

    /// How guest ids map onto host ids for the daemon.
    static let mapping = OCIUserNamespace.standard
    private static let nsenterPath = "/usr/bin/nsenter"

    let socketPath: String
    private let directory: String
    private let daemon: ProcessSandbox.Leader
    private let view: View
    private let views: GrantViews
    /// The daemon's user namespace (its holder process); nil for a re-adopted share.
    private let namespace: OwnedUserNamespace?
    /// The host uid that owns it.
    private let owner: UInt32
    private let users: SandboxUsers
    private let ledger: SandboxLedger

    /// The view the daemon serves.
    private enum View: Sendable {
        /// Lent by this node's ``GrantViews``.
        case lease(GrantViews.Lease)
        /// Made by a node process before this one: taken down with the share.
        case adopted(path: String)

        var path: String {
            switch self {
            case .lease(let lease): lease.path
            case .adopted(let path): path
            }
        }
    }

    /// What the node's registry keeps of a share whose sandbox outlives its node.
    struct Saved: Codable, Sendable, Equatable {
        /// The daemon's socket directory.
        var directory: String
        /// The daemon's pid and start time.
        var daemonPID: Int32
        var daemonStart: UInt64
        /// The view it serves.
        var view: String
        /// The host uid owning its user namespace.
        var owner: UInt32

        /// What the node's ledger lists for it: kept (not swept) when it is re-adopted.
        var resources: [SandboxLedger.Resource] {
            [.process(pid: daemonPID, start: daemonStart), .socket(path: directory + "/fs.sock"), .scratch(path: view)]
        }
    }

    /// What the node's registry keeps of it; nil once the daemon has ended.
    var saved: Saved? {
        guard let pid = daemon.pid, let start = SandboxLedger.startTime(of: pid) else { return nil }
        if case .adopted(_, let saved) = daemon, saved != start { return nil }
        return Saved(directory: directory, daemonPID: pid, daemonStart: start, view: view.path, owner: owner)
    }

    /// Re-adopts the share a node process before this one started (``Saved``): claims its owner
    /// uid from `users`. Fails, claiming nothing, when its daemon is gone.
    static func adopt(
        _ saved: Saved,
        views: GrantViews,
        users: SandboxUsers
    ) -> Result<MicroVMShare, MicroVMError> {
        guard SandboxLedger.startTime(of: saved.daemonPID) == saved.daemonStart else {
            return .failure(MicroVMError("its virtiofs daemon (pid \(saved.daemonPID)) is gone"))
        }
        guard users.claim(saved.owner) else {
            return .failure(MicroVMError("its share's host uid \(saved.owner) is not free on this node"))
        }
        return .success(
            MicroVMShare(
                socketPath: saved.directory + "/fs.sock",
                directory: saved.directory,
                daemon: .adopted(pid: saved.daemonPID, start: saved.daemonStart),
                view: .adopted(path: saved.view),
                views: views,
                namespace: nil,
                owner: saved.owner,
                users: users,
                ledger: views.ledger
            )
        )
    }

    /// Shares `mounts` for one VM: makes (or reuses) their view and starts `virtiofsd` on it, in a
    /// user namespace owned by a uid of `users`.
    static func start(
        _ mounts: GrantMounts,
        virtiofsd: String,
        views: GrantViews,
        users: SandboxUsers,
        ledger: SandboxLedger,
        lifetime: Duration
    ) async throws(MicroVMError) -> MicroVMShare {
        guard geteuid() == 0 else { throw MicroVMError("host path grants in microVMs need the node to run as root") }
        guard access(virtiofsd, X_OK) == 0 else {
            throw MicroVMError("host path grants in microVMs need virtiofsd, not found at \(virtiofsd)")
        }
        guard let owner = users.acquire() else {
            throw MicroVMError("all \(users.count) sandbox users are in use (one serves a VM's grants)")
        }
        guard let lease = views.acquire(mounts) else {
            users.release(owner)
            throw MicroVMError("cannot prepare the view of the granted paths under \(views.root)")
        }
        var directory: String?
        func undo() {
            if let directory {
                try? FileManager.default.removeItem(atPath: directory)
                ledger.gone(.socket(path: directory + "/fs.sock"))
            }
            views.release(lease)
            users.release(owner)
        }
        let listener: Int32
        let namespace: OwnedUserNamespace
        do throws(MicroVMError) {
            let made = try makeDirectory()
            directory = made
            ledger.made(.socket(path: made + "/fs.sock"))
            listener = try listen(at: made + "/fs.sock")
        } catch {
            undo()
            throw error
        }
        defer { close(listener) }
        do {
            namespace = try await OwnedUserNamespace.create(owner: owner, mapping: mapping, ledger: ledger)
        } catch {
            undo()
            throw MicroVMError("cannot make virtiofsd's user namespace: \(error.description)")
        }
        // nsenter joins the namespace and becomes its root (host 100000) before it execs the
        // daemon, which so keeps its capabilities there and nowhere else.
        let command = SandboxCommand(
            executable: nsenterPath,
            arguments: [
                "nsenter", "--user=\(namespace.path)", "--setuid=0", "--setgid=0", "--", virtiofsd, "--fd=3",
                "-o", "source=\(lease.path)", "-o", "cache=none", "-o", "sandbox=namespace", "-o", "log_level=warn",
                "--thread-pool-size=2",
            ],
            timeout: lifetime,
            outputLimit: 64 << 10,
            inheritedFiles: [listener],
            drainTimeout: .seconds(1),
            ledger: ledger
        )
        // The holder stays until the daemon ends: nsenter may open its namespace any time after
        // the spawn.
        let spawned = Result { () throws(SandboxSpawnError) in try SandboxProcess(command) }
        switch spawned {
        case .success(let daemon):
            return MicroVMShare(
                socketPath: (directory ?? "") + "/fs.sock",
                directory: directory ?? "",
                daemon: .child(daemon),
                view: .lease(lease),
                views: views,
                namespace: namespace,
                owner: owner,
                users: users,
                ledger: ledger
            )
        case .failure(let error):
            await namespace.remove()
            undo()
            throw MicroVMError("cannot start virtiofsd: \(error.description)")
        }
    }

    /// Kills the daemon (its VM has ended), removes its socket and gives the view and the uid
    /// back; what the daemon said, when it failed, for messages.
    func stop() async -> String? {
        daemon.kill()
        await daemon.wait()
        let result: SandboxResult?
        switch daemon {
        case .child(let process): result = try? await process.wait()
        case .adopted(let pid, let start):
            result = nil
            if daemon.hasEnded { ledger.gone(.process(pid: pid, start: start)) }
        }
        await namespace?.remove()
        try? FileManager.default.removeItem(atPath: directory)
        ledger.gone(.socket(path: socketPath))
        switch view {
        case .lease(let lease): views.release(lease)
        case .adopted(let path): views.takeDown(path)
        }
        users.release(owner)
        guard let result else { return nil }
        let said = String(decoding: result.stderr + result.stdout, as: UTF8.self)
            .split(separator: "\n").suffix(3).joined(separator: " | ")
        return said.isEmpty ? nil : said
    }

    /// A new root-only directory under ``socketRoot``.
    private static func makeDirectory() throws(MicroVMError) -> String {
        if mkdir(socketRoot, 0o700) != 0 && errno != EEXIST {
            throw MicroVMError("cannot create \(socketRoot): \(String(cString: strerror(errno)))")
        }
        let path = socketRoot + "/" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        guard mkdir(path, 0o700) == 0 else {
            throw MicroVMError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        return path
    }

    /// A unix stream socket listening at `path`.
    private static func listen(at path: String) throws(MicroVMError) -> Int32 {
        switch UnixSocket.listen(at: path) {
        case .success(let fd): return fd
        case .failure(let error): throw MicroVMError(error.description)
        }
    }
}
