import Foundation
import Glibc

/// A blocking client of qemu's QMP monitor on a socket, for taking a snapshot: one command at a
/// time, each reply read line by line (events skipped), every wait bounded by `deadline`. Used on a
/// thread of its own, never on the cooperative pool.
struct QMPClient {
    let fd: Int32
    let deadline: ContinuousClock.Instant
    private var buffer = Data()

    /// A client of the monitor on `fd` (not closed here).
    init(fd: Int32, deadline: ContinuousClock.Instant) {
        self.fd = fd
        self.deadline = deadline
    }

    /// Reads qemu's greeting and leaves capabilities negotiation mode.
    mutating func connect() throws(MicroVMError) {
        let greeting = try readMessage()
        guard greeting["QMP"] != nil else { throw MicroVMError("qmp: unexpected greeting \(greeting)") }
        _ = try execute("qmp_capabilities")
    }

    /// Runs `command` and returns its `return` value; an `error` reply throws with qemu's text.
    /// `passing` sends that descriptor along with the command (SCM_RIGHTS), as `getfd` needs.
    @discardableResult
    mutating func execute(
        _ command: String,
        arguments: [String: Any]? = nil,
        passing descriptor: Int32? = nil
    ) throws(MicroVMError) -> Any {
        var message: [String: Any] = ["execute": command]
        if let arguments { message["arguments"] = arguments }
        guard var line = try? JSONSerialization.data(withJSONObject: message) else {
            throw MicroVMError("qmp: cannot encode \(command)")
        }
        line.append(UInt8(ascii: "\n"))
        try send(line, descriptor: descriptor)
        while true {
            let reply = try readMessage()
            if reply["event"] != nil { continue }
            if let error = reply["error"] as? [String: Any] {
                throw MicroVMError("qmp \(command): \(error["desc"] as? String ?? "\(error)")")
            }
            guard let value = reply["return"] else { throw MicroVMError("qmp \(command): unexpected reply \(reply)") }
            return value
        }
    }

    private func send(_ data: Data, descriptor: Int32?) throws(MicroVMError) {
        var bytes = [UInt8](data)
        // One cmsghdr (16 bytes on 64-bit Linux: size_t length, int level, int type) and one int,
        // padded to 8: CMSG_SPACE(sizeof(int)) = 24, CMSG_LEN(sizeof(int)) = 20.
        var control = [UInt8](repeating: 0, count: 24)
        let sent = bytes.withUnsafeMutableBytes { payload in
            control.withUnsafeMutableBytes { control in
                var vector = iovec(iov_base: payload.baseAddress, iov_len: payload.count)
                return withUnsafeMutablePointer(to: &vector) { vector in
                    var header = msghdr()
                    header.msg_iov = vector
                    header.msg_iovlen = 1
                    if let descriptor {
                        control.storeBytes(of: 20, toByteOffset: 0, as: Int.self)
                        control.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
                        control.storeBytes(of: 1, toByteOffset: 12, as: Int32.self)  // SCM_RIGHTS
                        control.storeBytes(of: descriptor, toByteOffset: 16, as: Int32.self)
                        header.msg_control = control.baseAddress
                        header.msg_controllen = control.count
                    }
                    return sendmsg(fd, &header, Int32(MSG_NOSIGNAL))
                }
            }
        }
        guard sent == bytes.count else {
            throw MicroVMError("qmp: sending a command failed: \(String(cString: strerror(errno)))")
        }
    }

    /// The next JSON object qemu sends (one per line).
    private mutating func readMessage() throws(MicroVMError) -> [String: Any] {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer[buffer.startIndex..<newline]
                buffer = Data(buffer[(newline + 1)...])
                if line.allSatisfy({ $0 == 13 || $0 == 32 }) { continue }
                guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] else {
                    throw MicroVMError("qmp: unreadable reply \(String(decoding: line.prefix(200), as: UTF8.self))")
                }
                return object
            }
            guard buffer.count < 1 << 20 else { throw MicroVMError("qmp: a reply longer than 1 MiB") }
            let left = deadline - .now
            guard left > .zero else { throw MicroVMError("qmp: no reply in time") }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let millis = Int32(clamping: left.components.seconds * 1000 + 1)
            guard poll(&entry, 1, min(millis, 200)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard count > 0 else { throw MicroVMError("qmp: qemu closed the monitor") }
            buffer.append(contentsOf: chunk[0..<count])
        }
    }
}
