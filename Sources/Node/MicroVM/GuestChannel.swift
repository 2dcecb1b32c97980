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

    /// From the spawn of the VM (or the start of the handshake) until the agent's READY.
    var readyAfter: Duration?
    /// From the channel's start until the whole JOB frame was written to the agent.
    var jobSentAfter: Duration?
    /// The guest kernel's uptime when the agent was ready, as it reported it.
    var guestUptimeMilliseconds: UInt64?
    var exit: GuestExitReport?
    var failure: Failure?
    /// A handshake reached READY and left the channel open for the job.
    var isReady: Bool { readyAfter != nil && failure == nil }
    /// At most the cap of each stream.
    var stdout = Data()
    var stderr = Data()
}

/// The node's end of the virtio-serial port: waits for READY, sends the JOB, collects output
/// frames (keeping at most `outputLimit` bytes a stream) until EXIT. Runs on its own thread with
/// non-blocking I/O, bounded reads and hard deadlines, so a silent, slow or hostile guest cannot hang
/// or exhaust the node. A warm VM splits this in two: a ``Mode/handshake(greeting:)`` when it is set
/// up, and ``Mode/job(_:)`` when its job arrives.
struct GuestChannel: Sendable {
    /// What to do on the channel.
    enum Mode: Sendable {
        /// A fresh VM: wait for READY, send the JOB frame, collect until EXIT.
        case boot(job: Data)
        /// A VM being set up for a pool: send `greeting` (a SEED frame after a snapshot restore, or
        /// nothing), wait for READY and return with the channel still open.
        case handshake(greeting: Data)
        /// A VM whose agent already said READY: send the JOB frame at once, collect until EXIT.
        case job(Data)
    }

    /// Our end of the socket pair whose other end qemu serves as the port; closed by ``run()``
    /// except after a successful handshake.
    let fd: Int32
    let mode: Mode
    let outputLimit: Int
    let bootTimeout: Duration
    /// From READY until EXIT must have arrived.
    let jobDeadline: Duration
    /// When the VM was spawned (or the handshake or job began); the boot timeout counts from here.
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
        var keepOpen = false
        defer { if !keepOpen { close(fd) } }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let clock = ContinuousClock()
        var result = GuestChannelResult()
        var reader = GuestFrameReader()
        var pending = Data()
        var readyAt: ContinuousClock.Instant?
        var job: Data?
        switch mode {
        case .boot(let frame): job = frame
        case .handshake(let greeting): pending = greeting
        case .job(let frame):
            readyAt = spawned
            pending = frame
        }
        var sendingJob = job == nil && readyAt != nil
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
                    if pending.isEmpty && sendingJob {
                        sendingJob = false
                        result.jobSentAfter = clock.now - spawned
                    }
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
                        result.readyAfter = clock.now - spawned
                        result.guestUptimeMilliseconds = frame.payload.reduce(0) { $0 << 8 | UInt64($1) }
                        guard let job else {
                            // Handshake done: nothing more comes until the JOB, so nothing is left unread.
                            keepOpen = pending.isEmpty
                            if !keepOpen { result.failure = .protocolViolation("READY before the SEED was sent") }
                            return result
                        }
                        readyAt = clock.now
                        pending = job
                        sendingJob = true
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
