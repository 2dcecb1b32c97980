import Foundation
import HangarShared

extension Scheduler {
    /// The byte budget of a submission of `size` bytes (see `TenantPolicy.bytesRate`,
    /// `maxQueuedBytes`): nil if it passes (its bytes are then taken from the bucket), else the
    /// rejection. One tenant's large requests can never take the shared intake stream, nor flood
    /// the scheduler's connection for everyone else.
    func byteBudget(tenant: String, size: Int, policy: TenantPolicy, now: ContinuousClock.Instant) -> Rejection? {
        let queued = queuedBytes[tenant] ?? 0
        if queued > 0 && queued + size > policy.maxQueuedBytes {
            var rejection = Rejection(
                .queueFull,
                "",
                "tenant '\(tenant)' already has \(queued) bytes of requests accepted and not finished; this one "
                    + "(\(size) bytes) would pass max_queued_bytes \(policy.maxQueuedBytes)"
            )
            rejection.rejected.retryAfterMs = 1000
            return rejection
        }
        guard Double(size) <= policy.bytesBurst else {
            return Rejection(
                .limitExceeded,
                "",
                "the request is \(size) bytes; tenant '\(tenant)' may send at most \(Int(policy.bytesBurst)) at once "
                    + "(bytes_burst)"
            )
        }
        var bucket = byteBuckets[tenant] ?? TokenBucket(burst: policy.bytesBurst, now: now)
        let wait = bucket.take(Double(size), rate: policy.bytesRate, burst: policy.bytesBurst, now: now)
        byteBuckets[tenant] = bucket
        guard let wait else { return nil }
        var rejection = Rejection(
            .rateLimited,
            "",
            "tenant '\(tenant)' is over its byte rate of \(Int(policy.bytesRate)) bytes/s "
                + "(burst \(Int(policy.bytesBurst))); this request is \(size) bytes"
        )
        rejection.rejected.retryAfterMs = UInt32(
            clamping: wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000
        )
        return rejection
    }

    /// Forgets a job the scheduler no longer works on (finished, or never made durable), and gives
    /// its bytes back to its tenant's queued bytes.
    @discardableResult
    func forget(_ id: String) -> JobEntry? {
        guard let entry = jobs.removeValue(forKey: id) else { return nil }
        if entry.bytes > 0 {
            let left = (queuedBytes[entry.tenant] ?? 0) - entry.bytes
            queuedBytes[entry.tenant] = left > 0 ? left : nil
        }
        return entry
    }
}
