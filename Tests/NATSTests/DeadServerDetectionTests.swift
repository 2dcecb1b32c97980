import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("NATS binding: a server that vanishes without closing its connections")
struct DeadServerDetectionTests {
    @Test("a server whose host is cut off is counted dead after the unanswered pings, not minutes later")
    func cutOffServerIsNoticed() async throws {
        let network = try TestNetwork(tag: String(UUID().uuidString.prefix(5)).lowercased())
        defer { network.stop() }
        let host = try network.addHost()
        let directory = try makeTemporaryDirectory("hangar-dead-server")
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("nats.conf")
        try "listen: \(host.address):-1\n".write(to: config, atomically: true, encoding: .utf8)
        let server = try await LocalNATSServer(
            configFile: config,
            environment: [:],
            directory: directory,
            networkNamespace: host.namespace
        )
        defer { server.stop() }

        var options = NATSConnectionOptions(servers: [server.url], name: "ping-test")
        options.pingInterval = .milliseconds(300)
        options.maxPingsOut = 2
        let connection = try await NATSConnection(options: options)
        #expect(connection.isConnected)

        // The link goes down: no FIN, no RST reaches the client; only its unanswered pings tell.
        try network.cut(host)
        let cut = ContinuousClock.now
        let deadline = cut + .seconds(10)
        while connection.isConnected, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let noticed = cut.duration(to: .now)
        #expect(!connection.isConnected, "still counted connected \(noticed) after the cut")
        // Three ping intervals at most (0.9 s), with room for a loaded machine.
        #expect(noticed < .seconds(5), "noticed only after \(noticed)")

        // Healed, it reconnects by itself.
        try network.heal(host)
        let back = ContinuousClock.now + .seconds(20)
        while !connection.isConnected, ContinuousClock.now < back {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(connection.isConnected, "not reconnected within 20 s of the heal")
        await connection.close()
    }
}
