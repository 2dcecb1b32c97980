import CoreMetrics
import FlyingFox
import Foundation
import Prometheus

/// Prometheus `/metrics` over HTTP (FlyingFox), for `--metrics-port`. Before each scrape it runs
/// `refresh`, which sets the gauges that describe current state (queue depth, node capacity).
final class MetricsServer: Sendable {
    let registry: PrometheusCollectorRegistry
    private let server: HTTPServer
    private let task: Task<Void, any Error>
    /// The port it listens on (the chosen one when asked for port 0).
    let port: Int

    /// Bootstraps swift-metrics with a Prometheus registry (once per process) and listens on
    /// `address:port` (port 0: a free port).
    static func start(
        address: String,
        port: Int,
        refresh: @escaping @Sendable () async -> Void
    ) async throws -> MetricsServer {
        guard (0...65535).contains(port) else {
            throw CLIError("--metrics-port must be 0...65535 (0: a free port), got \(port)")
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let socketAddress: sockaddr_in
        do {
            socketAddress = try .inet(ip4: address, port: UInt16(port))
        } catch {
            throw CLIError("--metrics-address must be an IPv4 address, got '\(address)'")
        }
        let server = HTTPServer(address: socketAddress, logger: .disabled)
        await server.appendRoute("GET /metrics") { _ in
            await refresh()
            return HTTPResponse(
                statusCode: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: Data(registry.emitToBuffer())
            )
        }
        let task = Task { try await server.run() }
        do {
            try await server.waitUntilListening(timeout: 5)
        } catch {
            task.cancel()
            throw CLIError("cannot serve metrics on \(address):\(port): \(error)")
        }
        guard case .ip4(_, let chosen) = await server.listeningAddress else {
            task.cancel()
            throw CLIError("the metrics server on \(address):\(port) has no IPv4 address")
        }
        return MetricsServer(registry: registry, server: server, task: task, port: Int(chosen))
    }

    private init(registry: PrometheusCollectorRegistry, server: HTTPServer, task: Task<Void, any Error>, port: Int) {
        self.registry = registry
        self.server = server
        self.task = task
        self.port = port
    }

    func stop() async {
        await server.stop(timeout: 1)
        task.cancel()
    }
}
