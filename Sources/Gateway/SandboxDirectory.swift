import Foundation
import HangarClient
import HangarNATS
import Logging

/// The gateway's view of the cluster: one NATS connection (the gateway's own login), a ``Hangar``
/// client per tenant it acts for, and the node each sandbox runs on (kept for a short while, so a
/// call into a sandbox does not ask the scheduler each time). It holds nothing that matters: after a
/// restart it asks again.
public actor SandboxDirectory {
    /// The connection every call goes over.
    public nonisolated let connection: NATSConnection
    /// How long the client calls wait.
    public nonisolated let timeouts: Hangar.Timeouts
    private var clients: [String: Hangar] = [:]
    private var sandboxes: [SandboxKey: (sandbox: Sandbox, until: ContinuousClock.Instant)] = [:]
    private let sandboxTTL: Duration

    private struct SandboxKey: Hashable {
        let tenant: String
        let id: String
    }

    /// A directory over `connection`; a sandbox's node is remembered for `sandboxTTL`.
    public init(connection: NATSConnection, timeouts: Hangar.Timeouts = .init(), sandboxTTL: Duration = .seconds(30)) {
        self.connection = connection
        self.timeouts = timeouts
        self.sandboxTTL = sandboxTTL
    }

    /// The client acting for `tenant`.
    public func client(for tenant: String) throws -> Hangar {
        if let client = clients[tenant] { return client }
        let client: Hangar
        do {
            client = try Hangar(connection: connection, tenant: tenant, timeouts: timeouts)
        } catch let error as HangarClientError {
            throw GatewayError(.unauthorized, error.message)
        }
        if clients.count >= 10_000 { clients.removeAll() }
        clients[tenant] = client
        return client
    }

    /// The running sandbox `id` of `tenant`; 404 if there is none or it has ended. `fresh` asks the
    /// scheduler even if the sandbox was seen a moment ago.
    public func sandbox(_ id: String, tenant: String, fresh: Bool = false) async throws -> Sandbox {
        let key = SandboxKey(tenant: tenant, id: id)
        let now = ContinuousClock.now
        if !fresh, let cached = sandboxes[key], cached.until > now { return cached.sandbox }
        let client = try client(for: tenant)
        let sandbox: Sandbox
        do {
            sandbox = try await client.sandbox(id)
        } catch let error as HangarClientError where error.kind == .notFound || error.kind == .notRunning {
            sandboxes[key] = nil
            throw GatewayError(.notFound, "The sandbox \(id) was not found")
        }
        if sandboxes.count >= 10_000 { sandboxes = sandboxes.filter { $0.value.until > now } }
        sandboxes[key] = (sandbox, now + sandboxTTL)
        return sandbox
    }

    /// Forgets `id` (it was killed, or a node said it does not hold it).
    public func forget(_ id: String, tenant: String) {
        sandboxes[SandboxKey(tenant: tenant, id: id)] = nil
    }
}
