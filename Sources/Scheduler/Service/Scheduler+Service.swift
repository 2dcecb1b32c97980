import ServiceLifecycle
import Synchronization

/// A scheduler is a service of a `ServiceGroup` (`hangar scheduler`, `hangar dev`): the group's
/// graceful shutdown (SIGINT/SIGTERM) stops it as cancellation does.
extension Scheduler: Service {
    /// Serves until the surrounding task is cancelled or, in a `ServiceGroup`, until the group shuts
    /// down gracefully. Then it stops taking submissions, lets the stream batches in flight finish
    /// committing (and acknowledges them), flushes the store and drains the connections it opened;
    /// the connection it was given stays open for its owner to close.
    ///
    /// Only a graceful shutdown also stores what the intake and results streams hold at that moment
    /// (for at most two seconds); a cancelled scheduler leaves it in the streams for the next one.
    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await cancelWhenGracefulShutdown { try await self.serve() }
        } onGracefulShutdown: {
            // Runs before the cancellation that `cancelWhenGracefulShutdown` registers after it.
            self.stoppingGracefully.store(true, ordering: .sequentiallyConsistent)
        }
    }
}
