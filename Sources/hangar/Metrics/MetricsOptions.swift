import ArgumentParser

/// `--metrics-port` / `--metrics-address` of the daemons.
struct MetricsOptions: ParsableArguments {
    @Option(
        help: "Serve Prometheus metrics at http://ADDRESS:PORT/metrics; 0 picks a free port (logged). Default: off."
    )
    var metricsPort: Int?

    @Option(help: "IPv4 address the metrics server listens on.")
    var metricsAddress: String = "0.0.0.0"

    /// Starts the metrics server if a port was given; `refresh` sets the state gauges before a scrape.
    func start(refresh: @escaping @Sendable () async -> Void) async throws -> MetricsServer? {
        guard let metricsPort else { return nil }
        return try await MetricsServer.start(address: metricsAddress, port: metricsPort, refresh: refresh)
    }
}
