import HangarShared

extension NodeAgent {
    /// The heartbeat this agent would send now (capacity, load, runtimes), for `/metrics`.
    public func currentHeartbeat() -> Hangar_V1_NodeHeartbeat { heartbeat() }
}
