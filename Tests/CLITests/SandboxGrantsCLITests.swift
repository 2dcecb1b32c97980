import Foundation
import HangarTestSupport
import Testing

/// `hangar sandbox create` takes the grant options of `hangar run`, against a real `hangar dev`
/// cluster (process sandboxes in bubblewrap on a root node).
@Suite("hangar sandbox create with grants from the CLI")
struct SandboxGrantsCLITests {
    @Test(
        "--allow-net gives the sandbox a network of its own; a grant beyond the tenant's maximum is refused naming it"
    )
    func grants() async throws {
        try await withCLICluster { cluster in
            // The built-in maximum grants no host path.
            let refused = try await cluster.hangar(["sandbox", "create", "--allow-read", "/srv,/opt/data"])
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("grants.allow_read[0]"), "\(refused.stderr)")
            #expect(refused.stderr.contains("'/srv'"), "\(refused.stderr)")
            let badNetwork = try await cluster.hangar(["sandbox", "create", "--network", "internet"])
            #expect(badNetwork.status != 0)
            #expect(badNetwork.stderr.contains("--network must be"), "\(badNetwork.stderr)")

            // Any IPv4 destination is within it: the sandbox runs in a namespace with a veth
            // (besides loopback), which a sandbox without grants does not have.
            let created = try await cluster.hangar(["sandbox", "create", "--timeout", "60", "--allow-net", "192.0.2.1"])
            #expect(created.status == 0, "\(created.stderr)\n\(cluster.log)")
            let id = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let links = try await cluster.hangar([
                "sandbox", "exec", id, "--", "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort",
            ])
            #expect(links.status == 0, "\(links.stderr)")
            let names = links.stdout.split(separator: "\n").map(String.init)
            #expect(names.contains("lo") && names.contains { $0.hasPrefix("hgs") }, "\(links.stdout)")
            let killed = try await cluster.hangar(["sandbox", "kill", id])
            #expect(killed.status == 0, "\(killed.stderr)")

            let plain = try await cluster.hangar(["sandbox", "create", "--timeout", "60"])
            #expect(plain.status == 0, "\(plain.stderr)")
            let plainID = plain.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let plainLinks = try await cluster.hangar([
                "sandbox", "exec", plainID, "--", "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            ])
            #expect(plainLinks.stdout == "lo\n", "\(plainLinks.stdout)")
            _ = try await cluster.hangar(["sandbox", "kill", plainID])
        }
    }
}
