import HangarShared

/// What one tenant may do: its fair-share weight, quotas, rate limit and request limits.
public struct TenantPolicy: Sendable, Equatable {
    /// Share of the cluster under contention, relative to other tenants (weighted DRF).
    public var weight: Double = 1
    /// Jobs running at once; more wait in the tenant's queue.
    public var maxConcurrent = 256
    /// CPU (millicores) and memory the tenant's running jobs may hold at once.
    public var maxCPUMillis: UInt64 = 1_000_000
    public var maxMemoryBytes: UInt64 = 1 << 40
    /// Token bucket: sustained submissions per second and the burst above it.
    public var rate: Double = 1000
    public var burst: Double = 2000
    /// Jobs waiting in the tenant's queue; beyond it submissions get `queue_full`.
    public var maxQueued = 10_000
    /// Byte budget at intake, so that one tenant cannot fill the shared intake stream (256 MiB) or
    /// the scheduler's connection with valid but large requests: a token bucket of request bytes
    /// (sustained bytes per second and the burst above it; beyond it `rate_limited` with a
    /// retry-after; a request larger than the burst can never pass: `limit_exceeded`) ...
    public var bytesRate: Double = 8 * 1024 * 1024
    public var bytesBurst: Double = 32 * 1024 * 1024
    /// ... and the bytes of the tenant's accepted requests not yet finished (in the intake stream,
    /// queued or running); beyond it `queue_full`.
    public var maxQueuedBytes = 64 * 1024 * 1024
    /// Runtimes and templates the tenant may use; nil means all.
    public var runtimes: Set<String>?
    public var templates: Set<String>?
    public var priorities: ClosedRange<Int32> = 0...9
    public var limits = LimitPolicy()
    /// The most a tenant's jobs may be granted (``GrantSet``): each allow a job asks for must lie
    /// within these allows, and these denies are added to every job's. By default no host path, and
    /// any IPv4 destination (what `NETWORK_ALLOWLIST` allowed before grants existed).
    public var grants = TenantPolicy.defaultGrants
    /// Stateful sandboxes: how many may be live (not ended) at once, the longest timeout a create
    /// or a timeout request may ask for, and the longest a sandbox may live whatever its timeouts.
    public var maxLiveSandboxes = 20
    public var maxSandboxTimeout: Duration = .seconds(3600)
    public var maxSandboxLifetime: Duration = .seconds(24 * 3600)
    /// The grants a sandbox gets when its create request names neither grants nor a network policy
    /// (the E2B gateway's unset network options, `hangar sandbox create` without grant flags);
    /// nil (the default): none, no network. Checked like asked-for grants, within ``grants``.
    public var sandboxDefaultGrants: GrantSet?

    /// The built-in maximum grants: `allow_net: [0.0.0.0/0]`.
    public static var defaultGrants: GrantSet {
        var message = Hangar_V1_Grants()
        message.allowNet = ["0.0.0.0/0"]
        return (try? GrantSet(message)) ?? GrantSet()
    }

    public init() {}
}

/// Token bucket rate limiter (pure: the caller passes the time).
public struct TokenBucket: Sendable {
    public private(set) var tokens: Double
    @StoredAsMoment private var last: ContinuousClock.Instant

    public init(burst: Double, now: ContinuousClock.Instant) {
        tokens = burst
        last = now
    }

    /// Takes `amount` tokens (one by default), or returns how long until that many are available.
    public mutating func take(
        _ amount: Double = 1,
        rate: Double,
        burst: Double,
        now: ContinuousClock.Instant
    ) -> Duration? {
        let elapsed = last.duration(to: now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        tokens = min(burst, tokens + max(0, seconds) * rate)
        last = now
        if tokens >= amount {
            tokens -= amount
            return nil
        }
        let milliseconds = ((amount - tokens) / rate * 1000).rounded(.up)
        guard rate > 0, milliseconds.isFinite, milliseconds < 3_600_000 else { return .seconds(3600) }
        return .milliseconds(Int64(milliseconds))
    }
}
