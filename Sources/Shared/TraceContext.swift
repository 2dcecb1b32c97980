import Synchronization

/// W3C trace context (`traceparent: 00-<trace id>-<parent span id>-<flags>`), carried in the NATS
/// header `traceparent` from `hangar submit` through the scheduler to the node, and logged as
/// `trace.id` so one job's lines can be found in every daemon's log.
public struct TraceContext: Sendable, Equatable {
    /// 32 lowercase hex digits, not all zero.
    public let traceID: String
    /// 16 lowercase hex digits, not all zero.
    public let spanID: String
    public let sampled: Bool

    /// The NATS / HTTP header name.
    public static let header = "traceparent"

    /// Parses a `traceparent` value; nil if it is missing or malformed (version 00 only).
    public init?(traceparent: String?) {
        guard let traceparent, traceparent.utf8.count == 55 else { return nil }
        let parts = traceparent.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "00", Self.isHex(parts[1], 32), Self.isHex(parts[2], 16),
            Self.isHex(parts[3], 2), parts[1].contains(where: { $0 != "0" }), parts[2].contains(where: { $0 != "0" })
        else { return nil }
        traceID = String(parts[1])
        spanID = String(parts[2])
        sampled = (UInt8(parts[3], radix: 16) ?? 0) & 1 == 1
    }

    private init(traceID: String, spanID: String, sampled: Bool) {
        self.traceID = traceID
        self.spanID = spanID
        self.sampled = sampled
    }

    /// A new trace with a random id.
    public static func start() -> TraceContext {
        TraceContext(traceID: randomHex(16), spanID: randomHex(8), sampled: true)
    }

    /// The same trace with a new span id, for the next hop.
    public func child() -> TraceContext {
        TraceContext(traceID: traceID, spanID: Self.randomHex(8), sampled: sampled)
    }

    /// The `traceparent` header value.
    public var traceparent: String { "00-\(traceID)-\(spanID)-\(sampled ? "01" : "00")" }

    private static func isHex(_ text: Substring, _ count: Int) -> Bool {
        text.utf8.count == count
            && text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Trace and span ids need to be unlikely to collide, not secret: they come from a SplitMix64
    /// sequence seeded once from the system's generator, instead of a `getrandom` system call per
    /// id (several ids are made for every job).
    private static let sequence = Atomic<UInt64>(UInt64.random(in: 0...UInt64.max))

    private struct SplitMix: RandomNumberGenerator {
        mutating func next() -> UInt64 {
            var z = TraceContext.sequence.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// `bytes` random bytes as lowercase hex, never all zero (W3C forbids all-zero ids).
    private static func randomHex(_ bytes: Int) -> String {
        var generator = SplitMix()
        while true {
            var nonZero = false
            let text = String(unsafeUninitializedCapacity: bytes * 2) { buffer in
                var position = 0
                while position < bytes * 2 {
                    var word = generator.next()
                    for _ in 0..<8 where position < bytes * 2 {
                        let byte = UInt8(truncatingIfNeeded: word)
                        word >>= 8
                        nonZero = nonZero || byte != 0
                        buffer[position] = hexDigits[Int(byte >> 4)]
                        buffer[position + 1] = hexDigits[Int(byte & 0xF)]
                        position += 2
                    }
                }
                return position
            }
            if nonZero { return text }
        }
    }
}
