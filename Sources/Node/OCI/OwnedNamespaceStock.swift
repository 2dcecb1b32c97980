import Synchronization

/// A few ``OwnedUserNamespace``s made ahead of need, so that starting a container does not wait
/// for its namespace's holder (three execs, a few milliseconds). Each is still used by one
/// container only and ended afterwards; the stock only moves the making off the job's path.
final class OwnedNamespaceStock: Sendable {
    private let size: Int
    /// Where the namespaces' owners come from and go back to.
    private let users: SandboxUsers
    private let state = Mutex(State())

    private struct State {
        var ready: [Entry] = []
        var refilling = false
        /// The refill under way, if any (``drain()`` waits for it).
        var refill: Task<Void, Never>?
        /// While ``drain()`` runs no refill starts.
        var draining = false
    }

    private struct Entry: Sendable {
        let namespace: OwnedUserNamespace
        let user: UInt32
        let mapping: OCIUserNamespace
        /// Where its holder process is noted: it serves only sandboxes noted there too, so that
        /// a ledger closed at a clean stop never lists a holder another ledger's job still uses.
        let ledger: SandboxLedger
    }

    /// A stock of up to `size` namespaces per ledger, owned by uids of `users`.
    init(size: Int, users: SandboxUsers) {
        self.size = size
        self.users = users
    }

    /// A fresh namespace with `mapping`: one from the stock if it has one, else made now. Either
    /// way the stock is topped up in the background.
    func take(mapping: OCIUserNamespace) async -> Result<(namespace: OwnedUserNamespace, user: UInt32), OCIRuntimeError>
    {
        let ledger = SandboxLedger.current
        let stocked = state.withLock { state -> Entry? in
            guard let index = state.ready.firstIndex(where: { $0.mapping == mapping && $0.ledger === ledger }) else {
                return nil
            }
            return state.ready.remove(at: index)
        }
        defer { refill(mapping) }
        if let stocked { return .success((stocked.namespace, stocked.user)) }
        return await make(mapping)
    }

    /// How many namespaces wait in the stock.
    var count: Int { state.withLock { $0.ready.count } }

    private func refill(_ mapping: OCIUserNamespace) {
        // Detached: the stock belongs to the node, not to the job that happened to trigger it; but
        // its holders are noted in the ledger the node writes (the one in force here).
        let ledger = SandboxLedger.current
        state.withLock { current in
            guard !current.refilling, !current.draining,
                current.ready.count(where: { $0.ledger === ledger }) < size
            else { return }
            current.refilling = true
            current.refill = Task.detached { [self] in
                await SandboxLedger.$current.withValue(ledger) {
                    while state.withLock({ state in
                        state.ready.count(where: { $0.ledger === ledger }) < size && !state.draining
                    }) {
                        guard case .success(let made) = await make(mapping) else { break }
                        state.withLock {
                            $0.ready.append(
                                Entry(namespace: made.namespace, user: made.user, mapping: mapping, ledger: ledger)
                            )
                        }
                    }
                }
                state.withLock {
                    $0.refilling = false
                    $0.refill = nil
                }
            }
        }
    }

    /// Ends every namespace in the stock (their holders exit, their host uids are released) once
    /// the refill under way, if any, is done; a node calls it when it stops, so that nothing of it
    /// outlives it, in the host or in its ``SandboxLedger``. Later takes refill the stock again.
    func drain() async {
        let refill = state.withLock { state -> Task<Void, Never>? in
            state.draining = true
            return state.refill
        }
        await refill?.value
        let entries = state.withLock { state -> [Entry] in
            let entries = state.ready
            state.ready = []
            state.draining = false
            return entries
        }
        for entry in entries {
            await entry.namespace.remove()
            users.release(entry.user)
        }
    }

    private func make(
        _ mapping: OCIUserNamespace
    ) async -> Result<(namespace: OwnedUserNamespace, user: UInt32), OCIRuntimeError> {
        guard let user = users.acquire() else {
            return .failure(OCIRuntimeError("all \(users.count) sandbox users are in use"))
        }
        do throws(OCIRuntimeError) {
            return .success((try await OwnedUserNamespace.create(owner: user, mapping: mapping), user))
        } catch {
            users.release(user)
            return .failure(error)
        }
    }
}
