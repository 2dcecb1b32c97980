import Foundation
import Glibc

/// Builds the guest's initramfs for the `host` template, in memory: the guest agent as `/init`, the
/// kernel modules it loads (virtio-mmio and virtio-console with their dependencies; virtiofs and fuse
/// for VMs with host path grants), busybox with
/// its applets in `/usr/bin`, and the host's `python3` with the shared libraries it and its
/// extension modules need (and `libgcc_s`, which glibc loads for threads) and its standard library (without tests, IDLE, tkinter, `config-*`, site
/// and dist packages). Paths are the host's (merged `/usr`), so `/usr/bin/python3` and `/bin/sh`
/// work as on the host.
struct InitramfsBuilder {
    /// The static guest agent binary.
    var agentPath: String
    /// `/lib/modules/<release>` of the guest kernel.
    var modulesDirectory: String
    /// A static busybox, or nil to leave it out.
    var busyboxPath: String?
    /// The host's python3, or nil to leave it out.
    var pythonPath: String?
    /// Where the programs run to build it (`busybox`, `ldd`) are noted while they run.
    var ledger: SandboxLedger?
    /// The static `hangar-sandbox-agent` and the seccomp filter it installs in commands, put at
    /// `/.hangar/agent` and `/.hangar/seccomp` for VMs that become stateful sandboxes (the ATTACH
    /// frame); nil leaves them out.
    var sandboxAgent: (path: String, filter: Data)? = nil

    /// Modules loaded in the guest, dependencies first.
    static let modules = ["virtio_mmio", "virtio_console"]
    /// Modules a VM with host path grants loads (virtiofs and fuse).
    static let shareModules = ["virtiofs"]
    /// How the image's description names them.
    static let shareContents = "virtiofs"
    /// Standard-library directories left out of the image.
    static let excludedNames: Set<String> = [
        "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages",
        "dist-packages", "__phello__",
    ]

    private var tree = ImageTree()
    private var visited = Set<String>()

    init(
        agentPath: String,
        modulesDirectory: String,
        busyboxPath: String?,
        pythonPath: String?,
        ledger: SandboxLedger?
    ) {
        self.agentPath = agentPath
        self.modulesDirectory = modulesDirectory
        self.busyboxPath = busyboxPath
        self.pythonPath = pythonPath
        self.ledger = ledger
    }

    /// The newc cpio archive, and a one-line description of what it holds.
    mutating func build() async throws(MicroVMError) -> (archive: Data, contents: String) {
        var contents = ["agent"]
        for directory in ["/proc", "/sys", "/dev", "/root", "/usr/bin", "/usr/sbin"] { tree.directory(directory) }
        tree.directory("/tmp", mode: 0o1777)
        for top in ["/bin", "/sbin", "/lib", "/lib64"] {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: top) {
                tree.symlink(top, target: target)
            }
        }
        tree.file("/init", mode: 0o755, content: try read(agentPath))
        tree.file("/etc/passwd", mode: 0o644, content: Data(Self.passwd.utf8))
        tree.file("/etc/group", mode: 0o644, content: Data(Self.group.utf8))
        tree.file("/etc/hosts", mode: 0o644, content: Data("127.0.0.1 localhost sandbox\n::1 localhost\n".utf8))
        if FileManager.default.fileExists(atPath: "/etc/ld.so.cache") { try addHostPath("/etc/ld.so.cache") }
        if let sandboxAgent {
            tree.file("/.hangar/agent", mode: 0o755, content: try read(sandboxAgent.path))
            tree.file("/.hangar/seccomp", mode: 0o644, content: sandboxAgent.filter)
            tree.directory("/home/user")
            contents.append("sandbox agent")
        }

        var moduleList: [String] = []
        for module in try Self.moduleOrder(Self.modules, modulesDirectory: modulesDirectory) {
            let guestPath = "/etc/hangar/modules.d/" + (module as NSString).lastPathComponent
            tree.file(guestPath, mode: 0o644, content: try read(modulesDirectory + "/" + module))
            moduleList.append(guestPath)
        }
        tree.file("/etc/hangar/modules", mode: 0o644, content: Data((moduleList.joined(separator: "\n") + "\n").utf8))
        // What a VM with host path grants loads to mount their share (see ``MicroVMShare``); a
        // kernel without them gives VMs no grants.
        if let shareModules = try? Self.moduleOrder(Self.shareModules, modulesDirectory: modulesDirectory) {
            var shareList: [String] = []
            for module in shareModules {
                let guestPath = "/etc/hangar/modules.d/" + (module as NSString).lastPathComponent
                if !moduleList.contains(guestPath) {
                    tree.file(guestPath, mode: 0o644, content: try read(modulesDirectory + "/" + module))
                }
                shareList.append(guestPath)
            }
            tree.file(
                "/etc/hangar/modules.share",
                mode: 0o644,
                content: Data((shareList.joined(separator: "\n") + "\n").utf8)
            )
            contents.append(Self.shareContents)
        }

        if let busyboxPath {
            tree.file("/usr/bin/busybox", mode: 0o755, content: try read(busyboxPath))
            let list = try await Self.output(busyboxPath, ["busybox", "--list-full"], ledger: ledger)
            for line in list.split(separator: "\n") {
                let name = (line as NSString).lastPathComponent
                let directory = line.contains("sbin/") ? "/usr/sbin/" : "/usr/bin/"
                guard !name.isEmpty, name != "busybox", !name.contains("/") else { continue }
                tree.symlinkIfAbsent(directory + name, target: "/usr/bin/busybox")
            }
            contents.append("busybox")
        }
        if let pythonPath {
            let binary = try realPath(pythonPath)
            let version = (binary as NSString).lastPathComponent  // python3.11
            let stdlib = "/usr/lib/" + version
            try addHostPath(pythonPath)
            try addHostPath(stdlib)
            let dynload = stdlib + "/lib-dynload"
            let extensions = ((try? FileManager.default.contentsOfDirectory(atPath: dynload)) ?? [])
                .filter { $0.hasSuffix(".so") }.sorted().map { dynload + "/" + $0 }
            let libraries = try await Self.sharedLibraries(of: [binary] + extensions, ledger: ledger)
            for library in libraries + Self.loadedByLibc(libraries) { try addHostPath(library) }
            contents.append(version)
        }
        return (tree.archive(), contents.joined(separator: ", "))
    }

    static let passwd =
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
        + "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    static let group = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"

    // MARK: - Host files

    /// Adds a host path under its real directory: symlinks as symlinks (and what they point to),
    /// directories recursively (minus ``excludedNames``), regular files with their mode.
    private mutating func addHostPath(_ path: String, depth: Int = 0) throws(MicroVMError) {
        guard depth < 16 else { throw MicroVMError("too many levels of symbolic links at \(path)") }
        let parent = try realPath((path as NSString).deletingLastPathComponent)
        let name = (path as NSString).lastPathComponent
        let full = parent == "/" ? "/" + name : parent + "/" + name
        guard !visited.contains(full) else { return }
        visited.insert(full)
        var info = stat()
        guard lstat(full, &info) == 0 else {
            throw MicroVMError("cannot read \(full) for the guest image: \(String(cString: strerror(errno)))")
        }
        switch info.st_mode & S_IFMT {
        case S_IFLNK:
            let target = try FileManager.default.wrappedDestination(full)
            tree.symlink(full, target: target)
            try addHostPath(target.hasPrefix("/") ? target : parent + "/" + target, depth: depth + 1)
        case S_IFDIR:
            tree.directory(full, mode: UInt32(info.st_mode & 0o7777))
            let children = (try? FileManager.default.contentsOfDirectory(atPath: full)) ?? []
            for child in children.sorted() where !Self.excludedNames.contains(child) && !child.hasPrefix("config-") {
                try addHostPath(full + "/" + child, depth: depth)
            }
        case S_IFREG:
            tree.file(full, mode: UInt32(info.st_mode & 0o7777), content: try read(full))
        default:
            break
        }
    }

    private func read(_ path: String) throws(MicroVMError) -> Data {
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw MicroVMError("cannot read \(path) for the guest image: \(error.localizedDescription)")
        }
    }

    private func realPath(_ path: String) throws(MicroVMError) -> String {
        guard let resolved = realpath(path, nil) else {
            throw MicroVMError("cannot resolve \(path): \(String(cString: strerror(errno)))")
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The modules (paths relative to `modulesDirectory`) to load for `names`, dependencies first,
    /// from `modules.dep`.
    static func moduleOrder(_ names: [String], modulesDirectory: String) throws(MicroVMError) -> [String] {
        let depFile = modulesDirectory + "/modules.dep"
        guard let text = try? String(contentsOfFile: depFile, encoding: .utf8) else {
            throw MicroVMError("cannot read \(depFile) (is the guest kernel's package installed?)")
        }
        var dependencies: [String: [String]] = [:]
        var byName: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard let module = parts.first.map(String.init) else { continue }
            dependencies[module] = parts.count > 1 ? parts[1].split(separator: " ").map(String.init) : []
            let base = (module as NSString).lastPathComponent
            byName[String(base.prefix { $0 != "." })] = module
        }
        var order: [String] = []
        func visit(_ module: String) {
            guard !order.contains(module) else { return }
            for dependency in (dependencies[module] ?? []).reversed() { visit(dependency) }
            order.append(module)
        }
        for name in names {
            guard let module = byName[name] else {
                throw MicroVMError("the guest kernel has no module \(name) (\(depFile))")
            }
            visit(module)
        }
        if let compressed = order.first(where: { !$0.hasSuffix(".ko") }) {
            throw MicroVMError("compressed kernel modules are not supported yet: \(compressed)")
        }
        return order
    }

    /// Absolute paths of the shared libraries `ldd` lists for `binaries`, the loader included.
    /// What glibc itself `dlopen`s, which no `ldd` line names: `libgcc_s.so.1`, next to the libc in
    /// `libraries`. Without it every exiting thread prints "libgcc_s.so.1 must be installed for
    /// pthread_exit to work" and aborts the program (pthread_exit and cancellation unwind with it).
    static func loadedByLibc(_ libraries: [String]) -> [String] {
        guard let libc = libraries.first(where: { ($0 as NSString).lastPathComponent == "libc.so.6" }) else {
            return []
        }
        let candidate = (libc as NSString).deletingLastPathComponent + "/libgcc_s.so.1"
        return access(candidate, R_OK) == 0 && !libraries.contains(candidate) ? [candidate] : []
    }

    static func sharedLibraries(
        of binaries: [String],
        ledger: SandboxLedger? = nil
    ) async throws(MicroVMError) -> [String] {
        let text = try await output("/usr/bin/ldd", ["ldd"] + binaries, ledger: ledger)
        var libraries: [String] = []
        for line in text.split(separator: "\n") {
            for word in line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            where word.hasPrefix("/") && !word.hasSuffix(":") {
                if !libraries.contains(String(word)) { libraries.append(String(word)) }
            }
        }
        return libraries
    }

    private static func output(
        _ executable: String,
        _ arguments: [String],
        ledger: SandboxLedger?
    ) async throws(MicroVMError) -> String {
        let command = SandboxCommand(
            executable: executable,
            arguments: arguments,
            environment: ["PATH=/usr/bin:/bin"],
            timeout: .seconds(30),
            outputLimit: 4 << 20,
            ledger: ledger
        )
        let result: SandboxResult
        do {
            result = try await SandboxProcess.run(command)
        } catch {
            throw MicroVMError(error.description)
        }
        guard result.killReason == nil, case .exited = result.termination else {
            throw MicroVMError("\(executable) failed: \(result.termination)")
        }
        return String(decoding: result.stdout, as: UTF8.self)
    }
}

extension FileManager {
    fileprivate func wrappedDestination(_ path: String) throws(MicroVMError) -> String {
        do {
            return try destinationOfSymbolicLink(atPath: path)
        } catch {
            throw MicroVMError("cannot read the link \(path): \(error.localizedDescription)")
        }
    }
}

/// The image's entries by guest path; written parents first.
private struct ImageTree {
    enum Entry {
        case directory(mode: UInt32)
        case file(mode: UInt32, content: Data)
        case symlink(String)
    }

    var entries: [String: Entry] = [:]

    mutating func directory(_ path: String, mode: UInt32 = 0o755) {
        addParents(of: path)
        if entries[path] == nil { entries[path] = .directory(mode: mode) }
    }

    mutating func file(_ path: String, mode: UInt32, content: Data) {
        addParents(of: path)
        entries[path] = .file(mode: mode, content: content)
    }

    mutating func symlink(_ path: String, target: String) {
        addParents(of: path)
        entries[path] = .symlink(target)
    }

    mutating func symlinkIfAbsent(_ path: String, target: String) {
        if entries[path] == nil { symlink(path, target: target) }
    }

    private mutating func addParents(of path: String) {
        var parent = (path as NSString).deletingLastPathComponent
        var missing: [String] = []
        while parent != "/" && !parent.isEmpty && entries[parent] == nil {
            missing.append(parent)
            parent = (parent as NSString).deletingLastPathComponent
        }
        for directory in missing { entries[directory] = .directory(mode: 0o755) }
    }

    func archive() -> Data {
        var cpio = CPIOArchive()
        for (path, entry) in entries.sorted(by: { $0.key < $1.key }) {
            switch entry {
            case .directory(let mode): cpio.addDirectory(path, mode: mode)
            case .file(let mode, let content): cpio.addFile(path, mode: mode, content: content)
            case .symlink(let target): cpio.addSymlink(path, target: target)
            }
        }
        return cpio.finished()
    }
}
