import Foundation
import Glibc
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarClient

/// `SandboxOptions.grants` through the Swift client, a real cluster with bubblewrap sandboxes.
@Suite("HangarClient: sandbox grants", .serialized, .enabled(if: geteuid() == 0))
struct SandboxGrantsClientTests {
    @Test("allowNet gives the sandbox a network of its own; a path beyond the tenant's maximum is refused NOT_ALLOWED")
    func grants() async throws {
        try await withSandboxCluster { cluster, _ in
            let hangar = try Hangar(connection: cluster.tenantA, tenant: "a")
            do {
                _ = try await hangar.createSandbox(.init(grants: SandboxGrants(allowRead: ["/srv"])))
                Issue.record("a path grant beyond the maximum was accepted")
            } catch let error as HangarClientError {
                #expect(error.kind == .refused, "\(error)")
                #expect(error.message.contains("grants.allow_read[0]"), "\(error.message)")
            }
            let sandbox = try await hangar.createSandbox(
                .init(timeout: .seconds(60), grants: SandboxGrants(allowNet: ["192.0.2.0/24"]))
            )
            let links = try await sandbox.commands.run([
                "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            ])
            let names = links.stdoutText.split(separator: "\n").map(String.init)
            #expect(names.contains("lo") && names.contains { $0.hasPrefix("hgs") }, "\(links.stdoutText)")
            try await sandbox.kill()
        }
    }
}
