import Foundation
import HangarTestSupport
import Testing

/// `hangar dev --nats-servers 3`: a local cluster of three nats-servers, as a user tries one.
@Suite("hangar dev on three clustered nats-servers", .serialized)
struct DevClusterTests {
    @Test("three servers in STATE/url, every stream R3 with a leader, and a tenant added reaches every server")
    func threeServers() async throws {
        try await withCLICluster(nodes: 1, extra: ["--nats-servers", "3"]) { cluster in
            let urls = try String(contentsOf: cluster.state.appendingPathComponent("url"), encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").map(String.init)
            #expect(urls.count == 3 && Set(urls).count == 3, "\(urls)")

            let status = try await cluster.hangar(["cluster", "status", "-o", "json"])
            #expect(status.status == 0, "\(status.stderr)")
            let streams = try #require(try status.json()["streams"] as? [[String: Any]])
            #expect(streams.count == 3, "\(streams)")
            #expect(
                streams.allSatisfy { $0["replicas"] as? Int == 3 && !($0["leader"] as? String ?? "").isEmpty },
                "\(streams)"
            )

            // `tenant add acme` (done by the cluster's start) reloaded all three servers: acme logs
            // in to each one alone, and its job runs.
            for url in urls {
                let run = try await cluster.hangar(["run", "--nats", url, "--tenant", "acme", "--", "/bin/echo", url])
                #expect(run.status == 0, "through \(url): \(run.stderr)")
                #expect(run.stdout == url + "\n", "through \(url)")
            }
        }
    }

    @Test("--nats-servers takes 1 or 3, and --port only with one")
    func badOptions() async throws {
        let two = try await runHangar(["dev", "--nats-servers", "2"])
        #expect(two.status != 0 && two.stderr.contains("--nats-servers must be 1 or 3"), "\(two.stderr)")
        let port = try await runHangar(["dev", "--nats-servers", "3", "--port", "4999"])
        #expect(port.status != 0 && port.stderr.contains("--port"), "\(port.stderr)")
    }
}
