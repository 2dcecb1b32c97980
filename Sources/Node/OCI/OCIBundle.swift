import Foundation
import Glibc
import HangarShared

/// One job's OCI bundle on disk: `<base>/<container id>/config.json` and `rootfs/`, a skeleton of
/// empty mount points and merged-/usr symlinks (the host directories are bound over it read-only by
/// the runtime), plus the job's files below `rootfs/tmp` for the runtime to copy into the tmpfs.
///
/// The bundle directory is 0700. With a user namespace it belongs to the container's root as the
/// host sees it, since runc sets up the root filesystem as that user; the base directory is then
/// 0711 so that user can pass through it without listing other jobs' bundles.
struct OCIBundle: Sendable {
    /// Absolute path of the bundle directory.
    let path: String
    /// Where the bundle's own root tmpfs is noted while it is mounted.
    let ledger: SandboxLedger?

    /// Writes the bundle for `config` as `<base>/<name>`, noting its root tmpfs in `ledger`.
    init(
        base: String,
        name: String,
        config: OCIJobConfig,
        userNamespace: OCIUserNamespace?,
        ledger: SandboxLedger?
    ) throws(OCIRuntimeError) {
        try Self.makeBase(base, traversable: userNamespace != nil)
        path = base + "/" + name
        self.ledger = ledger
        guard mkdir(path, 0o700) == 0 else { throw .system("create bundle directory", path) }
        do {
            try Self.populate(path, config: config, ledger: ledger)
            if let userNamespace {
                try Self.chown(path, userNamespace.hostID, userNamespace.hostID)
            }
        } catch {
            _ = remove()
            throw error
        }
    }

    /// The bundle at `path` that a node process before this one wrote (a re-adopted sandbox's).
    init(adopting path: String, ledger: SandboxLedger?) {
        self.path = path
        self.ledger = ledger
    }

    /// Deletes the bundle. Refuses, and says so, if anything is still mounted below it, which would
    /// otherwise delete the host files seen through that mount.
    func remove() -> String? {
        let rootfs = path + "/rootfs"
        if Self.mountPoints().contains(rootfs) {
            guard umount2(rootfs, Int32(MNT_DETACH)) == 0 else {
                return "bundle \(path) not removed: cannot unmount \(rootfs): \(String(cString: strerror(errno)))"
            }
            ledger?.gone(.scratch(path: rootfs))
        }
        if let mount = Self.mountPoints().first(where: { $0 == path || $0.hasPrefix(path + "/") }) {
            return "bundle \(path) not removed: \(mount) is still mounted"
        }
        do {
            try FileManager.default.removeItem(atPath: path)
            return nil
        } catch  where !FileManager.default.fileExists(atPath: path) {
            return nil  // removed already (a re-adopted sandbox's, by the node that killed it)
        } catch {
            return "cannot remove bundle \(path): \(error.localizedDescription)"
        }
    }

    private static func makeBase(_ base: String, traversable: Bool) throws(OCIRuntimeError) {
        var current = ""
        let components = base.pathComponents()
        for (index, component) in components.enumerated() {
            current += "/" + component
            let last = index == components.count - 1
            if mkdir(current, last ? 0o700 : 0o755) != 0 && errno != EEXIST {
                throw .system("create directory", current)
            }
        }
        guard chmod(base, traversable ? 0o711 : 0o700) == 0 else { throw .system("chmod", base) }
    }

    private static func populate(
        _ bundle: String,
        config: OCIJobConfig,
        ledger: SandboxLedger?
    ) throws(OCIRuntimeError) {
        let rootfs = bundle + "/rootfs"
        guard mkdir(rootfs, 0o755) == 0, chmod(rootfs, 0o755) == 0 else { throw .system("create", rootfs) }
        try mountOwnRoot(rootfs, config: config, ledger: ledger)
        // With a host scratch, what belongs below /tmp goes there instead of into rootfs/tmp.
        func place(_ relative: String) -> String {
            if let scratch = config.hostScratch, relative.hasPrefix("tmp/") { return scratch + relative.dropFirst(3) }
            return rootfs + "/" + relative
        }
        for entry in config.rootfs {
            switch entry {
            case .directory(let relative, let mode):
                let path = place(relative)
                guard mkdir(path, mode_t(mode)) == 0, chmod(path, mode_t(mode)) == 0 else {
                    throw .system("create directory", path)
                }
                if relative.hasPrefix("tmp/") {
                    try chown(path, config.scratchOwner.uid, config.scratchOwner.gid)
                }
            case .file(let relative):
                let path = rootfs + "/" + relative
                let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw .system("create mount point", path) }
                close(fd)
            case .symlink(let relative, let target):
                let path = rootfs + "/" + relative
                guard symlink(target, path) == 0 else { throw .system("create symlink", path) }
            case .content(let relative, let content):
                try write(content, to: rootfs + "/" + relative, mode: 0o644)
            }
        }
        for file in config.scratchFiles {
            let path = place(file.path)
            try write(file.content, to: path, mode: file.mode)
            try chown(path, config.scratchOwner.uid, config.scratchOwner.gid)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json: Data
        do {
            json = try encoder.encode(config.spec)
        } catch {
            throw OCIRuntimeError("cannot encode config.json: \(error)")
        }
        try write(json, to: bundle + "/config.json", mode: 0o600)
    }

    /// Makes `rootfs` a small tmpfs of its own (when the node may mount): the container's root is
    /// then the root of a file system, so its `/proc/self/mountinfo` shows `/` for it rather than
    /// the bundle's path on the host. Sized for what goes into it: mount points, the synthetic
    /// `/etc` and the job's files staged below `tmp`.
    private static func mountOwnRoot(
        _ rootfs: String,
        config: OCIJobConfig,
        ledger: SandboxLedger?
    ) throws(OCIRuntimeError) {
        guard geteuid() == 0 else { return }
        var bytes = config.scratchFiles.reduce(UInt64(4 << 20)) { $0 + UInt64($1.content.count) + 4096 }
        for case .content(_, let content) in config.rootfs { bytes += UInt64(content.count) + 4096 }
        let options = "mode=755,size=\(bytes),nr_inodes=\(config.rootfs.count + config.scratchFiles.count + 1024)"
        guard mount("tmpfs", rootfs, "tmpfs", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            throw .system("mount a tmpfs on", rootfs)
        }
        ledger?.made(.scratch(path: rootfs))
    }

    private static func write(_ content: Data, to path: String, mode: UInt16) throws(OCIRuntimeError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(mode))
        guard fd >= 0 else { throw .system("create", path) }
        defer { close(fd) }
        let complete = Descriptor.writeAll(fd, content)
        guard complete else { throw .system("write", path) }
        guard fchmod(fd, mode_t(mode)) == 0 else { throw .system("chmod", path) }
    }

    private static func chown(_ path: String, _ uid: UInt32, _ gid: UInt32) throws(OCIRuntimeError) {
        guard lchown(path, uid, gid) == 0 else { throw .system("chown", path) }
    }

    /// Mount points of the node's mount namespace, from `/proc/self/mountinfo`.
    private static func mountPoints() -> [String] {
        guard let text = CgroupFile.read("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            return unescapeMountPath(String(fields[4]))
        }
    }

    /// mountinfo writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
    private static func unescapeMountPath(_ escaped: String) -> String {
        var bytes: [UInt8] = []
        let raw = Array(escaped.utf8)
        var index = 0
        while index < raw.count {
            if raw[index] == UInt8(ascii: "\\"), index + 3 < raw.count,
                let value = UInt8(String(decoding: raw[(index + 1)...(index + 3)], as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(raw[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
