import Foundation
import Glibc

/// Unix stream sockets at a path: the node makes listening ones for what it starts (a sandbox's
/// agent, a microVM's virtiofsd) and connects to them.
enum UnixSocket {
    /// A unix stream socket listening at `path` (close-on-exec, backlog `backlog`), or why not.
    static func listen(at path: String, backlog: Int32 = 1) -> Result<Int32, UnixSocketError> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(UnixSocketError("socket: \(String(cString: strerror(errno)))")) }
        let bound = withAddress(path) { bind(fd, $0, $1) }
        guard bound == 0, Glibc.listen(fd, backlog) == 0 else {
            let why = bound == -2 ? "the path is too long" : String(cString: strerror(errno))
            close(fd)
            return .failure(UnixSocketError("cannot listen at \(path): \(why)"))
        }
        return .success(fd)
    }

    /// A unix stream socket (close-on-exec) connected to `path`, or why not.
    static func connect(to path: String) -> Result<Int32, UnixSocketError> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(UnixSocketError("socket: \(String(cString: strerror(errno)))")) }
        let connected = withAddress(path) { Glibc.connect(fd, $0, $1) }
        guard connected == 0 else {
            let why = connected == -2 ? "the path is too long" : String(cString: strerror(errno))
            close(fd)
            return .failure(UnixSocketError("cannot connect to \(path): \(why)"))
        }
        return .success(fd)
    }

    /// Calls `body` with the address of `path`; -2 when the path does not fit one.
    private static func withAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return -2 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}

/// Why a unix socket could not be made or reached.
struct UnixSocketError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a sentence.
    var description: String

    init(_ description: String) { self.description = description }
}
