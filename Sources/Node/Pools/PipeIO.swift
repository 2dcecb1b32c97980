import Foundation
import Glibc

/// Pipe plumbing for warm sandboxes: the node's ends of the pipes a waiting sandbox reads its
/// program from and tells it is ready on.
enum PipeIO {
    /// A pipe, both ends close-on-exec (the sandbox gets duplicates of its ends).
    static func pipe() throws(WarmError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        guard GlibcExtensions.pipeCloexec(&ends) == 0 else {
            throw WarmError("pipe2 failed: \(String(cString: strerror(errno)))")
        }
        return (ends[0], ends[1])
    }

    /// Writes all of `data` to `fd` on a thread of its own, then closes `fd`. A reader that went
    /// away ends the write (EPIPE; SIGPIPE is blocked on that thread), so a job that never reads
    /// its stdin cannot block the node.
    static func writeAndClose(_ data: Data, to fd: Int32) {
        let thread = Thread {
            var blocked = sigset_t()
            sigemptyset(&blocked)
            sigaddset(&blocked, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &blocked, nil)
            data.withUnsafeBytes { bytes in
                var offset = 0
                while offset < bytes.count {
                    let count = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    if count < 0 && errno == EINTR { continue }
                    guard count > 0 else { break }
                    offset += count
                }
            }
            close(fd)
            // A broken pipe left a SIGPIPE pending on this thread; it dies with the thread.
        }
        thread.name = "hangar-warm-feed"
        thread.start()
    }

    /// Waits up to `timeout` for one byte on `fd`, off the cooperative pool. True when it came;
    /// false on EOF (the writer closed: the sandbox died), error or timeout.
    static func awaitByte(on fd: Int32, timeout: Duration) async -> Bool {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                let end = ContinuousClock.now + timeout
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                while true {
                    let left = end - ContinuousClock.now
                    guard left > .zero else { return continuation.resume(returning: false) }
                    let milliseconds = Int32(clamping: JobLimits.milliseconds(left) + 1)
                    let ready = poll(&entry, 1, milliseconds)
                    if ready < 0 && errno == EINTR { continue }
                    if ready == 0 { continue }
                    var byte: UInt8 = 0
                    let count = Glibc.read(fd, &byte, 1)
                    if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                    return continuation.resume(returning: count == 1)
                }
            }
            thread.name = "hangar-warm-ready"
            thread.start()
        }
    }
}
