import CMountAPI
import Foundation
import Glibc

/// A stateful sandbox's own writable layer over a directory template: an overlayfs whose lower
/// layer is the template's `rootfs` and whose upper layer is a folder on the sandbox's size-limited
/// tmpfs, so a sandbox may change any file of its template (as the user that owns it there),
/// what it writes counts against its disk limit, and nothing reaches the template or another
/// sandbox. The node mounts it on the host before the sandbox starts; the sandbox binds the
/// merged tree's top-level entries read-write (``layout``) where a one-shot job binds the
/// template's read-only.
///
/// Ownership. The template's files belong to host root. Seen from a sandbox's user namespace,
/// which maps only the sandbox's own host ids, they would belong to nobody, and the sandbox's root
/// could change none of them. So the lower layer is an idmapped mount of the template
/// (`mount_setattr(MOUNT_ATTR_IDMAP)`) through a user namespace with the sandbox's own mapping:
/// a file the template's root owns shows as the sandbox's root; ids the mapping leaves out show as
/// nobody. gVisor sandboxes take no mapping (runsc's gofer serves the files as host root).
///
/// Folders, all inside `directory` (on the sandbox's tmpfs): `lower` (the idmapped template),
/// `upper` and `work` (overlayfs's), and `root` (the merged tree).
struct TemplateOverlay: Sendable {
    /// The merged tree: the sandbox's root filesystem.
    let root: String
    /// The merged tree's top-level entries, bound read-write.
    let layout: TemplateRootfs
    private let lower: String?

    /// What the overlay mounted, to unmount it later, also from a node that re-adopts the sandbox.
    struct Mounts: Codable, Sendable, Equatable {
        /// The merged tree.
        var root: String
        /// The idmapped template under it, if any.
        var lower: String?

        /// Unmounts the merged tree and the idmapped template. Returns what could not be
        /// unmounted, or nil.
        func unmount() -> String? {
            var problems: [String] = []
            for path in [root] + (lower.map { [$0] } ?? [])
            where umount2(path, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
                problems.append("cannot unmount \(path): \(String(cString: strerror(errno)))")
            }
            return problems.isEmpty ? nil : problems.joined(separator: "; ")
        }
    }

    /// What it mounted.
    var mounts: Mounts { Mounts(root: root, lower: lower) }

    /// Mounts the layer in `directory` (created here, on the sandbox's tmpfs) over the template at
    /// `rootfs`, and writes the sandbox's accounts there (``writeAccounts(uid:owner:resolver:)``,
    /// `user` with id `userID`; `resolver`: the sandbox has a resolver of its own). `owner` is the
    /// host uid and gid the sandbox's root is; `idmap` a user namespace (`/proc/PID/ns/user`)
    /// mapping template ids to the sandbox's, or nil to show them as they are.
    static func mount(
        template rootfs: String,
        in directory: String,
        owner: UInt32,
        idmap: String?,
        userID: UInt32,
        resolver: Bool
    ) throws(TemplateError) -> TemplateOverlay {
        let upper = directory + "/upper"
        let work = directory + "/work"
        let root = directory + "/root"
        let lower = idmap == nil ? nil : directory + "/lower"
        // The sandbox's ids must reach `root`; `upper` and `work` are overlayfs's alone.
        for (path, mode) in [(directory, 0o711), (upper, 0o755), (work, 0o700), (root, 0o755)]
            + (lower.map { [($0, 0o700)] } ?? [])
        {
            guard Glibc.mkdir(path, mode_t(mode)) == 0 || errno == EEXIST, chmod(path, mode_t(mode)) == 0 else {
                throw TemplateError.system("create", path)
            }
        }
        // The merged root directory is upper's: it belongs to the sandbox's root.
        guard chown(upper, owner, owner) == 0 else { throw TemplateError.system("chown", upper) }
        if let lower, let idmap {
            let error = hangar_mount_idmapped(rootfs, idmap, lower)
            guard error == 0 else {
                throw TemplateError(
                    "cannot mount the template \(rootfs) with the sandbox's ids (idmapped mounts need Linux 5.12 or later): \(String(cString: strerror(error)))"
                )
            }
        }
        let options = "lowerdir=\(lower ?? rootfs),upperdir=\(upper),workdir=\(work)"
        guard Glibc.mount("overlay", root, "overlay", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            let error = TemplateError.system("mount the writable layer (overlayfs) at", root)
            if let lower { umount2(lower, Int32(MNT_DETACH)) }
            throw error
        }
        func unmount() {
            umount2(root, Int32(MNT_DETACH))
            if let lower { umount2(lower, Int32(MNT_DETACH)) }
        }
        do throws(TemplateError) {
            try writeAccounts(in: root, uid: userID, owner: owner, resolver: resolver)
            return TemplateOverlay(root: root, layout: try TemplateRootfs(rootfs: root, writable: true), lower: lower)
        } catch {
            unmount()
            throw error
        }
    }

    /// Unmounts the merged tree and the idmapped template (the tmpfs holding them goes with the
    /// sandbox's scratch). Returns what could not be unmounted, or nil.
    func unmount() -> String? { mounts.unmount() }

    /// Writes the sandbox's `/etc` files into the merged tree at `root`, owned by `owner` (the sandbox's
    /// root): the template's `passwd` and `group` with the sandbox user (`user`, `uid`, home
    /// `/home/user`) in place of any account of that name or id, and ``SandboxEtc``'s `hosts`,
    /// `resolv.conf`, `nsswitch.conf` and `hostname`. No symlink is followed: a template whose
    /// `/etc` is one is refused.
    private static func writeAccounts(
        in root: String,
        uid: UInt32,
        owner: UInt32,
        resolver: Bool
    ) throws(TemplateError) {
        let etc = root + "/etc"
        if Glibc.mkdir(etc, 0o755) == 0 {
            guard chown(etc, owner, owner) == 0 else { throw TemplateError.system("chown", etc) }
        }
        let directory = open(etc, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard directory >= 0 else { throw TemplateError.system("open (not as a symlink)", etc) }
        defer { close(directory) }
        let shell = access(root + "/bin/bash", X_OK) == 0 ? "/bin/bash" : "/bin/sh"
        for (path, content) in SandboxEtc.files(uid: uid, gid: uid, resolver: resolver) {
            let name = String(path.dropFirst("/etc/".count))
            var text = String(decoding: content, as: UTF8.self)
            if name == "passwd" || name == "group" {
                text = accounts(
                    template: read(name, in: directory),
                    adding: name == "passwd"
                        ? "\(SandboxEtc.userName):x:\(uid):\(uid):\(SandboxEtc.userName):\(SandboxEtc.home):\(shell)"
                        : "\(SandboxEtc.userName):x:\(uid):",
                    id: uid,
                    fallbackRoot: name == "passwd" ? "root:x:0:0:root:/root:\(shell)" : "root:x:0:"
                )
            }
            // Replaced, not written through: the template's file may be a symlink.
            if unlinkat(directory, name, 0) != 0 && errno != ENOENT {
                throw TemplateError.system("replace", etc + "/" + name)
            }
            let file = openat(directory, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard file >= 0 else { throw TemplateError.system("create", etc + "/" + name) }
            defer { close(file) }
            let bytes = Array(text.utf8)
            guard bytes.withUnsafeBytes({ Glibc.write(file, $0.baseAddress, $0.count) }) == bytes.count,
                fchown(file, owner, owner) == 0
            else { throw TemplateError.system("write", etc + "/" + name) }
        }
    }

    /// The template's `passwd` or `group` lines without any entry named `user` or with id `id`,
    /// with `root` (`fallbackRoot` if it has none), then `entry`.
    static func accounts(template: String, adding entry: String, id: UInt32, fallbackRoot: String) -> String {
        var lines = template.split(separator: "\n", omittingEmptySubsequences: true).map(String.init).filter { line in
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            return fields.count > 2 && fields[0] != Substring(SandboxEtc.userName) && fields[2] != Substring(String(id))
        }
        if !lines.contains(where: { $0.hasPrefix("root:") }) { lines.insert(fallbackRoot, at: 0) }
        return (lines + [entry]).joined(separator: "\n") + "\n"
    }

    /// The regular file `name` of the directory `directory`, or "" (absent, a symlink, too big).
    private static func read(_ name: String, in directory: Int32) -> String {
        let file = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard file >= 0 else { return "" }
        defer { close(file) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(file, $0.baseAddress, $0.count) }
        return count > 0 && count < buffer.count ? String(decoding: buffer.prefix(count), as: UTF8.self) : ""
    }
}
