#if canImport(Glibc)
import Glibc
#endif

/// The glob patterns of `SubmitRequest.files_out`: relative to the job's working directory, matched
/// with `fnmatch(3)`. `*`, `?` and `[...]` stay within one path component; a pattern that contains
/// `**` matches across `/` (every `*` in it may then span directories), e.g. `out/**.json`.
public enum FilesOutGlob {
    /// At most this many patterns per job.
    public static let maxGlobs = 64
    /// At most this many bytes per pattern.
    public static let maxGlobBytes = 512

    /// Why `glob` is not acceptable, or nil when it is: it must be non-empty, relative, without NUL
    /// bytes and without `.` or `..` components (nothing outside the working directory can match).
    public static func problem(with glob: String) -> String? {
        if glob.isEmpty { return "a files_out pattern is empty" }
        if glob.utf8.count > maxGlobBytes {
            return "a files_out pattern is longer than \(maxGlobBytes) bytes"
        }
        if glob.utf8.contains(0) { return "a files_out pattern contains a NUL byte" }
        if glob.utf8.first == UInt8(ascii: "/") {
            return "files_out pattern '\(glob.prefix(64))' must be relative to the working directory"
        }
        let parts = glob.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        if parts.contains(where: { $0.isEmpty || $0.elementsEqual(".".utf8) || $0.elementsEqual("..".utf8) }) {
            return "files_out pattern '\(glob.prefix(64))' must not have '.', '..' or empty parts"
        }
        return nil
    }

    /// Whether the relative path `path` matches `glob`.
    public static func matches(_ glob: String, path: String) -> Bool {
        if glob.contains("**") {
            return fnmatch(glob, path, 0) == 0
        }
        return fnmatch(glob, path, FNM_PATHNAME) == 0
    }
}
