import Foundation
import Glibc

/// Why a cgroup could not be found, created, configured or removed.
public struct CgroupError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, for a person.
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }

    /// "cannot `action` `path`: `strerror(code)`".
    static func system(_ action: String, _ path: String, _ code: Int32 = errno) -> CgroupError {
        CgroupError("cannot \(action) \(path): \(String(cString: strerror(code)))")
    }
}

/// Small reads and writes of cgroup control files. Each write is a single `write(2)`, which is
/// what the kernel expects of these files, and failures keep their `errno`.
enum CgroupFile {
    /// Writes `value` to the control file at `path`.
    static func write(_ value: String, to path: String) throws(CgroupError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system("open", path) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        var written: Int
        repeat { written = Glibc.write(fd, bytes, bytes.count) } while written < 0 && errno == EINTR
        guard written == bytes.count else {
            throw written < 0 ? .system("write \"\(value)\" to", path) : CgroupError("short write to \(path)")
        }
    }

    /// The whole content of a (small) file, or nil when it is missing or unreadable.
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = Glibc.read(fd, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return count == 0 ? String(decoding: bytes, as: UTF8.self) : nil }
            bytes += chunk[0..<count]
        }
    }

    /// A file holding one unsigned number ("12345\n"), or nil.
    static func number(_ path: String) -> UInt64? {
        read(path).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// The value of `key` in a flat-keyed file of "key value" lines (memory.events, pids.events,
    /// cpu.stat, memory.oom_control), or nil when the file or the key is missing.
    static func keyed(_ path: String, _ key: String) -> UInt64? {
        guard let text = read(path) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 2 && fields[0] == key { return UInt64(fields[1]) }
        }
        return nil
    }

    /// The pids listed in a `cgroup.procs` or `tasks` file; empty when it cannot be read.
    static func pids(_ path: String) -> [pid_t] {
        (read(path) ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }
}
