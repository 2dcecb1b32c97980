import HangarShared
import Logging
import Synchronization

/// `process` sandboxes started before their creates arrive, each with its default python context
/// already running, so that a create (and its first `run_code`) finds one ready: what
/// ``ProcessSandboxHost`` hands out for a plain create (no grants, no network, no environment, the
/// `host` template). A warm sandbox serves exactly one create and is never reused.
///
/// The pool makes sandboxes with the limits of the last plain create it saw (the scheduler resolves
/// every create's limits, so plain creates of one tenant policy ask for the same ones): a create
/// with other limits starts cold, and the pool then replaces what it holds with sandboxes of those
/// limits. It sets up one sandbox at a time, in the background, until it holds ``size``.
final class WarmSandboxPool: Sendable {
    /// A ready sandbox and its code contexts (the default python one started).
    struct Entry: Sendable {
        let sandbox: ProcessSandbox
        let code: CodeContexts
    }

    /// How many ready sandboxes the pool keeps.
    let size: Int
    private let make: @Sendable (SandboxLimits) async -> Entry?
    private let discard: @Sendable (Entry) async -> Void
    private let state = Mutex(State())

    private struct State {
        /// What the pool makes: learnt from the last plain create; nil before the first.
        var limits: SandboxLimits?
        var ready: [Entry] = []
        var refilling = false
        /// The loop that sets sandboxes up, while it runs.
        var refill: Task<Void, Never>?
        var stopped = false
        var served: UInt64 = 0
        var missed: UInt64 = 0
    }

    /// A pool of `size` sandboxes, each made by `make` (nil when it could not be) and ended by
    /// `discard` when the pool drops it.
    init(
        size: Int,
        make: @escaping @Sendable (SandboxLimits) async -> Entry?,
        discard: @escaping @Sendable (Entry) async -> Void
    ) {
        self.size = size
        self.make = make
        self.discard = discard
    }

    /// A ready sandbox of `limits`, or nil (then the create starts one cold); either way the pool
    /// is refilled, with sandboxes of `limits` from now on.
    func take(limits: SandboxLimits) -> Entry? {
        let (entry, dropped) = state.withLock { state -> (Entry?, [Entry]) in
            guard !state.stopped else { return (nil, []) }
            var dropped: [Entry] = []
            if state.limits != limits {
                dropped = state.ready
                state.ready = []
                state.limits = limits
            }
            while !state.ready.isEmpty {
                let candidate = state.ready.removeFirst()
                if candidate.sandbox.agent.goneReason == nil {
                    state.served += 1
                    return (candidate, dropped)
                }
                dropped.append(candidate)
            }
            state.missed += 1
            return (nil, dropped)
        }
        if !dropped.isEmpty {
            Task { for old in dropped { await discard(old) } }
        }
        refill()
        return entry
    }

    /// Starts setting sandboxes up until the pool holds ``size`` (one at a time; at most one such
    /// loop runs). Also called by ``take(limits:)``.
    func refill() {
        let start = state.withLock { state -> Bool in
            guard !state.refilling, !state.stopped, state.limits != nil, state.ready.count < size else { return false }
            state.refilling = true
            return true
        }
        guard start else { return }
        let task = Task {
            while true {
                let limits = state.withLock { state -> SandboxLimits? in
                    guard !state.stopped, state.ready.count < size, let limits = state.limits else {
                        state.refilling = false
                        return nil
                    }
                    return limits
                }
                guard let limits else { return }
                guard let entry = await make(limits) else {
                    // A sandbox that cannot start now will not start on the next try either: wait
                    // for the next create before trying again.
                    state.withLock { $0.refilling = false }
                    return
                }
                let kept = state.withLock { state -> Bool in
                    guard !state.stopped, state.limits == limits else { return false }
                    state.ready.append(entry)
                    return true
                }
                if !kept { await discard(entry) }
            }
        }
        state.withLock { $0.refill = task }
    }

    /// The ready sandboxes (for tests).
    var readySandboxes: [ProcessSandbox] { state.withLock { $0.ready.map(\.sandbox) } }

    /// Ready sandboxes, and creates served warm and cold since the start.
    var counts: (ready: Int, served: UInt64, missed: UInt64) {
        state.withLock { ($0.ready.count, $0.served, $0.missed) }
    }

    /// Ends every ready sandbox; the pool makes no more (one being set up is ended when it is).
    func stop() async {
        let (ready, refilling) = state.withLock { state -> ([Entry], Task<Void, Never>?) in
            state.stopped = true
            defer { state.ready = [] }
            return (state.ready, state.refill)
        }
        for entry in ready { await discard(entry) }
        await refilling?.value  // a sandbox it was setting up is ended as it finishes
    }
}
