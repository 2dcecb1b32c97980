import Foundation
import Glibc

/// The framed protocol between the node and the guest agent over the virtio-serial port
/// `hangar.agent`; the C side is `Sources/GuestAgent/protocol.h`. A frame is 1 byte type, a 4-byte
/// big-endian payload length and the payload. The guest is untrusted once the job ran, so every
/// frame it sends is validated: known type, bounded length, exact sizes.
enum GuestProtocol {
    static let ready = UInt8(ascii: "R")
    static let stdout = UInt8(ascii: "O")
    static let stderr = UInt8(ascii: "E")
    static let exit = UInt8(ascii: "X")
    static let job = UInt8(ascii: "J")
    static let seed = UInt8(ascii: "S")
    static let attach = UInt8(ascii: "A")

    /// An ATTACH frame: the VM becomes a stateful sandbox whose writable places (`/home/user`,
    /// `/root`, `/tmp`) are tmpfs mounts of `diskBytes` each (see ``MicroVMSandbox``).
    static func encodeAttach(diskBytes: UInt64) -> Data {
        var payload = Data()
        appendUInt64(&payload, diskBytes)
        return frame(attach, payload)
    }

    /// The SEED frame for a VM restored from a snapshot: the host's realtime clock in nanoseconds
    /// and 64 fresh random bytes (the agent mixes them into the kernel's pool, reseeds its CRNG,
    /// sets the clock and answers with READY).
    /// `realtime` (nanoseconds since the epoch) is for tests; by default the host's clock.
    static func encodeSeed(realtime: UInt64? = nil) -> Data {
        var payload = Data()
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        appendUInt64(&payload, realtime ?? (UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)))
        var random = SystemRandomNumberGenerator()  // the kernel's getrandom
        for _ in 0..<8 { appendUInt64(&payload, random.next()) }
        return frame(seed, payload)
    }

    /// Largest output chunk the agent sends.
    static let chunkMax = 65_536
    /// Largest EXIT payload: 68 bytes of figures and a message of at most 2048 bytes.
    static let exitMax = 68 + 2048

    enum Field: UInt8 {
        case argv = 1
        case env = 2
        case cwd = 3
        case stdin = 4
        case file = 5
        case limits = 6
    }

    /// The JOB payload: argv, environment, working directory, stdin, files and limits.
    static func encodeJob(
        argv: [String],
        environment: [String],
        cwd: String,
        stdin: Data,
        files: [(path: String, mode: UInt32, content: Data)],
        limits: GuestLimits
    ) -> Data {
        var data = Data()
        func field(_ tag: Field, _ value: Data) {
            data.append(tag.rawValue)
            appendUInt32(&data, UInt32(value.count))
            data.append(value)
        }
        for argument in argv { field(.argv, Data(argument.utf8)) }
        for entry in environment { field(.env, Data(entry.utf8)) }
        field(.cwd, Data(cwd.utf8))
        if !stdin.isEmpty { field(.stdin, stdin) }
        for file in files {
            var value = Data()
            appendUInt32(&value, file.mode)
            appendUInt32(&value, UInt32(file.path.utf8.count))
            value.append(contentsOf: file.path.utf8)
            value.append(file.content)
            field(.file, value)
        }
        var packed = Data()
        for number in limits.fields { appendUInt64(&packed, number) }
        field(.limits, packed)
        return frame(job, data)
    }

    /// A whole frame: type, length, payload.
    static func frame(_ type: UInt8, _ payload: Data) -> Data {
        var data = Data([type])
        appendUInt32(&data, UInt32(payload.count))
        data.append(payload)
        return data
    }

    static func appendUInt32(_ data: inout Data, _ value: UInt32) {
        withUnsafeBytes(of: value.bigEndian) { data.append(contentsOf: $0) }
    }

    static func appendUInt64(_ data: inout Data, _ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { data.append(contentsOf: $0) }
    }
}

/// The limits the guest agent applies inside the VM, in the order the JOB frame carries them.
struct GuestLimits: Sendable, Equatable {
    var timeoutMs: UInt64
    var cpuTimeMs: UInt64
    var memoryBytes: UInt64
    var pids: UInt64
    var outputBytes: UInt64
    var fileSizeBytes: UInt64
    var openFiles: UInt64
    var cpuMillis: UInt64
    var loopback: Bool

    var fields: [UInt64] {
        [timeoutMs, cpuTimeMs, memoryBytes, pids, outputBytes, fileSizeBytes, openFiles, cpuMillis, loopback ? 1 : 0]
    }
}

/// How the job ended, as the guest agent reported it in its EXIT frame.
struct GuestExitReport: Sendable, Equatable {
    enum Kind: UInt32, Sendable {
        case exited = 0
        case signaled, timedOut, cpuTime, outputLimit, oom, error, failedToStart
    }

    var kind: Kind
    var code: UInt32
    var signal: UInt32
    var cpuMicroseconds: UInt64
    var peakMemoryBytes: UInt64
    var runMilliseconds: UInt64
    var stdoutBytes: UInt64
    var stderrBytes: UInt64
    var oomKills: UInt64
    /// Forks and clones the guest kernel refused at the job's pids limit.
    var pidsLimitHits: UInt64
    var message: String

    /// Parses an EXIT payload; nil when it is malformed.
    init?(_ payload: Data) {
        let bytes = [UInt8](payload)
        guard bytes.count >= 68, bytes.count <= GuestProtocol.exitMax else { return nil }
        func u32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        func u64(_ at: Int) -> UInt64 { bytes[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) } }
        guard let kind = Kind(rawValue: u32(0)) else { return nil }
        self.kind = kind
        code = u32(4)
        signal = u32(8)
        cpuMicroseconds = u64(12)
        peakMemoryBytes = u64(20)
        runMilliseconds = u64(28)
        stdoutBytes = u64(36)
        stderrBytes = u64(44)
        oomKills = u64(52)
        pidsLimitHits = u64(60)
        message = String(decoding: bytes[68...], as: UTF8.self)
    }
}

/// Splits the guest's byte stream into frames, refusing unknown types and oversized payloads.
struct GuestFrameReader {
    enum Failure: Error, Equatable {
        case unknownType(UInt8)
        case tooLong(type: UInt8, length: Int)
    }

    private var buffer = Data()

    /// Adds bytes read from the channel.
    mutating func append(_ bytes: some Collection<UInt8>) {
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, nil when more bytes are needed.
    mutating func next() throws(Failure) -> (type: UInt8, payload: Data)? {
        guard buffer.count >= 5 else { return nil }
        let start = buffer.startIndex
        let type = buffer[start]
        let length = Int(buffer[(start + 1)..<(start + 5)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        let limit: Int
        switch type {
        case GuestProtocol.ready: limit = 8
        case GuestProtocol.stdout, GuestProtocol.stderr: limit = GuestProtocol.chunkMax
        case GuestProtocol.exit: limit = GuestProtocol.exitMax
        default: throw .unknownType(type)
        }
        guard length <= limit else { throw .tooLong(type: type, length: length) }
        guard buffer.count >= 5 + length else { return nil }
        let payload = Data(buffer[(start + 5)..<(start + 5 + length)])
        buffer = Data(buffer[(start + 5 + length)...])
        return (type, payload)
    }
}
