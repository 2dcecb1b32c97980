import Foundation
import Glibc
import Synchronization

/// Prepared mount trees of grant sets, so that a `process` job's grants cost bubblewrap one bind
/// instead of one per granted path.
///
/// bubblewrap reads `/proc/self/mountinfo` again for every bind it makes (to remount what lies
/// below it), so ten grants cost a cold job about 2 ms more than none. A view is a small tmpfs on
/// the host (private: nothing in it propagates) holding the grant set's mounts at their own paths:
/// each granted host path bound read-only or read-write (not recursively: a host mount below a
/// granted path is not shown), each denied one hidden by an empty read-only tmpfs (a directory) or
/// `/dev/null` (a file). The tmpfs is then made read-only, and a job binds each top-level directory
/// of the view (`/srv`, `/data`, ...) once. What the job sees is what the per-path binds give it.
///
/// Views are shared by the jobs with the same grant set and counted; while their node runs (its
/// ledger is open) an unused view lingers for ``linger`` so that the next job with those grants
/// finds it ready, otherwise it is taken down with its last job. A view is used only while every
/// granted path is still the file or directory it was made from (same device and inode); else the
/// job gets per-path binds. Views are noted in the node's ledger like a job's scratch (a crashed
/// node's are swept) and taken down when the node stops (``drain()``).
///
/// A view is also what a `microvm` guest gets of its grants: its root holds a manifest of the
/// mounts (``manifestName``, see ``GrantMounts/manifest``) and a `virtiofsd` shares the whole view
/// (``MicroVMShare``); any grant set can have one for that, whatever ``eligible(_:template:)`` says.
public final class GrantViews: Sendable {
    /// The file at a view's root listing its mounts (``GrantMounts/manifest``), for microvm guests.
    public static let manifestName = ".hangar-grants"
    /// Where views are made.
    public static let defaultRoot = "/run/hangar-grant-views"
    /// How long an unused view is kept while its node runs.
    public static let linger = Duration.seconds(60)
    /// Top-level directories that a job's sandbox has of its own (the host's system directories,
    /// its scratch, `/proc`, `/dev`, the node's binds under `/run`): a grant under one of them gets
    /// per-path binds.
    static let sandboxTopLevels: Set<String> = [
        "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "tmp", "proc", "dev", "run", "sys",
    ]

    let root: String
    let ledger: SandboxLedger
    private let views = Mutex<[GrantMounts: View]>([:])

    /// A made view and who uses it.
    private struct View {
        var path: String
        var users = 0
        /// Bumped when the view is taken up again, so that an older linger timer leaves it alone.
        var generation = 0
        /// Each mounted host path's (device, inode) when the view was made.
        var identities: [String: (dev_t, ino_t)]
    }

    /// Views made under `root`, noted in `ledger`.
    public init(root: String = defaultRoot, ledger: SandboxLedger) {
        self.root = root
        self.ledger = ledger
    }

    /// A view lent to one job: the bubblewrap arguments that bind it.
    struct Lease: Sendable {
        let mounts: GrantMounts
        let path: String
        /// `--bind VIEW/TOP /TOP` for each top-level directory of the grants.
        var bubblewrapArguments: [String] {
            Set(mounts.mounts.compactMap { GrantViews.topLevel($0.path) }).sorted().flatMap {
                ["--bind", path + "/" + $0, "/" + $0]
            }
        }
    }

    /// The first component of an absolute path.
    static func topLevel(_ path: String) -> String? {
        path.split(separator: "/").first.map(String.init)
    }

    /// Whether `mounts` can be given by a view: something to mount, a node running as root, no
    /// directory template (it has top-level directories of its own), and no grant under a
    /// top-level directory the sandbox has of its own.
    static func eligible(_ mounts: GrantMounts, template: TemplateRootfs?) -> Bool {
        !mounts.mounts.isEmpty && geteuid() == 0 && template == nil
            && mounts.mounts.allSatisfy { mount in
                guard let top = topLevel(mount.path) else { return false }
                return !sandboxTopLevels.contains(top)
            }
    }

    /// The view of `mounts` for one job (made now if there is none), or nil when there cannot be
    /// one (then the job binds each path itself). Give it back with ``release(_:)``.
    func acquire(_ mounts: GrantMounts) -> Lease? {
        views.withLock { views -> Lease? in
            if var view = views[mounts] {
                if view.users > 0 || Self.unchanged(view.identities) {
                    view.users += 1
                    view.generation += 1
                    views[mounts] = view
                    return Lease(mounts: mounts, path: view.path)
                }
                // A granted path was replaced since: this view is stale.
                takeDown(view.path)
                views[mounts] = nil
            }
            guard let made = make(mounts) else { return nil }
            views[mounts] = View(path: made.path, users: 1, identities: made.identities)
            return Lease(mounts: mounts, path: made.path)
        }
    }

    /// Gives a view back: with its last user it lingers (while the node runs) or is taken down.
    func release(_ lease: Lease) {
        let lingering: Int? = views.withLock { views in
            guard var view = views[lease.mounts], view.path == lease.path else { return nil }
            view.users -= 1
            guard view.users == 0 else {
                views[lease.mounts] = view
                return nil
            }
            guard ledger.isOpen else {
                takeDown(view.path)
                views[lease.mounts] = nil
                return nil
            }
            view.generation += 1
            views[lease.mounts] = view
            return view.generation
        }
        guard let generation = lingering else { return }
        Task { [self] in
            try? await Task.sleep(for: Self.linger)
            views.withLock { views in
                guard let view = views[lease.mounts], view.users == 0, view.generation == generation else { return }
                takeDown(view.path)
                views[lease.mounts] = nil
            }
        }
    }

    /// Takes down every view no job uses (at the node's stop, before its ledger closes).
    public func drain() {
        views.withLock { views in
            for (mounts, view) in views where view.users == 0 {
                takeDown(view.path)
                views[mounts] = nil
            }
        }
    }

    /// How many views exist (tests).
    var count: Int { views.withLock { $0.count } }

    /// Whether every path still is what it was.
    private static func unchanged(_ identities: [String: (dev_t, ino_t)]) -> Bool {
        identities.allSatisfy { path, identity in
            var status = stat()
            return lstat(path, &status) == 0 && status.st_dev == identity.0 && status.st_ino == identity.1
        }
    }

    /// Makes a view of `mounts`; nil (with nothing left behind) when any step fails.
    private func make(_ mounts: GrantMounts) -> (path: String, identities: [String: (dev_t, ino_t)])? {
        var current = ""
        for component in root.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o711) != 0 && errno != EEXIST { return nil }
        }
        let path = root + "/view-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        guard mkdir(path, 0o755) == 0 else { return nil }
        let flags = UInt(MS_NOSUID | MS_NODEV)
        guard mount("tmpfs", path, "tmpfs", flags, "size=64k,nr_inodes=1024,mode=0755") == 0 else {
            rmdir(path)
            return nil
        }
        ledger.made(.scratch(path: path))
        // Private first: the binds below must not propagate to the host's other namespaces.
        guard mount(nil, path, nil, UInt(MS_PRIVATE), nil) == 0 else {
            takeDown(path)
            return nil
        }
        var identities: [String: (dev_t, ino_t)] = [:]
        var mounted: [String] = []
        for grant in mounts.mounts {
            let target = path + grant.path
            // A mount point under an earlier mount is the host's own entry (it exists there, or the
            // grant was left out); only those on the view's tmpfs are made here.
            let insideEarlier = mounted.contains { grant.path.hasPrefix($0 + "/") }
            if !insideEarlier && !Self.makeMountPoint(target, directory: grant.isDirectory) {
                takeDown(path)
                return nil
            }
            var status = stat()
            guard lstat(grant.path, &status) == 0 else {
                takeDown(path)
                return nil
            }
            // A bind remount sets every flag: keep those the host's mount has (noexec, ro, atime).
            let kept = Self.keptFlags(of: grant.path) | flags
            let done: Bool
            switch grant.access {
            case .read:
                done =
                    mount(grant.path, target, nil, UInt(MS_BIND), nil) == 0
                    && mount(nil, target, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY) | kept, nil) == 0
            case .readWrite:
                done =
                    mount(grant.path, target, nil, UInt(MS_BIND), nil) == 0
                    && mount(nil, target, nil, UInt(MS_BIND | MS_REMOUNT) | kept, nil) == 0
            case .none:
                done =
                    grant.isDirectory
                    ? mount("tmpfs", target, "tmpfs", UInt(MS_RDONLY) | flags, "size=4k,nr_inodes=16,mode=0755") == 0
                    : mount("/dev/null", target, nil, UInt(MS_BIND), nil) == 0
                        && mount(nil, target, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY) | flags, nil) == 0
            }
            guard done else {
                takeDown(path)
                return nil
            }
            identities[grant.path] = (status.st_dev, status.st_ino)
            mounted.append(grant.path)
        }
        // What a microvm guest mounts from the view (jobs of the other runtimes bind its top-level
        // directories only, so they never see this file).
        let manifest = path + "/" + Self.manifestName
        let fd = open(manifest, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        let data = mounts.manifest
        let written = fd >= 0 && data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == data.count
        if fd >= 0 { close(fd) }
        guard written else {
            takeDown(path)
            return nil
        }
        // Nothing may be written on the view itself (it is shared by every job with these grants).
        guard mount(nil, path, nil, UInt(MS_REMOUNT | MS_RDONLY) | flags, "size=64k,nr_inodes=1024,mode=0755") == 0
        else {
            takeDown(path)
            return nil
        }
        return (path, identities)
    }

    /// The flags of the host mount that `path` lies on that a bind of it keeps.
    private static func keptFlags(of path: String) -> UInt {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return 0 }
        // statvfs's ST_* bits (Linux's values; glibc declares most only under _GNU_SOURCE).
        let pairs: [(UInt, UInt)] = [
            (1, UInt(MS_RDONLY)), (8, UInt(MS_NOEXEC)), (1024, UInt(MS_NOATIME)), (2048, UInt(MS_NODIRATIME)),
            (4096, UInt(MS_RELATIME)),
        ]
        return pairs.reduce(UInt(0)) { flags, pair in info.f_flag & pair.0 != 0 ? flags | pair.1 : flags }
    }

    /// Makes the directories down to `target` on the view's tmpfs, and `target` itself (a
    /// directory, or an empty file to bind a file on).
    private static func makeMountPoint(_ target: String, directory: Bool) -> Bool {
        var current = ""
        let components = target.split(separator: "/")
        for (index, component) in components.enumerated() {
            current += "/" + component
            let last = index == components.count - 1
            if last && !directory {
                let fd = open(current, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
                guard fd >= 0 else { return false }
                close(fd)
            } else if mkdir(current, 0o755) != 0 && errno != EEXIST {
                return false
            }
        }
        return true
    }

    /// Unmounts a view with everything in it and removes its mount point.
    /// Unmounts and removes the view at `path` (one of this node's, or one a node before it made
    /// for a sandbox it re-adopted).
    func takeDown(_ path: String) {
        if umount2(path, Int32(MNT_DETACH)) == 0 || errno == EINVAL || errno == ENOENT {
            if rmdir(path) == 0 || errno == ENOENT { ledger.gone(.scratch(path: path)) }
        }
    }
}
