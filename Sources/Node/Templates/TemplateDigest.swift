import Crypto
import Foundation
import Glibc

/// A stable SHA-256 digest of a directory tree, the content hash of a template.
///
/// The tree is walked depth-first without following symlinks, each directory's entries sorted by
/// their bytes, so the order never depends on the file system. Every entry adds, length-prefixed:
/// its path relative to the root, its type (`d` directory, `f` file, `l` symlink, `c`/`b` device,
/// `p` FIFO, `s` socket), its permission bits (`mode & 07777`), uid and gid, and then for a file its
/// size and the SHA-256 of its contents, for a symlink its target, for a device its `rdev`.
/// Timestamps are left out: copying a tree keeps its digest, changing a byte, a mode, an owner or a
/// name changes it.
public struct TemplateDigest: Sendable, Equatable {
    /// `sha256:<64 hex digits>`.
    public var hash: String
    /// Bytes in regular files.
    public var sizeBytes: UInt64
    /// Entries below the root (the root itself not counted).
    public var entries: UInt64

    /// Digests the tree at `root`.
    /// - Throws: ``TemplateError`` when an entry cannot be read.
    public static func of(directory root: String) throws(TemplateError) -> TemplateDigest {
        var walker = Walker()
        try walker.add(root: root, relative: "")
        let digest = walker.hasher.finalize().map { String(format: "%02x", $0) }.joined()
        return TemplateDigest(hash: "sha256:" + digest, sizeBytes: walker.sizeBytes, entries: walker.entries)
    }

    private struct Walker {
        var hasher = SHA256()
        var sizeBytes: UInt64 = 0
        var entries: UInt64 = 0

        mutating func add(root: String, relative: String) throws(TemplateError) {
            let path = relative.isEmpty ? root : root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0 else { throw TemplateError.system("stat", path) }
            if !relative.isEmpty { entries += 1 }
            let type: String
            var detail = Data()
            switch info.st_mode & S_IFMT {
            case S_IFDIR: type = "d"
            case S_IFREG:
                type = "f"
                sizeBytes += UInt64(info.st_size)
                detail = Data(String(info.st_size).utf8) + (try Self.contentDigest(path))
            case S_IFLNK:
                type = "l"
                detail = Data(try Self.linkTarget(path).utf8)
            case S_IFCHR: type = "c"
            case S_IFBLK: type = "b"
            case S_IFIFO: type = "p"
            default: type = "s"
            }
            if type == "c" || type == "b" { detail = Data(String(info.st_rdev).utf8) }
            for field in [
                Data(relative.utf8), Data(type.utf8), Data(String(info.st_mode & 0o7777, radix: 8).utf8),
                Data(String(info.st_uid).utf8), Data(String(info.st_gid).utf8), detail,
            ] {
                var length = UInt64(field.count).bigEndian
                withUnsafeBytes(of: &length) { hasher.update(bufferPointer: $0) }
                hasher.update(data: field)
            }
            guard type == "d" else { return }
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: path)
            } catch {
                throw TemplateError("cannot list \(path): \(error.localizedDescription)")
            }
            for name in names.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
                try add(root: root, relative: relative.isEmpty ? name : relative + "/" + name)
            }
        }

        private static func contentDigest(_ path: String) throws(TemplateError) -> Data {
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { throw TemplateError.system("open", path) }
            defer { close(fd) }
            var hasher = SHA256()
            var buffer = [UInt8](repeating: 0, count: 256 * 1024)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count >= 0 else { throw TemplateError.system("read", path) }
                if count == 0 { break }
                buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            }
            return Data(hasher.finalize())
        }

        private static func linkTarget(_ path: String) throws(TemplateError) -> String {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let count = readlink(path, &buffer, buffer.count - 1)
            guard count >= 0 else { throw TemplateError.system("readlink", path) }
            return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}

/// A template that cannot be read, built or used; the description says why.
public struct TemplateError: Error, Sendable, CustomStringConvertible, Equatable {
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }

    /// "cannot <action> <path>: <strerror(errno)>".
    static func system(_ action: String, _ path: String) -> TemplateError {
        TemplateError("cannot \(action) \(path): \(String(cString: strerror(errno)))")
    }
}
