import Glibc

/// The whole of a `/proc` file ("" if it cannot be read). Foundation's `String(contentsOfFile:)`
/// returns only the first page of one (4 KiB here; `/proc/self/mountinfo` of a busy test run is
/// longer), so a check for what it lacks could not fail.
public func readProcFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { return String(decoding: bytes, as: UTF8.self) }
        bytes += chunk[0..<count]
    }
}
