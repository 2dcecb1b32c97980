import Foundation
import Glibc
import HTTPTypes
import HangarClient
import HangarClusterTestSupport
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@testable import HangarGateway

/// E2B's network options of a create (`allow_internet_access`, `network.allowOut/denyOut`) as
/// Hangar grants: the mapping itself, and through a real cluster (scheduler, node n1 with real
/// bubblewrap sandboxes) the scheduler's verdict on what the gateway passed on, its refusals as
/// E2B's 400 with the scheduler's message.
@Suite("Gateway: E2B network options as grants")
struct NetworkOptionsMappingTests {
    @Test(
        "internet access true is allow_net 0.0.0.0/0; false is no network; unset is the tenant's default (nil); allowOut/denyOut pass through"
    )
    func mapping() throws {
        #expect(try Gateway.networkGrants([:]) == nil)
        #expect(try Gateway.networkGrants(["allow_internet_access": NSNull()]) == nil)
        #expect(try Gateway.networkGrants(["allow_internet_access": false]) == SandboxGrants())
        #expect(try Gateway.networkGrants(["allow_internet_access": true])?.allowNet == ["0.0.0.0/0"])
        #expect(try Gateway.networkGrants(["allowInternetAccess": true])?.allowNet == ["0.0.0.0/0"])
        let both = try #require(
            try Gateway.networkGrants([
                "allow_internet_access": true,
                "network": [
                    "allowOut": ["0.0.0.0/0", "api.example.com", "203.0.113.0/24"], "denyOut": ["203.0.113.9"],
                ],
            ])
        )
        #expect(both.allowNet == ["0.0.0.0/0", "api.example.com", "203.0.113.0/24"])
        #expect(both.denyNet == ["203.0.113.9"])
        #expect(both.allowRead.isEmpty && both.allowWrite.isEmpty)
        let only = try Gateway.networkGrants(["network": ["allowOut": ["198.51.100.7"], "allowPublicTraffic": true]])
        #expect(only == SandboxGrants(allowNet: ["198.51.100.7"]))
        // Empty lists and nulls, as the SDK may send them, ask for nothing.
        let empty = try Gateway.networkGrants([
            "network": [
                "allowOut": [String](), "denyOut": NSNull(), "rules": [String: Any](), "dnsServers": [String](),
            ]
        ])
        #expect(empty == SandboxGrants())
    }

    @Test("malformed options and network features Hangar lacks are 400, never ignored")
    func refusals() {
        let cases: [([String: Any], String)] = [
            (["allow_internet_access": "yes"], "allow_internet_access must be true or false"),
            (["network": "open"], "network must be an object"),
            (["network": ["allowOut": "1.2.3.4"]], "network.allowOut must be a list of strings"),
            (["network": ["denyOut": [1, 2]]], "network.denyOut must be a list of non-empty strings"),
            (["network": ["allowOut": Array(repeating: "1.2.3.4", count: 33)]], "at most 32"),
            (["network": ["egressProxy": ["address": "proxy:3128"]]], "egress proxy"),
            (["network": ["rules": ["api.example.com": [["transform": [:]]]]]], "request rules"),
            (["network": ["maskRequestHost": "x.example.com"]], "maskRequestHost"),
            (["network": ["dnsServers": ["1.1.1.1"]]], "DNS servers"),
        ]
        for (body, text) in cases {
            do {
                let grants = try Gateway.networkGrants(body)
                Issue.record("\(body) was accepted as \(grants)")
            } catch let error as GatewayError {
                #expect(error.kind == .badRequest, "\(body)")
                #expect(error.message.contains(text), "\(body): \(error.message)")
            } catch {
                Issue.record("\(body): \(error)")
            }
        }
    }
}

@Suite("Gateway: E2B network options through a real cluster", .serialized, .enabled(if: geteuid() == 0))
struct NetworkOptionsClusterTests {
    @Test(
        "allowOut makes a sandbox with those grants, internet access is 0.0.0.0/0; what the scheduler refuses is E2B's 400 with its message; unset is no network"
    )
    func throughTheScheduler() async throws {
        try await ControlPlaneTests.withGatewayAndHost { cluster, host, gateway, keys in
            let key = keys.a
            let headers: HTTPFields = [.xAPIKey: key, .contentType: "application/json"]
            let app = Application(responder: gateway.responder())
            try await app.test(.router) { client in
                func create(_ body: [String: Any]) async throws -> (HTTPResponse.Status, [String: Any]) {
                    try await client.execute(
                        uri: "/v2/sandboxes",
                        method: .post,
                        headers: headers,
                        body: ControlPlaneTests.body(["templateID": "base"].merging(body) { $1 })
                    ) { response in
                        (response.status, try ControlPlaneTests.object(response.body))
                    }
                }
                // The tenant's default maximum is any IPv4 destination: allowOut is granted, and the
                // sandbox runs on its node with the allowlist.
                let (status, created) = try await create(["network": ["allowOut": ["203.0.113.0/24"]]])
                #expect(status == .created, "\(created)")
                let id = try #require(created["sandboxID"] as? String)
                let stored = try #require(try await cluster.scheduler.store.sandbox(id: id))
                #expect(stored.request.grants.allowNet == ["203.0.113.0/24"])
                #expect(stored.request.network.mode == .networkAllowlist)
                #expect(stored.request.network.allow == ["203.0.113.0/24"])
                #expect(host.sandboxIDs.contains(id))
                // Internet access is 0.0.0.0/0, which also grants any name: it runs where the node has
                // an upstream DNS resolver, and is otherwise refused by the node saying so (never run
                // without it).
                let (internetStatus, internet) = try await create(["allow_internet_access": true])
                #expect(
                    internetStatus == .created
                        || (internet["message"] as? String)?.contains("dns-upstream") == true,
                    "\(internet)"
                )

                // Unset: no network.
                let (plainStatus, plain) = try await create([:])
                #expect(plainStatus == .created, "\(plain)")
                let plainID = try #require(plain["sandboxID"] as? String)
                let plainStored = try #require(try await cluster.scheduler.store.sandbox(id: plainID))
                #expect(!plainStored.request.hasGrants && plainStored.request.network.allow.isEmpty)

                // What the scheduler refuses comes back as E2B's 400 with the scheduler's message.
                let (beyondStatus, beyond) = try await create(["network": ["allowOut": ["203.0.113.0/24:99999"]]])
                #expect(beyondStatus == .badRequest, "\(beyond)")
                #expect((beyond["message"] as? String)?.contains("grants.allow_net[0]") == true, "\(beyond)")
            }
        }
    }

    @Test("the real e2b SDK sends allow_internet_access and network.allowOut as the gateway reads them")
    func realSDK() async throws {
        try await ControlPlaneTests.withGateway { cluster, gateway, keys in
            let key = keys.a
            let app = Application(responder: gateway.responder())
            try await app.test(.live) { client in
                let port = try #require(client.port)
                let script = """
                    from e2b import Sandbox
                    try:
                        s = Sandbox.create(allow_internet_access=True, metadata={"net": "on"}, timeout=60)
                        print("INTERNET", s.sandbox_id)
                        s.kill()
                    except Exception as e:
                        print("INTERNET REFUSED", e)
                    s = Sandbox.create(network={"allow_out": ["203.0.113.0/24"]}, metadata={"net": "cidr"}, timeout=60)
                    print("CIDR", s.sandbox_id)
                    s.kill()
                    try:
                        Sandbox.create(network={"allow_out": ["api.example.com"]}, timeout=60)
                        print("NAME ACCEPTED")
                    except Exception as e:
                        print("NAME REFUSED", type(e).__name__, e)
                    import os, sys
                    sys.stdout.flush()
                    os._exit(0)
                    """
                let output = try await ControlPlaneTests.runPython(
                    script,
                    environment: [
                        "E2B_API_URL": "http://127.0.0.1:\(port)", "E2B_SANDBOX_URL": "http://127.0.0.1:\(port)",
                        "E2B_API_KEY": key,
                    ]
                )
                #expect(output.status == 0, "\(output.text)")
                let lines = output.text.split(separator: "\n").map(String.init)
                // Internet access runs where the node has an upstream DNS resolver (0.0.0.0/0 also
                // grants names), else the node refuses it saying so.
                if let on = lines.first(where: { $0.hasPrefix("INTERNET s") }) {
                    let onStored = try #require(
                        try await cluster.scheduler.store.sandbox(id: String(on.dropFirst("INTERNET ".count)))
                    )
                    #expect(onStored.request.network.allow == ["0.0.0.0/0"])
                } else {
                    #expect(
                        lines.contains { $0.hasPrefix("INTERNET REFUSED") && $0.contains("dns-upstream") },
                        "\(output.text)"
                    )
                }
                let cidr = try #require(lines.first { $0.hasPrefix("CIDR ") }, "\(output.text)")
                let cidrStored = try #require(
                    try await cluster.scheduler.store.sandbox(id: String(cidr.dropFirst("CIDR ".count)))
                )
                #expect(cidrStored.request.network.allow == ["203.0.113.0/24"])
                // A host name: granted (names are enforced where the node has upstream DNS), or refused
                // with the reason.
                #expect(
                    lines.contains { $0.hasPrefix("NAME REFUSED") } || lines.contains("NAME ACCEPTED"),
                    "\(output.text)"
                )
            }
        }
    }
}
