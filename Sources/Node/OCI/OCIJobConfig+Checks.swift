import Foundation
import HangarShared

// The checks and small builders behind ``OCIJobConfig``.
extension OCIJobConfig {
    static func readOnlyBind(_ path: String) -> OCIMount {
        // Not "rbind": a recursive bind would carry the host's submounts along, and runc makes only
        // the top one read-only.
        OCIMount(destination: path, type: "bind", source: path, options: ["bind", "ro", "nosuid", "nodev"])
    }

    /// Whether `path` (outside `/tmp`) is a directory the sandbox shows: the root, a kernel file
    /// system, or a host directory among those bound in.
    static func isVisibleDirectory(_ path: String) -> Bool {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        if ["/", "/etc", "/proc", "/dev", "/sys"].contains(trimmed) { return true }
        if ["/proc/", "/dev/", "/sys/"].contains(where: trimmed.hasPrefix) { return true }
        let bound = ["/usr"] + systemDirectories + etcFiles
        guard bound.contains(where: { trimmed == $0 || trimmed.hasPrefix($0 + "/") }) else { return false }
        return isDirectory(trimmed)
    }

    static func isDirectory(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    /// The job's environment plus the default `PATH` and `HOME`, as sorted `KEY=VALUE` strings.
    static func environment(_ env: [String: String]) throws(OCIInvalidJob) -> [String] {
        for (key, value) in env where key.isEmpty || key.contains("=") || (key + value).utf8.contains(0) {
            throw OCIInvalidJob(message: "invalid environment variable name \"\(key)\"")
        }
        var all = env
        if all["PATH"] == nil { all["PATH"] = defaultPath }
        if all["HOME"] == nil { all["HOME"] = "/tmp" }
        return all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    }

    /// Checks the job's files and plans them, and the directories they need, below `rootfs/<directory>`.
    static func stage(
        _ inputs: [Hangar_V1_FileIn],
        in directory: String,
        scratchBytes: UInt64
    ) throws(OCIInvalidJob) -> (directories: [OCIRootfsEntry], files: [OCIScratchFile]) {
        var planned: (directories: [OCIRootfsEntry], files: [OCIScratchFile]) = ([], [])
        guard inputs.count <= Self.maxFiles else {
            throw OCIInvalidJob(message: "at most \(Self.maxFiles) files, got \(inputs.count)")
        }
        let total = inputs.reduce(UInt64(0)) { $0 + UInt64($1.content.count) }
        guard total <= scratchBytes else {
            throw OCIInvalidJob(message: "files total \(total) bytes, more than the \(scratchBytes)-byte /tmp")
        }
        var seen = Set<String>()
        var directories = Set<String>()
        for input in inputs {
            let path = input.path
            let components = path.pathComponents(omittingEmpty: false)
            guard !path.isEmpty, path.utf8.count <= 4096, !path.utf8.contains(0),
                components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
            else {
                throw OCIInvalidJob(
                    message: "file path \"\(path)\" must be relative, without \".\", \"..\" or empty parts"
                )
            }
            guard seen.insert(path).inserted else {
                throw OCIInvalidJob(message: "file path \"\(path)\" appears twice")
            }
            for end in 1..<components.count {
                let parent = components[0..<end].joined(separator: "/")
                if directories.insert(parent).inserted {
                    planned.directories.append(.directory(directory + "/" + parent, mode: 0o755))
                }
            }
            let mode = input.mode == 0 ? 0o644 : UInt16(input.mode & 0o777)
            planned.files.append(OCIScratchFile(path: directory + "/" + path, content: input.content, mode: mode))
        }
        if let clash = seen.first(where: directories.contains) {
            throw OCIInvalidJob(message: "file path \"\(clash)\" is also used as a directory")
        }
        return planned
    }
}
