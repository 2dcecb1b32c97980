import Foundation
import Synchronization

/// Job identifiers: sortable by creation time, unique across restarts, safe as a NATS token.
/// Shape: `j` + 11 base-32 characters of milliseconds + 8 of randomness + a 4-character counter.
public enum JobID {
    private static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz".utf8)
    private static let counter = Atomic<UInt32>(0)

    /// A fresh job id.
    public static func make() -> String {
        var bytes: [UInt8] = [UInt8(ascii: "j")]
        let millis = UInt64(max(0, unixMilliseconds()))
        for shift in stride(from: 50, through: 0, by: -5) {
            bytes.append(alphabet[Int((millis >> UInt64(shift)) & 31)])
        }
        var random = UInt64.random(in: 0...UInt64.max)
        for _ in 0..<8 {
            bytes.append(alphabet[Int(random & 31)])
            random >>= 5
        }
        let count = counter.add(1, ordering: .relaxed).newValue
        for shift in stride(from: 15, through: 0, by: -5) {
            bytes.append(alphabet[Int((count >> UInt32(shift)) & 31)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
