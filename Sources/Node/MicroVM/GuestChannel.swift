import Foundation
import Glibc

/// What the guest agent said over the channel, or why it said nothing useful.
struct GuestChannelResult: Sendable {
    enum Failure: Sendable, Equatable {
        /// No READY within the boot timeout.
        case bootTimedOut
        /// READY came, but no EXIT within the job's deadline (its timeout plus a grace period).
        case jobTimedOut
        /// The channel closed early: the VM died or the agent hung up.
        case closed
        /// The guest broke the protocol (unknown frame, oversized frame, a second READY, too much output).
        case protocolViolation(String)
    }

    /// From the spawn of the VM until the agent's READY.
    var readyAfter: Duration?
    /// The guest kernel's uptime when the agent was ready, as it reported it.
    var guestUptimeMilliseconds: UInt64?
    var exit: GuestExitReport?
    var failure: Failure?
    /// At most the cap of each stream.
    var stdout = Data()
    var stderr = Data()
}

/// The node's end of the virtio-serial port: waits for READY, sends the JOB, collects output
/// frames (keeping at most `outputLimit` bytes a stream) until EXIT. Runs on its own thread with
/// non-blocking I/O, bounded reads and hard deadlines, so a silent, slow or hostile guest cannot hang
/// or exhaust the node.
struct GuestChannel: Sendable {
    /// Our end of the socket pair whose other end qemu serves as the port; closed by ``run()``.
    let fd: Int32
    /// The whole JOB frame.
    let job: Data
    let outputLimit: Int
    let bootTimeout: Duration
    /// From READY until EXIT must have arrived.
    let jobDeadline: Duration
    /// When the VM was spawned; the boot timeout counts from here.
    let spawned: ContinuousClock.Instant

    /// Talks to the guest on a dedicated thread until EXIT, a failure or a deadline.
    func run() async -> GuestChannelResult {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: self.loop()) }
            thread.name = "hangar-microvm-channel"
            thread.start()
        }
    }

    private func loop() -> GuestChannelResult {
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let clock = ContinuousClock()
        var result = GuestChannelResult()
        var reader = GuestFrameReader()
        var pending = Data()
        var readyAt: ContinuousClock.Instant?
        var scratch = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let now = clock.now
            let deadline = readyAt.map { $0 + jobDeadline } ?? spawned + bootTimeout
            if now >= deadline {
                result.failure = readyAt == nil ? .bootTimedOut : .jobTimedOut
                return result
            }
            var entry = pollfd(fd: fd, events: Int16(POLLIN) | (pending.isEmpty ? 0 : Int16(POLLOUT)), revents: 0)
            let wait = min(deadline - now, .milliseconds(200))
            let millis = Int32(
                clamping: wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000
            )
            guard poll(&entry, 1, max(millis, 1)) > 0 else { continue }
            if entry.revents & Int16(POLLOUT) != 0 && !pending.isEmpty {
                let written = pending.withUnsafeBytes { write(fd, $0.baseAddress, min($0.count, 64 * 1024)) }
                if written > 0 {
                    pending = Data(pending.dropFirst(written))
                } else if written < 0 && errno != EAGAIN && errno != EINTR {
                    result.failure = .closed
                    return result
                }
            }
            guard entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 else { continue }
            let count = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            guard count > 0 else {
                result.failure = .closed
                return result
            }
            reader.append(scratch[0..<count])
            do {
                while let frame = try reader.next() {
                    switch frame.type {
                    case GuestProtocol.ready:
                        guard readyAt == nil, frame.payload.count == 8 else {
                            result.failure = .protocolViolation("a second or malformed READY frame")
                            return result
                        }
                        readyAt = clock.now
                        result.readyAfter = clock.now - spawned
                        result.guestUptimeMilliseconds = frame.payload.reduce(0) { $0 << 8 | UInt64($1) }
                        pending = job
                    case GuestProtocol.stdout, GuestProtocol.stderr:
                        guard readyAt != nil else {
                            result.failure = .protocolViolation("output before READY")
                            return result
                        }
                        let isStdout = frame.type == GuestProtocol.stdout
                        let kept = isStdout ? result.stdout.count : result.stderr.count
                        guard kept + frame.payload.count <= outputLimit else {
                            result.failure = .protocolViolation(
                                "the guest sent more than the \(outputLimit)-byte output limit"
                            )
                            return result
                        }
                        if isStdout { result.stdout.append(frame.payload) } else { result.stderr.append(frame.payload) }
                    default:  // EXIT
                        guard let report = GuestExitReport(frame.payload) else {
                            result.failure = .protocolViolation("a malformed EXIT frame")
                            return result
                        }
                        result.exit = report
                        return result
                    }
                }
            } catch {
                switch error {
                case .unknownType(let type): result.failure = .protocolViolation("unknown frame type \(type)")
                case .tooLong(let type, let length):
                    result.failure = .protocolViolation("a \(length)-byte frame of type \(type), over its limit")
                }
                return result
            }
        }
    }
}
