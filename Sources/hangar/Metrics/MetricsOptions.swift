import ArgumentParser

/// `--metrics-port` / `--metrics-address` of the daemons.
struct MetricsOptions: ParsableArguments {
    static let kinds: [String: DaemonConfigFile.Kind] = ["metrics_port": .integer, "metrics_address": .string]

    @Option(
        help: "Serve Prometheus metrics at http://ADDRESS:PORT/metrics; 0 picks a free port (logged). Default: off."
    )
    var metricsPort: Int?

    @Option(name: .customLong("metrics-address"), help: "IPv4 address the metrics server listens on. Default: 0.0.0.0.")
    var metricsAddressFlag: String?

    /// The address to listen on: the flag, else 0.0.0.0.
    var metricsAddress: String { metricsAddressFlag ?? "0.0.0.0" }

    /// These options with the config file's / environment's `metrics_port` and `metrics_address`
    /// below the flags.
    func with(_ file: DaemonConfigFile) throws -> MetricsOptions {
        var options = self
        if options.metricsPort == nil { options.metricsPort = try file.integer("metrics_port") }
        if options.metricsAddressFlag == nil { options.metricsAddressFlag = file.string("metrics_address") }
        return options
    }

    /// Starts the metrics server if a port was given; `refresh` sets the state gauges before a scrape.
    func start(refresh: @escaping @Sendable () async -> Void) async throws -> MetricsServer? {
        guard let metricsPort else { return nil }
        return try await MetricsServer.start(address: metricsAddress, port: metricsPort, refresh: refresh)
    }
}
