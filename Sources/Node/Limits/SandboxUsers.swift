import Synchronization

/// Hands out a host uid of its own to every running sandbox, so that no two jobs share a host user.
///
/// The kernel counts some per-user budgets against the host user that *owns* a job's user
/// namespace — not against the ids mapped inside it — and the limits of the initial namespace
/// apply: `fs.inotify.max_user_instances` (128 here), `max_user_watches`, user namespaces. Were every
/// job owned by one host user, one job holding 128 inotify instances would starve every other job
/// of that runtime; were the namespace owned by root (runc creates it as root), it would starve the
/// node itself. With one owner per job a job can only exhaust its own share.
///
/// A uid comes back to the pool only after the job's processes are gone (the caller releases it
/// once the job's cgroup is empty); one that could not be proven free is never handed out again.
public final class SandboxUsers: Sendable {
    /// The first uid of the standard pool: host uids 1,000,000 … 1,065,535, above the subordinate
    /// ranges `useradd` hands out first and the 100000+ range containers map.
    public static let standardFirst: UInt32 = 1_000_000
    /// How many uids the standard pool has.
    public static let standardCount: UInt32 = 65_536

    /// A pool of the standard uids (``standardFirst``, ``standardCount``). A node has one
    /// (``NodeResources/users``).
    public static func standard() -> SandboxUsers {
        SandboxUsers(first: standardFirst, count: standardCount)
    }

    /// The lowest uid of the pool.
    public let first: UInt32
    /// How many uids the pool has.
    public let count: UInt32
    private let state: Mutex<State>

    private struct State {
        var next: UInt32 = 0
        var free: [UInt32] = []
        var inUse: Set<UInt32> = []
    }

    /// A pool of the uids `first ..< first + count`.
    public init(first: UInt32, count: UInt32) {
        precondition(count > 0 && first > 0 && UInt64(first) + UInt64(count) <= UInt64(UInt32.max))
        self.first = first
        self.count = count
        state = Mutex(State())
    }

    /// A uid no running sandbox has; nil when every uid of the pool is taken.
    public func acquire() -> UInt32? {
        state.withLock { state in
            let uid: UInt32
            if let reused = state.free.popLast() {
                uid = reused
            } else if state.next < count {
                uid = first + state.next
                state.next += 1
            } else {
                return nil
            }
            state.inUse.insert(uid)
            return uid
        }
    }

    /// Marks `uid` of this pool as in use by a sandbox that a node before this one handed it to
    /// (one this node re-adopts). False when it is not of this pool or already in use.
    public func claim(_ uid: UInt32) -> Bool {
        guard uid >= first, uid - first < count else { return false }
        return state.withLock { state in
            guard !state.inUse.contains(uid) else { return false }
            state.free.removeAll { $0 == uid }
            while state.next <= uid - first {
                if first + state.next != uid { state.free.append(first + state.next) }
                state.next += 1
            }
            state.inUse.insert(uid)
            return true
        }
    }

    /// Gives `uid` back once nothing runs as it any more. Releasing a uid that is not in use
    /// does nothing.
    public func release(_ uid: UInt32) {
        state.withLock { state in
            if state.inUse.remove(uid) != nil { state.free.append(uid) }
        }
    }

    /// How many uids are handed out now.
    public var inUse: Int { state.withLock { $0.inUse.count } }
}
