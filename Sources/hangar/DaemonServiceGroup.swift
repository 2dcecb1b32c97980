import Foundation
import Logging
import ServiceLifecycle

/// Runs a daemon's `services` as one `ServiceGroup` that shuts down gracefully on SIGINT or SIGTERM:
/// the services stop one after another, the last one listed first, each once the one after it has
/// returned (list what must stop last, e.g. the scheduler, first). `stopping` is logged when the
/// shutdown begins; after that a second SIGINT or SIGTERM ends the process at once.
///
/// A service that throws cancels the others and its error is thrown from here; one that returns
/// before the shutdown does the same unless its configuration says otherwise.
func runServiceGroup(
    _ services: [ServiceGroupConfiguration.ServiceConfiguration],
    stopping: Logger.Message? = nil,
    logger: Logger
) async throws {
    let notice = ServiceGroupConfiguration.ServiceConfiguration(
        service: ShutdownNotice(message: stopping, logger: logger),
        successTerminationBehavior: .ignore,
        failureTerminationBehavior: .ignore,
        serviceName: "shutdown-notice"
    )
    var lifecycleLogger = logger
    lifecycleLogger[metadataKey: "component"] = "lifecycle"
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: services + [notice],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: lifecycleLogger
        )
    )
    try await group.run()
}

/// The last service of a daemon's group, so the first to hear its graceful shutdown: it logs
/// `message`, and restores the default action of SIGINT and SIGTERM (the group ignores them while
/// it runs) so that a second Ctrl-C ends a shutdown that takes too long.
private struct ShutdownNotice: Service {
    let message: Logger.Message?
    let logger: Logger

    func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled: the group is ending without a graceful shutdown
        }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        if let message { logger.notice(message) }
    }
}
