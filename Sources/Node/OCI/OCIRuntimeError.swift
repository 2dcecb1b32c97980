import Glibc

/// Why preparing, running or cleaning up an OCI container failed on the node's side.
struct OCIRuntimeError: Error, Sendable, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }

    /// "cannot `action` `path`: `strerror(errno)`", read right after the failing call.
    static func system(_ action: String, _ path: String, _ code: Int32 = errno) -> OCIRuntimeError {
        OCIRuntimeError("cannot \(action) \(path): \(String(cString: strerror(code)))")
    }
}
