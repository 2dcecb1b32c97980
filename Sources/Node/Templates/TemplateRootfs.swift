import Foundation
import HangarShared

/// How a directory template's root filesystem becomes a sandbox's root: each top-level entry of
/// `rootfs/` is bound read-only at the same place (directories and files) or recreated (symlinks,
/// e.g. merged-/usr `bin -> usr/bin`), exactly like the host template binds the host's `/usr`,
/// `/lib*` and `/etc` files. The sandbox's own `/proc`, `/dev`, `/sys` and `/tmp` are left out, so a
/// template needs no mount points and is never written to.
struct TemplateRootfs: Sendable, Equatable {
    /// One top-level entry of the root filesystem.
    enum Entry: Sendable, Equatable {
        /// `source` (absolute, in the template) bound read-only at `destination` (`/usr`).
        case directory(source: String, destination: String)
        case file(source: String, destination: String)
        case symlink(target: String, destination: String)
    }

    /// Top-level names the sandbox provides itself.
    static let provided: Set<String> = ["proc", "dev", "sys", "tmp"]

    /// Absolute path of the template's root filesystem.
    let rootfs: String
    let entries: [Entry]
    /// Whether directories and files are bound read-write: a stateful sandbox's own writable
    /// layer (``TemplateOverlay``), never a template itself.
    let writable: Bool

    /// The template's directories: where each is (`source`) and where the sandbox sees it.
    var directoryMounts: [(source: String, destination: String)] {
        entries.compactMap {
            guard case .directory(let source, let destination) = $0 else { return nil }
            return (source, destination)
        }
    }

    /// The layout of the root filesystem at `rootfs`, entries sorted by name. Sockets, FIFOs and
    /// devices at the top level are skipped. `writable`: bound read-write (see ``writable``).
    init(rootfs: String, writable: Bool = false) throws(TemplateError) {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: rootfs).sorted()
        } catch {
            throw TemplateError("cannot list the template root \(rootfs): \(error.localizedDescription)")
        }
        var entries: [Entry] = []
        for name in names where !Self.provided.contains(name) {
            let source = rootfs + "/" + name
            let destination = "/" + name
            var info = stat()
            guard lstat(source, &info) == 0 else { throw TemplateError.system("stat", source) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR: entries.append(.directory(source: source, destination: destination))
            case S_IFREG: entries.append(.file(source: source, destination: destination))
            case S_IFLNK:
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: source) else {
                    throw TemplateError.system("readlink", source)
                }
                entries.append(.symlink(target: target, destination: destination))
            default: continue
            }
        }
        self.rootfs = rootfs
        self.entries = entries
        self.writable = writable
    }

    /// `bwrap` arguments that build this root.
    var bubblewrapArguments: [String] {
        entries.flatMap { entry -> [String] in
            switch entry {
            case .directory(let source, let destination), .file(let source, let destination):
                [writable ? "--bind" : "--ro-bind", source, destination]
            case .symlink(let target, let destination):
                ["--symlink", target, destination]
            }
        }
    }

    /// Whether `path` (absolute, outside `/tmp`) is a directory the sandbox shows: the root, a
    /// kernel file system, or a directory of the template (symlinks resolved inside the template).
    func isDirectory(_ path: String) -> Bool {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        if ["/", "/proc", "/dev", "/sys"].contains(trimmed)
            || ["/proc/", "/dev/", "/sys/"].contains(where: trimmed.hasPrefix)
        {
            return true
        }
        var isDirectory: ObjCBool = false
        let resolved = URL(fileURLWithPath: rootfs + path).resolvingSymlinksInPath().path
        guard resolved == rootfs || resolved.hasPrefix(rootfs + "/") else { return false }
        return FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}

extension Template {
    /// The template a job asks for, from `store` (nil: only `host` exists), and the job with the
    /// template's default environment under its own.
    static func resolve(
        _ spec: Hangar_V1_JobSpec,
        in store: TemplateStore?
    ) throws(TemplateError) -> (template: Template, spec: Hangar_V1_JobSpec) {
        let name = spec.template.isEmpty ? TemplateName.host : spec.template
        guard name != TemplateName.host else { return (.host, spec) }
        guard let store else {
            throw TemplateError("template '\(name)' is not on this node (it has no template store)")
        }
        let template = try store.template(named: name)
        var resolved = spec
        resolved.env = template.env.merging(spec.env) { _, job in job }
        return (template, resolved)
    }

    /// The layout of a directory template's root; nil for `host`.
    func layout() throws(TemplateError) -> TemplateRootfs? {
        guard let rootfs else { return nil }
        return try TemplateRootfs(rootfs: rootfs)
    }
}
