import Foundation
import HTTPTypes
import HangarClient
import HangarClusterTestSupport
import HangarGateway
import HangarNATS
import HangarShared
import HangarTestSupport
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@Suite("Gateway routing and its NATS login")
struct GatewayRoutingTests {
    @Test("a gateway logs in as itself and acts for any tenant on the sandbox subjects, nothing else")
    func actsForTenants() async throws {
        try await withAuthorizedCluster { cluster in
            let connection = try await cluster.login(.gateway("gw"))
            let directory = SandboxDirectory(connection: connection)
            // The scheduler answers a tenant's request into the gateway's inbox.
            for tenant in ["a", "b"] {
                let sandboxes = try await directory.client(for: tenant).listSandboxes()
                #expect(sandboxes.isEmpty)
            }
            // Jobs and admin are not the gateway's.
            await #expect(throws: (any Error).self) {
                _ = try await connection.request(
                    Subjects.submit(tenant: "a"),
                    payload: try nullJob(wait: false).serializedData(),
                    timeout: .seconds(2)
                )
            }
            await connection.close()
        }
    }

    @Test("calls naming a sandbox go to its envd or code-interpreter API; unknown ports are 502")
    func routesByHeader() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let gateway = try Self.gateway(connection)
            let app = Application(responder: gateway.responder())
            try await app.test(.router) { client in
                // A sandbox's /health needs its token: 401 from the envd and code-interpreter APIs.
                try await client.execute(uri: "/health", method: .get, headers: [.e2bSandboxID: "sbx1"]) { response in
                    #expect(response.status == .unauthorized)
                }
                try await client.execute(
                    uri: "/health",
                    method: .get,
                    headers: [.e2bSandboxID: "sbx1", .e2bSandboxPort: "49999"]
                ) { response in
                    #expect(response.status == .unauthorized)
                }
                try await client.execute(
                    uri: "/",
                    method: .get,
                    headers: [.e2bSandboxID: "sbx1", .e2bSandboxPort: "8080"]
                ) { response in
                    #expect(response.status == .badGateway)
                    #expect(String(buffer: response.body).contains("port is not open"))
                }
                try await client.execute(uri: "/health", method: .get, headers: [.e2bSandboxID: "../x"]) { response in
                    #expect(response.status == .badRequest)
                }
                // No sandbox named: the control plane, where /health is not a route.
                try await client.execute(uri: "/health", method: .get) { response in
                    #expect(response.status == .notFound)
                }
            }
            await connection.close()
        }
    }

    @Test("a PORT-ID.DOMAIN host name addresses a sandbox when a domain is configured")
    func routesByHost() async throws {
        try await withNATSServer { server in
            let connection = try await connectForTest(server)
            let gateway = try Self.gateway(connection, domain: "sbx.example")
            let app = Application(responder: gateway.responder())
            try await app.test(.live) { client in
                try await client.execute(
                    uri: "/health",
                    method: .get,
                    headers: [Self.hostField: "49983-sbx1.sbx.example"]
                ) {
                    #expect($0.status == .unauthorized)
                }
                try await client.execute(
                    uri: "/health",
                    method: .get,
                    headers: [Self.hostField: "49983-sbx1.other.example"]
                ) {
                    #expect($0.status == .notFound)
                }
            }
            await connection.close()
        }
    }

    /// `Host`, which HTTP/1.1 turns into the request's authority.
    static let hostField = HTTPField.Name("Host")!

    /// A gateway over `connection` (these routes never send anything on it).
    static func gateway(_ connection: NATSConnection, domain: String? = nil) throws -> Gateway {
        let secret = Data("test-secret-0123456789".utf8)
        return Gateway(
            configuration: GatewayConfiguration(domain: domain, secret: secret),
            authority: GatewayAuthority(
                keys: StaticAPIKeys([:]),
                tokens: try SandboxTokens(secret: secret),
                directory: SandboxDirectory(connection: connection)
            ),
            logger: Logger(label: "test")
        )
    }
}
