import Foundation

/// Wall-clock milliseconds since the Unix epoch, for timestamps that cross process boundaries.
public func unixMilliseconds() -> Int64 {
    Int64((Date().timeIntervalSince1970 * 1000).rounded())
}

extension ContinuousClock.Instant {
    /// Whole milliseconds from `self` to `later` (zero if `later` is earlier).
    public func milliseconds(until later: ContinuousClock.Instant) -> UInt64 {
        let (seconds, attoseconds) = (later - self).components
        let value = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return value > 0 ? UInt64(value) : 0
    }
}

/// The version every component reports.
public let hangarVersion = "0.1.0"
