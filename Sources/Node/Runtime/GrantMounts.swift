import Foundation
import HangarShared

/// A job's path grants as the mounts a sandbox needs on this host: the ``GrantSet`` mount plan
/// (shallow paths first; deny always wins), checked against the host. A granted path this host does
/// not have is left out (it does not exist in the sandbox either); a path that is a symlink, or runs
/// through one, is refused: a grant names a place, and a link could point it anywhere. Used by the
/// process runtime (bubblewrap binds) and the OCI runtimes (bind mounts in the bundle).
struct GrantMounts: Sendable, Hashable {
    struct Mount: Sendable, Hashable {
        var path: String
        var access: GrantSet.Access
        var isDirectory: Bool
    }

    let mounts: [Mount]

    /// No grants.
    static let none = GrantMounts(mounts: [])

    init(mounts: [Mount]) { self.mounts = mounts }

    /// The mounts for `grants` (as the scheduler sent them), or why this host cannot give them.
    init(_ grants: Hangar_V1_Grants) throws(GrantMountError) {
        guard grants.allowRead.count + grants.allowWrite.count > 0 else {
            mounts = []
            return
        }
        let set: GrantSet
        do {
            set = try GrantSet(grants)
        } catch {
            throw GrantMountError(message: "\(error.field): \(error.message)")
        }
        var mounts: [Mount] = []
        for planned in set.mountPlan() {
            var status = stat()
            guard lstat(planned.path, &status) == 0 else { continue }  // not on this host: absent
            guard let real = realpath(planned.path, nil) else { continue }
            let resolved = String(cString: real)
            free(real)
            guard resolved == planned.path else {
                throw GrantMountError(
                    message:
                        "granted path \(planned.path) is a symlink or runs through one on this node (to \(resolved))"
                )
            }
            let type = status.st_mode & S_IFMT
            guard type == S_IFDIR || type == S_IFREG else {
                throw GrantMountError(message: "granted path \(planned.path) is neither a directory nor a regular file")
            }
            mounts.append(Mount(path: planned.path, access: planned.access, isDirectory: type == S_IFDIR))
        }
        self.mounts = mounts
    }

    /// The bubblewrap arguments, after the sandbox's own mounts (and before its root is frozen).
    var bubblewrapArguments: [String] {
        mounts.flatMap { mount -> [String] in
            switch mount.access {
            case .read: ["--ro-bind", mount.path, mount.path]
            case .readWrite: ["--bind", mount.path, mount.path]
            case .none:
                mount.isDirectory
                    ? ["--tmpfs", mount.path, "--remount-ro", mount.path] : ["--ro-bind", "/dev/null", mount.path]
            }
        }
    }

    /// The mounts as the microvm guest agent reads them (`.hangar-grants` at a view's root, see
    /// ``GrantViews``): one record per mount in plan order (shallow first), its access (`r`, `w`, or
    /// `n` for a deny), its kind (`d` directory, `f` file), then its path, ended by a NUL byte.
    var manifest: Data {
        var data = Data()
        for mount in mounts {
            let access: Character =
                switch mount.access {
                case .read: "r"
                case .readWrite: "w"
                case .none: "n"
                }
            data.append(contentsOf: Array("\(access)\(mount.isDirectory ? "d" : "f")\(mount.path)".utf8) + [0])
        }
        return data
    }

    /// Refuses a grant inside a template directory that lacks it (its mount point cannot be made in
    /// a read-only template): `templateMounts` are the template's (source, destination) directories.
    func check(inside templateMounts: [(source: String, destination: String)]) throws(GrantMountError) {
        for mount in mounts {
            for (source, destination) in templateMounts where mount.path.hasPrefix(destination + "/") {
                let inTemplate = source + mount.path.dropFirst(destination.count)
                guard FileManager.default.fileExists(atPath: inTemplate) else {
                    throw GrantMountError(
                        message:
                            "granted path \(mount.path) lies in the template's \(destination), which has no such path"
                    )
                }
            }
        }
    }
}

/// Why a node cannot give a job its grants.
struct GrantMountError: Error, Sendable, Equatable {
    var message: String
}
