/// Jobs asking for one pool's template and runtime, over the last few minutes, and the pool size
/// that demand calls for: the most jobs that arrived within any `bucket` of the `window`, within
/// the pool's min and max. A burst grows the pool at once; it shrinks back to `min` once the burst
/// is older than the window.
struct WarmDemand: Sendable {
    var window: Duration
    var bucket: Duration
    private(set) var arrivals: [ContinuousClock.Instant] = []

    init(window: Duration = .seconds(120), bucket: Duration = .seconds(10)) {
        self.window = window
        self.bucket = bucket
    }

    mutating func record(_ now: ContinuousClock.Instant) {
        arrivals.append(now)
        forget(before: now)
    }

    /// The pool size for demand as of `now`, within `min...max`.
    mutating func target(min: Int, max: Int, now: ContinuousClock.Instant) -> Int {
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
