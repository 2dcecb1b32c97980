import Foundation
import Glibc
import HangarShared

/// A job's `/tmp` as a size-bounded tmpfs mounted on the host (`<root>/<name>`), bound into the
/// sandbox, so that the node can collect the job's output files after the job has ended. Used when a
/// job asks for `files_out`; other jobs keep a tmpfs private to the sandbox.
///
/// Collection never follows a link: directories are opened with `O_NOFOLLOW | O_DIRECTORY` relative
/// to their parent's descriptor, files with `O_NOFOLLOW | O_NONBLOCK`, and only regular files on the
/// scratch's own filesystem are read. A symlink, FIFO or device the job planted is skipped and named
/// in the notes, so nothing outside the scratch can be pulled out through it. The job's processes
/// are all dead by then, so nothing changes under the walk.
struct JobScratch: Sendable {
    /// Where job scratches are mounted unless a runtime says otherwise.
    static let defaultRoot = "/run/hangar-scratch"
    /// The walk stops after this many directory entries or this depth.
    static let maxEntries = 10_000
    static let maxDepth = 32
    /// At most this many files come back.
    static let maxFiles = 256

    /// Host path of the mounted tmpfs.
    let path: String
    /// Where the mount is noted while it exists.
    let ledger: SandboxLedger?

    /// Mounts a tmpfs of `sizeBytes` at `<root>/<name>`, owned by `owner` (the job's uid and gid as
    /// the host sees them) with mode 0700, and notes it in `ledger`. Needs root.
    static func create(
        root: String = defaultRoot,
        name: String,
        sizeBytes: UInt64,
        owner: (uid: UInt32, gid: UInt32),
        ledger: SandboxLedger?
    ) throws(ScratchError) -> JobScratch {
        guard geteuid() == 0 else {
            throw ScratchError("files_out needs a node running as root (the job's scratch is a host tmpfs)")
        }
        var current = ""
        for component in root.pathComponents() {
            current += "/" + component
            if mkdir(current, 0o711) != 0 && errno != EEXIST { throw .system("create directory", current) }
        }
        // Others must pass through (runc's mapped root, bubblewrap as the sandbox user) but not list.
        guard chmod(root, 0o711) == 0 else { throw .system("chmod", root) }
        let path = root + "/" + name + "-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
        guard mkdir(path, 0o700) == 0 else { throw .system("create directory", path) }
        let options = "size=\(max(sizeBytes, 4096)),mode=0700,uid=\(owner.uid),gid=\(owner.gid),nr_inodes=65536"
        guard mount("tmpfs", path, "tmpfs", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            let error = ScratchError.system("mount a tmpfs on", path)
            rmdir(path)
            throw error
        }
        ledger?.made(.scratch(path: path))
        return JobScratch(path: path, ledger: ledger)
    }

    /// Unmounts the tmpfs (dropping everything the job wrote) and removes its mount point.
    func remove() -> String? {
        if umount2(path, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
            return "cannot unmount the job's scratch \(path): \(String(cString: strerror(errno)))"
        }
        if rmdir(path) != 0 && errno != ENOENT {
            return "cannot remove \(path): \(String(cString: strerror(errno)))"
        }
        ledger?.gone(.scratch(path: path))
        return nil
    }

    /// The regular files below `directory` (relative to the scratch; "" for its top) whose path
    /// relative to `directory` matches one of `globs`, in path order, `capBytes` in all: the file
    /// that crosses the cap is cut and marked truncated, later ones are left out and named in notes.
    func collect(
        globs: [String],
        under directory: String,
        capBytes: UInt64
    ) -> (
        files: [Hangar_V1_FileOut], notes: [String]
    ) {
        var walk = Walk(globs: globs, remaining: capBytes)
        let top = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard top >= 0 else { return ([], ["cannot open the job's scratch: \(String(cString: strerror(errno)))"]) }
        var status = stat()
        guard fstat(top, &status) == 0 else {
            close(top)
            return ([], ["cannot stat the job's scratch"])
        }
        walk.device = status.st_dev
        var fd = top
        for component in directory.pathComponents() {
            let next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            close(fd)
            guard next >= 0 else {
                return ([], ["the working directory is gone or not a directory; no files collected"])
            }
            fd = next
        }
        walk.visit(directory: fd, relative: "", depth: 0)
        close(fd)
        walk.files.sort { $0.path < $1.path }
        return (walk.files, walk.notes)
    }

    private struct Walk {
        let globs: [String]
        var remaining: UInt64
        var device: dev_t = 0
        var entries = 0
        var files: [Hangar_V1_FileOut] = []
        var notes: [String] = []

        init(globs: [String], remaining: UInt64) {
            self.globs = globs
            self.remaining = remaining
        }

        func wanted(_ path: String) -> Bool { globs.contains { FilesOutGlob.matches($0, path: path) } }

        /// Reads the entries of `fd` (which stays the caller's to close).
        mutating func visit(directory fd: Int32, relative: String, depth: Int) {
            let copy = dup(fd)
            guard copy >= 0, let stream = fdopendir(copy) else {
                if copy >= 0 { close(copy) }
                return
            }
            defer { closedir(stream) }
            var names: [(String, UInt8)] = []
            while let entry = readdir(stream) {
                entries += 1
                if entries > JobScratch.maxEntries {
                    notes.append("stopped looking after \(JobScratch.maxEntries) directory entries")
                    return
                }
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name == "." || name == ".." { continue }
                names.append((name, entry.pointee.d_type))
            }
            for (name, type) in names.sorted(by: { $0.0 < $1.0 }) {
                let path = relative.isEmpty ? name : relative + "/" + name
                if type == UInt8(DT_DIR) {
                    guard depth < JobScratch.maxDepth else {
                        notes.append("\(path): deeper than \(JobScratch.maxDepth) levels, not searched")
                        continue
                    }
                    let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    guard child >= 0 else { continue }
                    visit(directory: child, relative: path, depth: depth + 1)
                    close(child)
                    continue
                }
                guard wanted(path) else { continue }
                if type != UInt8(DT_REG) {
                    notes.append("\(path): not a regular file (a link, FIFO or device), skipped")
                    continue
                }
                read(name, in: fd, as: path)
            }
        }

        private mutating func read(_ name: String, in directory: Int32, as path: String) {
            guard files.count < JobScratch.maxFiles else {
                notes.append("\(path): more than \(JobScratch.maxFiles) files matched, left out")
                return
            }
            let fd = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else {
                notes.append("\(path): cannot be opened (\(String(cString: strerror(errno)))), skipped")
                return
            }
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG, status.st_dev == device else {
                notes.append("\(path): not a regular file of the scratch, skipped")
                return
            }
            guard remaining > 0 else {
                notes.append("\(path): over the files_out size cap, left out")
                return
            }
            let size = UInt64(max(0, status.st_size))
            let wanted = Int(min(size, remaining))
            var content = Data(count: wanted)
            let got = content.withUnsafeMutableBytes { buffer -> Int in
                var offset = 0
                while offset < wanted {
                    let count = Glibc.read(fd, buffer.baseAddress! + offset, wanted - offset)
                    if count < 0 && errno == EINTR { continue }
                    guard count > 0 else { break }
                    offset += count
                }
                return offset
            }
            content.count = got
            remaining -= UInt64(got)
            var file = Hangar_V1_FileOut()
            file.path = path
            file.content = content
            file.mode = UInt32(status.st_mode & 0o777)
            file.truncated = UInt64(got) < size
            files.append(file)
        }
    }
}

/// Why a job's scratch could not be set up.
struct ScratchError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) { self.description = description }

    static func system(_ what: String, _ path: String) -> ScratchError {
        ScratchError("cannot \(what) \(path): \(String(cString: strerror(errno)))")
    }
}

extension JobScratch {
    /// Refuses `files_out` patterns that could name something outside the working directory, and a
    /// working directory outside `/tmp` (only the scratch is collected).
    static func checkFilesOut(_ spec: Hangar_V1_JobSpec) throws(ScratchError) {
        guard spec.filesOut.count <= FilesOutGlob.maxGlobs else {
            throw ScratchError("at most \(FilesOutGlob.maxGlobs) files_out patterns, got \(spec.filesOut.count)")
        }
        for glob in spec.filesOut {
            if let problem = FilesOutGlob.problem(with: glob) { throw ScratchError(problem) }
        }
        guard workdirInScratch(spec) != nil else {
            throw ScratchError("files_out needs a working directory under /tmp, got \"\(spec.cwd)\"")
        }
    }

    /// The job's working directory relative to `/tmp` ("" for `/tmp` itself), or nil when it is
    /// elsewhere.
    static func workdirInScratch(_ spec: Hangar_V1_JobSpec) -> String? {
        let parts = (spec.cwd.isEmpty ? "/tmp" : spec.cwd).pathComponents()
        guard parts.first == "tmp", !parts.contains("..") else { return nil }
        return parts.dropFirst().joined(separator: "/")
    }
}

extension RunOutcome {
    /// Adds what `spec.filesOut` matches in `scratch` to the outcome, at most `capBytes` in all.
    mutating func collectFiles(from scratch: JobScratch, spec: Hangar_V1_JobSpec, capBytes: Int) {
        guard let directory = JobScratch.workdirInScratch(spec) else { return }
        let (files, notes) = scratch.collect(
            globs: spec.filesOut,
            under: directory,
            capBytes: UInt64(max(0, capBytes))
        )
        filesOut = files
        if !notes.isEmpty { appendMessage("files_out: " + notes.prefix(8).joined(separator: "; ")) }
    }

    /// Appends `text` to the message, separated by "; ".
    mutating func appendMessage(_ text: String) {
        message += (message.isEmpty ? "" : "; ") + text
    }
}
