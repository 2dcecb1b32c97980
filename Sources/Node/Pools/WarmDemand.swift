/// Jobs asking for one pool's template and runtime, over the last few minutes, and the pool size
/// that demand calls for: the most jobs that arrived within any `bucket` of the `window`, within
/// the pool's min and max. A burst grows the pool at once; it shrinks back to `min` once the burst
/// is older than the window.
public struct WarmDemand: Sendable {
    /// How far back demand counts.
    public var window: Duration
    /// The span within which arrivals count as simultaneous.
    public var bucket: Duration
    /// Arrivals within the window, oldest first.
    public private(set) var arrivals: [ContinuousClock.Instant] = []

    /// Demand over the last `window`, in `bucket`s.
    public init(window: Duration = .seconds(120), bucket: Duration = .seconds(10)) {
        self.window = window
        self.bucket = bucket
    }

    /// A job for the pool arrived at `now`.
    public mutating func record(_ now: ContinuousClock.Instant) {
        arrivals.append(now)
        forget(before: now)
    }

    /// The pool size for demand as of `now`, within `min...max`.
    public mutating func target(min: Int, max: Int, now: ContinuousClock.Instant) -> Int {
        forget(before: now)
        var peak = 0
        var start = 0
        for end in arrivals.indices {
            while arrivals[end] - arrivals[start] >= bucket { start += 1 }
            peak = Swift.max(peak, end - start + 1)
        }
        return Swift.min(max, Swift.max(min, peak))
    }

    private mutating func forget(before now: ContinuousClock.Instant) {
        if let first = arrivals.firstIndex(where: { now - $0 < window }) {
            arrivals.removeFirst(first)
        } else {
            arrivals.removeAll()
        }
    }
}
