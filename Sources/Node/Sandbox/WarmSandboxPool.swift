import HangarShared
import Logging
import Synchronization

/// Sandboxes of one runtime started before their creates arrive, each with its default python
/// context already running, so that a create (and its first `run_code`) finds one ready: what
/// ``ProcessSandboxHost`` hands out for a create of that runtime with no environment of its own
/// (one pool per runtime). A warm sandbox serves exactly one create and is never reused.
///
/// The pool makes sandboxes of the ``Profile`` (limits, grants, network, template: a
/// `code-interpreter` template's creates find its python context up) of the last such create
/// it saw: the scheduler resolves every create's limits, grants and network, so the creates of one
/// tenant policy and one client (an E2B SDK asks for internet access by default) ask for the same
/// ones. A create of another profile starts cold, and the pool then replaces what it holds with
/// sandboxes of that profile. It sets up one sandbox at a time, in the background, until it holds
/// ``size``.
final class WarmSandboxPool: Sendable {
    /// What a warm sandbox is made with, and a create must ask for exactly to be served by it.
    struct Profile: Sendable, Equatable {
        var limits: SandboxLimits
        var grants: Hangar_V1_Grants
        var network: Hangar_V1_NetworkPolicy
        /// `host`, or a directory template as built (its content hash is part of it: a template
        /// removed and rebuilt under the same name is another).
        var template: Template = .host
    }

    /// A ready sandbox and its code contexts (the default python one started).
    struct Entry: Sendable {
        let sandbox: any StatefulSandbox
        let code: CodeContexts
    }

    /// How many ready sandboxes the pool keeps.
    let size: Int
    private let make: @Sendable (Profile) async -> Entry?
    private let discard: @Sendable (Entry) async -> Void
    private let state = Mutex(State())

    private struct State {
        /// What the pool makes: learnt from the last create it could serve; nil before the first.
        var profile: Profile?
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
        make: @escaping @Sendable (Profile) async -> Entry?,
        discard: @escaping @Sendable (Entry) async -> Void
    ) {
        self.size = size
        self.make = make
        self.discard = discard
    }

    /// A ready sandbox of `profile`, or nil (then the create starts one cold); either way the pool
    /// is refilled, with sandboxes of `profile` from now on.
    func take(_ profile: Profile) -> Entry? {
        let (entry, dropped) = state.withLock { state -> (Entry?, [Entry]) in
            guard !state.stopped else { return (nil, []) }
            var dropped: [Entry] = []
            if state.profile != profile {
                dropped = state.ready
                state.ready = []
                state.profile = profile
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
    /// loop runs). Also called by ``take(_:)``.
    func refill() {
        let start = state.withLock { state -> Bool in
            guard !state.refilling, !state.stopped, state.profile != nil, state.ready.count < size else { return false }
            state.refilling = true
            return true
        }
        guard start else { return }
        let task = Task {
            while true {
                let profile = state.withLock { state -> Profile? in
                    guard !state.stopped, state.ready.count < size, let profile = state.profile else {
                        state.refilling = false
                        return nil
                    }
                    return profile
                }
                guard let profile else { return }
                guard let entry = await make(profile) else {
                    // A sandbox that cannot start now will not start on the next try either: wait
                    // for the next create before trying again.
                    state.withLock { $0.refilling = false }
                    return
                }
                let kept = state.withLock { state -> Bool in
                    guard !state.stopped, state.profile == profile else { return false }
                    state.ready.append(entry)
                    return true
                }
                if !kept { await discard(entry) }
            }
        }
        state.withLock { $0.refill = task }
    }

    /// The ready sandboxes (for tests).
    var readySandboxes: [any StatefulSandbox] { state.withLock { $0.ready.map(\.sandbox) } }

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
