import Synchronization

/// A few ``OwnedUserNamespace``s made ahead of need, so that starting a container does not wait
/// for its namespace's holder (three execs, a few milliseconds). Each is still used by one
/// container only and ended afterwards; the stock only moves the making off the job's path.
final class OwnedNamespaceStock: Sendable {
    /// The stock every OCI engine of this process draws from.
    static let shared = OwnedNamespaceStock(size: 2)

    private let size: Int
    private let state = Mutex(State())

    private struct State {
        var ready: [Entry] = []
        var refilling = false
    }

    private struct Entry: Sendable {
        let namespace: OwnedUserNamespace
        let user: UInt32
        let mapping: OCIUserNamespace
    }

    init(size: Int) {
        self.size = size
    }

    /// A fresh namespace with `mapping`: one from the stock if it has one, else made now. Either
    /// way the stock is topped up in the background.
    func take(mapping: OCIUserNamespace) async -> Result<(namespace: OwnedUserNamespace, user: UInt32), OCIRuntimeError>
    {
        let stocked = state.withLock { state -> Entry? in
            guard let index = state.ready.firstIndex(where: { $0.mapping == mapping }) else { return nil }
            return state.ready.remove(at: index)
        }
        defer { refill(mapping) }
        if let stocked { return .success((stocked.namespace, stocked.user)) }
        return await Self.make(mapping)
    }

    /// How many namespaces wait in the stock.
    var count: Int { state.withLock { $0.ready.count } }

    private func refill(_ mapping: OCIUserNamespace) {
        let start = state.withLock { state -> Bool in
            guard !state.refilling, state.ready.count < size else { return false }
            state.refilling = true
            return true
        }
        guard start else { return }
        // Detached: the stock belongs to the node, not to the job that happened to trigger it.
        Task.detached { [self] in
            while state.withLock({ $0.ready.count < size }) {
                guard case .success(let made) = await Self.make(mapping) else { break }
                state.withLock { $0.ready.append(Entry(namespace: made.namespace, user: made.user, mapping: mapping)) }
            }
            state.withLock { $0.refilling = false }
        }
    }

    private static func make(
        _ mapping: OCIUserNamespace
    ) async -> Result<(namespace: OwnedUserNamespace, user: UInt32), OCIRuntimeError> {
        guard let user = SandboxUsers.shared.acquire() else {
            return .failure(OCIRuntimeError("all \(SandboxUsers.shared.count) sandbox users are in use"))
        }
        do throws(OCIRuntimeError) {
            return .success((try await OwnedUserNamespace.create(owner: user, mapping: mapping), user))
        } catch {
            SandboxUsers.shared.release(user)
            return .failure(error)
        }
    }
}
