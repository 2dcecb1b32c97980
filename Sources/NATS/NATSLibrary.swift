import CNATS

/// Opens libnats once per process, before its first connection, without lock spinning.
///
/// By default libnats spins up to 2,000 times on a locked mutex before it sleeps. With more busy
/// threads than cores (a scheduler and its nodes on two cores) the holder is often not running, so
/// the spinning only burns the core it needs: a profile of `hangar-bench throughput` showed
/// `natsMutex_Lock` itself among the hottest functions. If the library was already opened (by a
/// libnats call that opens it implicitly) this changes nothing, and connections work as before.
enum NATSLibrary {
    private static let opened: Bool = {
        guard nats_Open(0) == NATS_OK else { return false }
        // The shared delivery pool (see `NATSConnection.open`): two threads, one per core here.
        _ = nats_SetMessageDeliveryPoolSize(2)
        return true
    }()

    /// Opens the library (once; later calls do nothing). Call before any other libnats function.
    static func open() { _ = opened }
}
