import Foundation
import Glibc
import HangarShared

/// A root filesystem jobs can run in: the host's (`host`) or a directory template from the store.
public struct Template: Sendable, Equatable {
    /// The template's name.
    public var name: String
    /// Absolute path of the root filesystem; nil for `host`, which binds the host's own directories.
    public var rootfs: String?
    /// Environment jobs start with; their own variables win.
    public var env: [String: String]
    /// `sha256:<hex>` of the root filesystem as built; empty for `host`.
    public var hash: String

    /// The host's own root filesystem.
    public static let host = Template(name: TemplateName.host, rootfs: nil, env: [:], hash: "")
}

/// The node's directory templates, in `<state directory>/templates`: one folder per template holding
/// `manifest.json` (``TemplateManifest``) and `rootfs/`. Templates are built in a hidden staging
/// folder and renamed into place when complete, so a half-built template is never listed; a
/// template is never changed once in place (rebuild it under a new name, or remove and rebuild).
///
/// The store and its ancestors must be traversable (`o+x`) by the unprivileged host ids sandboxes
/// run as (1000000+ for `process`, 100000+ for `container`): the store creates its own folders 0755.
public struct TemplateStore: Sendable {
    /// The folder holding the templates.
    public let root: String

    /// Where a node keeps its state unless told otherwise.
    public static let defaultStateDirectory = "/var/lib/hangar"

    /// The store of the node whose state folder is `stateDirectory`.
    public init(stateDirectory: String = TemplateStore.defaultStateDirectory) {
        root = URL(fileURLWithPath: stateDirectory).standardizedFileURL.path + "/templates"
    }

    /// Manifests of the complete templates, by name; folders without a readable manifest that
    /// matches their name are skipped.
    public func list() -> [TemplateManifest] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.filter(TemplateName.isValid).sorted().compactMap { try? manifest(of: $0) }
    }

    /// The names of every template the node can run jobs in, `host` first.
    public func names() -> [String] {
        [TemplateName.host] + list().map(\.name)
    }

    /// The template called `name`: `host`, or a directory template of this store.
    /// - Throws: ``TemplateError`` for a malformed name or a template this node does not hold.
    public func template(named name: String) throws(TemplateError) -> Template {
        if name.isEmpty || name == TemplateName.host { return .host }
        let manifest = try manifest(of: name)
        return Template(name: name, rootfs: folder(of: name) + "/rootfs", env: manifest.env, hash: manifest.hash)
    }

    /// The manifest of the template `name`.
    public func manifest(of name: String) throws(TemplateError) -> TemplateManifest {
        guard TemplateName.isValid(name), name != TemplateName.host else {
            throw TemplateError("invalid template name \"\(name)\": use \(TemplateName.rule), not \"host\"")
        }
        let path = folder(of: name) + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TemplateError("template '\(name)' is not on this node (no \(path))")
        }
        let manifest: TemplateManifest
        do {
            manifest = try JSONDecoder().decode(TemplateManifest.self, from: data)
        } catch {
            throw TemplateError("template '\(name)' has an unreadable manifest \(path): \(error)")
        }
        guard manifest.name == name else {
            throw TemplateError("template folder '\(name)' holds a manifest for '\(manifest.name)'")
        }
        return manifest
    }

    /// Builds the template `name`: creates a staging folder, lets `populate` fill `rootfs/` (given
    /// as an absolute path), digests it, writes the manifest and renames it into place. On any
    /// failure nothing is left behind.
    /// - Parameters:
    ///   - env: the template's default environment.
    ///   - source: where the root filesystem comes from, for `template list`.
    @discardableResult
    public func build(
        name: String,
        env: [String: String] = [:],
        source: String,
        populate: (String) throws -> Void
    ) throws -> TemplateManifest {
        guard TemplateName.isValid(name), name != TemplateName.host else {
            throw TemplateError("invalid template name \"\(name)\": use \(TemplateName.rule), not \"host\"")
        }
        for (key, value) in env where key.isEmpty || key.contains("=") || (key + value).utf8.contains(0) {
            throw TemplateError("invalid environment variable \"\(key)\"")
        }
        try makeRoot()
        let final = folder(of: name)
        guard access(final, F_OK) != 0 else {
            throw TemplateError("template '\(name)' already exists at \(final); remove it first")
        }
        let staging = root + "/.staging-\(name)-\(UUID().uuidString.prefix(8))"
        guard mkdir(staging, 0o755) == 0 else { throw TemplateError.system("create", staging) }
        do {
            let rootfs = staging + "/rootfs"
            guard mkdir(rootfs, 0o755) == 0 else { throw TemplateError.system("create", rootfs) }
            try populate(rootfs)
            // Whatever the source's mode, sandboxed users must be able to enter the root.
            guard chmod(rootfs, 0o755) == 0 else { throw TemplateError.system("chmod", rootfs) }
            let digest = try TemplateDigest.of(directory: rootfs)
            let manifest = TemplateManifest(
                name: name,
                createdMs: Int64(Date().timeIntervalSince1970 * 1000),
                hash: digest.hash,
                sizeBytes: digest.sizeBytes,
                entries: digest.entries,
                env: env,
                source: source
            )
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            guard
                FileManager.default.createFile(
                    atPath: staging + "/manifest.json",
                    contents: try encoder.encode(manifest)
                )
            else { throw TemplateError.system("write", staging + "/manifest.json") }
            guard rename(staging, final) == 0 else { throw TemplateError.system("rename \(staging) to", final) }
            return manifest
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            throw error
        }
    }

    /// Builds the template `name` from a copy of the folder `source` (`cp -a`: modes, owners,
    /// symlinks and devices kept).
    @discardableResult
    public func importDirectory(
        _ source: String,
        name: String,
        env: [String: String] = [:]
    ) throws
        -> TemplateManifest
    {
        let absolute = URL(fileURLWithPath: source).standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: absolute, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw TemplateError("\(source) is not a directory")
        }
        return try build(name: name, env: env, source: "dir:\(absolute)") { rootfs in
            try TemplateCommand.run(
                "/bin/cp",
                ["-a", "--", absolute + "/.", rootfs + "/"],
                what: "copying \(absolute)"
            )
        }
    }

    /// Recomputes the digest of `name`'s root filesystem and compares it with its manifest.
    public func verify(_ name: String) throws(TemplateError) -> (matches: Bool, actual: String) {
        let manifest = try manifest(of: name)
        let digest = try TemplateDigest.of(directory: folder(of: name) + "/rootfs")
        return (digest.hash == manifest.hash, digest.hash)
    }

    /// Deletes the template `name`.
    public func remove(_ name: String) throws {
        _ = try manifest(of: name)
        let trash = root + "/.removing-\(name)-\(UUID().uuidString.prefix(8))"
        guard rename(folder(of: name), trash) == 0 else { throw TemplateError.system("move away", folder(of: name)) }
        try FileManager.default.removeItem(atPath: trash)
    }

    private func folder(of name: String) -> String { root + "/" + name }

    private func makeRoot() throws(TemplateError) {
        var current = ""
        for component in root.pathComponents() {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST { throw TemplateError.system("create", current) }
        }
    }
}

/// Runs the tools templates are built with (`cp`, `debootstrap`).
enum TemplateCommand {
    /// Runs `executable` with `arguments` to completion; throws with its output when it fails.
    static func run(_ executable: String, _ arguments: [String], what: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        do {
            try process.run()
        } catch {
            throw TemplateError("\(what): cannot start \(executable): \(error.localizedDescription)")
        }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let text = String(decoding: data.suffix(4000), as: UTF8.self)
            throw TemplateError("\(what) failed (\(executable) exit \(process.terminationStatus)): \(text)")
        }
    }
}

extension NodeAgent {
    /// Why this node cannot run `spec`'s template (so the scheduler places the job elsewhere), or
    /// nil when it holds it.
    func missingTemplate(_ spec: Hangar_V1_JobSpec) -> String? {
        let name = spec.template.isEmpty ? TemplateName.host : spec.template
        guard name != TemplateName.host else { return nil }
        guard let store = config.templates else { return "template '\(name)' is not on this node" }
        do {
            _ = try store.manifest(of: name)
            return nil
        } catch {
            return error.description
        }
    }
}
