import ServiceLifecycle

/// A node agent is a service of a `ServiceGroup` (`hangar node agent`, `hangar dev`): the group's
/// graceful shutdown (SIGINT/SIGTERM) stops it as cancellation does.
extension NodeAgent: Service {
    /// Serves until the surrounding task is cancelled or, in a `ServiceGroup`, until the group shuts
    /// down gracefully. Then it takes no more assignments, kills the jobs that run and hands their
    /// results to the results stream (retrying for `NodeConfig.resultRetryOnShutdown`), destroys its
    /// warm sandboxes and returns; the connection it was given stays open for its owner to close.
    public func run() async throws {
        try await cancelWhenGracefulShutdown { try await self.serve() }
    }
}
