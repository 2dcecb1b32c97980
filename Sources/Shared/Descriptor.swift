import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Small helpers for raw file descriptors.
public enum Descriptor {
    /// Writes all of `data` to the blocking descriptor `fd`, retrying on EINTR and short writes.
    /// False when a write fails (`errno` says why).
    public static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { bytes -> Bool in
            var offset = 0
            while offset < bytes.count {
                let count = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return false }
                offset += count
            }
            return true
        }
    }
}
