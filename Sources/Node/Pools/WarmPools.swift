import HangarShared
import Logging
import Synchronization

/// The node's warm pools, one per configured (runtime, template): keeps each between its min and
/// max, sized to recent demand (``WarmDemand``), sets sandboxes up in the background (at most one
/// at a time per pool, so a pool never starves running jobs of CPU), hands one out per job, and
/// destroys them all when it stops.
public final class WarmPools: Sendable {
    /// Configured pools.
    public let specs: [WarmPoolSpec]
    /// The creation-time limits of every warm sandbox.
    public let profile: WarmProfile
    private let runtimes: [String: any WarmableRuntime]
    private let logger: Logger
    private let state: Mutex<[Key: Pool]>
    /// Set when ``run(available:)`` drains: a late probe must not start a pool again.
    private let stopped = Atomic<Bool>(false)
    /// How often the pools are checked against their targets.
    let tick: Duration

    struct Key: Hashable, Sendable {
        var runtime: String
        var template: String
    }

    private struct Pool: Sendable {
        let spec: WarmPoolSpec
        var ready: [any WarmSandbox] = []
        var warming = 0
        var target: Int
        var demand = WarmDemand()
        var servedWarm: UInt64 = 0
        var servedCold: UInt64 = 0
        var lastError = ""
        /// No new set-up before this (after a failure).
        var retryAt: ContinuousClock.Instant?
        var failures = 0
        /// False until the pool runs (its runtime was found available) and after it stopped.
        var active = false
    }

    /// Pools for `specs` whose runtime is among `runtimes` and warmable; others are reported with
    /// an error and never filled.
    public init(
        specs: [WarmPoolSpec],
        runtimes: [any Runtime],
        profile: WarmProfile = .defaults,
        logger: Logger,
        tick: Duration = .milliseconds(100)
    ) {
        self.specs = specs
        self.profile = profile
        self.logger = logger
        self.tick = tick
        var warmable: [String: any WarmableRuntime] = [:]
        for runtime in runtimes {
            if let runtime = runtime as? any WarmableRuntime { warmable[runtime.name] = runtime }
        }
        self.runtimes = warmable
        var pools: [Key: Pool] = [:]
        for spec in specs {
            var pool = Pool(spec: spec, target: spec.min)
            if warmable[spec.runtime] == nil {
                pool.lastError = "runtime '\(spec.runtime)' has no warm sandboxes on this node"
            }
            pools[Key(runtime: spec.runtime, template: spec.template)] = pool
        }
        state = Mutex(pools)
    }

    /// A ready sandbox for `spec`, or nil (then the job starts cold). Counts the job as demand
    /// for its pool either way.
    public func take(_ spec: Hangar_V1_JobSpec) -> (any WarmSandbox)? {
        let key = Key(runtime: spec.runtime, template: spec.template.isEmpty ? TemplateName.host : spec.template)
        let now = ContinuousClock.now
        return state.withLock { pools -> (any WarmSandbox)? in
            guard var pool = pools[key] else { return nil }
            defer { pools[key] = pool }
            pool.demand.record(now)
            if pool.active, let index = pool.ready.firstIndex(where: { $0.accepts(spec) }) {
                pool.servedWarm += 1
                return pool.ready.remove(at: index)
            }
            pool.servedCold += 1
            return nil
        }
    }

    /// Counts per pool, for the heartbeat.
    public func status() -> [Hangar_V1_WarmPool] {
        state.withLock { pools in
            pools.values.sorted { ($0.spec.runtime, $0.spec.template) < ($1.spec.runtime, $1.spec.template) }.map {
                var status = Hangar_V1_WarmPool()
                status.runtime = $0.spec.runtime
                status.template = $0.spec.template
                status.ready = UInt32($0.ready.count)
                status.warming = UInt32($0.warming)
                status.min = UInt32($0.spec.min)
                status.max = UInt32($0.spec.max)
                status.target = UInt32($0.target)
                status.servedWarm = $0.servedWarm
                status.servedCold = $0.servedCold
                status.error = $0.lastError
                return status
            }
        }
    }

    /// A runtime's probe ended: its pools start filling when it is available, or report that it
    /// is not. Pools of a runtime not probed yet stay empty.
    public func runtimeProbed(_ runtime: String, available: Bool) {
        guard !stopped.load(ordering: .sequentiallyConsistent) else { return }
        state.withLock { pools in
            for key in Array(pools.keys) where key.runtime == runtime {
                if !available {
                    pools[key]!.lastError = "runtime '\(runtime)' is not available on this node"
                } else if runtimes[runtime] != nil {
                    pools[key]!.active = true
                }
            }
        }
    }

    /// Fills and trims the pools of the runtimes in `available` (and of those reported later by
    /// ``runtimeProbed(_:available:)``) until the calling task is cancelled; then destroys every
    /// warm sandbox, waits for set-ups in progress and destroys those too, and returns.
    public func run(available: Set<String> = []) async {
        for runtime in available { runtimeProbed(runtime, available: true) }
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let (starts, surplus) = plan(now: .now)
                for sandbox in surplus {
                    group.addTask { await sandbox.destroy() }
                }
                for key in starts {
                    group.addTask { await self.warmUp(key) }
                }
                try? await Task.sleep(for: tick)
            }
            stopped.store(true, ordering: .sequentiallyConsistent)
            let leftovers = state.withLock { pools in
                var all: [any WarmSandbox] = []
                for key in Array(pools.keys) {
                    pools[key]!.active = false
                    all += pools[key]!.ready
                    pools[key]!.ready = []
                }
                return all
            }
            for sandbox in leftovers {
                group.addTask { await sandbox.destroy() }
            }
        }
    }

    /// Which pools start a set-up now, and which ready sandboxes are beyond their pool's target.
    private func plan(now: ContinuousClock.Instant) -> (starts: [Key], surplus: [any WarmSandbox]) {
        state.withLock { pools in
            var starts: [Key] = []
            var surplus: [any WarmSandbox] = []
            for key in Array(pools.keys) {
                guard var pool = pools[key], pool.active else { continue }
                pool.target = pool.demand.target(min: pool.spec.min, max: pool.spec.max, now: now)
                while pool.ready.count + pool.warming > pool.target, !pool.ready.isEmpty {
                    surplus.append(pool.ready.removeFirst())
                }
                if pool.ready.count + pool.warming < pool.target, pool.warming == 0,
                    pool.retryAt.map({ now >= $0 }) ?? true
                {
                    pool.warming += 1
                    starts.append(key)
                }
                pools[key] = pool
            }
            return (starts, surplus)
        }
    }

    private func warmUp(_ key: Key) async {
        guard let runtime = runtimes[key.runtime] else { return }
        let result: Result<any WarmSandbox, WarmError>
        do throws(WarmError) {
            result = .success(try await runtime.prepareWarm(template: key.template, profile: profile))
        } catch {
            result = .failure(error)
        }
        let now = ContinuousClock.now
        let unwanted = state.withLock { pools -> (any WarmSandbox)? in
            guard var pool = pools[key] else { return nil }
            defer { pools[key] = pool }
            pool.warming -= 1
            switch result {
            case .success(let sandbox):
                pool.failures = 0
                pool.retryAt = nil
                pool.lastError = ""
                guard pool.active else { return sandbox }
                pool.ready.append(sandbox)
                return nil
            case .failure(let error):
                pool.failures += 1
                pool.lastError = error.description
                // 1 s, doubling, at most a minute between failed set-ups.
                pool.retryAt = now + .seconds(min(60, 1 << min(pool.failures - 1, 6)))
                return nil
            }
        }
        if let unwanted { await unwanted.destroy() }
        if case .failure(let error) = result {
            logger.warning(
                "warm sandbox set-up failed",
                metadata: ["runtime": "\(key.runtime)", "template": "\(key.template)", "error": "\(error)"]
            )
        }
    }
}
