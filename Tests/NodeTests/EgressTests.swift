import Foundation
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

private typealias H = Hostile

/// Egress by domain on the runtimes that have it: a job granted host names gets a resolver of its
/// own that answers only those names (through a dnsmasq in a peer namespace that knows only the
/// test's records), and the addresses it gives are let through for their TTL — nothing else.
@Suite("Egress by domain: a resolver per job; addresses let through for their TTL", .serialized)
struct EgressTests {
    enum Kind: String, CaseIterable, CustomStringConvertible, Sendable {
        case process, container
        var description: String { rawValue }
        /// Sandbox users of its own, so that no other suite's sandbox runs as one of them.
        var users: SandboxUsers {
            switch self {
            case .process: SandboxUsers(first: 3_500_000, count: 8)
            case .container: SandboxUsers(first: 3_500_100, count: 8)
            }
        }
        func runtime(_ resources: NodeResources) -> any Runtime {
            switch self {
            case .process: ProcessRuntime(resources: resources)
            case .container: ContainerRuntime(directories: OCIKind.runc.directories, resources: resources)
            }
        }
    }

    @Test(
        "granted names resolve and connect on their port; other names NXDOMAIN; direct addresses, rebinding and denied names blocked; a moved name is followed",
        arguments: Kind.allCases
    )
    func byName(kind: Kind) async throws {
        let tag = H.tag()
        let peer = try TestPeer.start(tag: tag, subnet: .testNet)
        defer { peer.stop() }
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening, "the peer's servers did not listen within 10 s")
        let (near, far) = (peer.address(2), peer.address(3))
        try peer.startDNS(
            [
                "allowed.test": near, "other.test": far, "moving.test": near, "rebind.test": "10.1.2.3",
                "a.wild.test": far, "deny.wild.test": far,
            ],
            ttl: 1
        )
        let upstream = try #require(DNSUpstream(near))
        let runtime = kind.runtime(NodeResources(users: kind.users, dnsUpstream: upstream))
        let script = """
            import socket, sys, time
            near, far = sys.argv[2], sys.argv[3]
            def resolve(name):
                try:
                    return socket.gethostbyname(name)
                except socket.gaierror as error:
                    return 'NXDOMAIN' if error.errno == socket.EAI_NONAME else 'FAILED'
            def attempt(host, port, timeout=1.5):
                try:
                    with socket.create_connection((host, port), timeout=timeout) as s:
                        return 'OPEN:' + s.recv(64).decode()
                except OSError:
                    return 'BLOCKED'
            print('resolve_allowed', resolve('allowed.test'))
            print('allowed_8080', attempt('allowed.test', 8080))
            print('allowed_8081', attempt('allowed.test', 8081))
            print('resolve_other', resolve('other.test'))
            print('direct_far', attempt(far, 8080))
            print('resolve_rebind', resolve('rebind.test'))
            print('wild', attempt('a.wild.test', 8080))
            print('resolve_denied', resolve('deny.wild.test'))
            before = resolve('moving.test')
            print('moving_before', before, attempt(before, 8081))
            sys.stdout.flush()
            deadline = time.time() + 20
            moved = resolve('moving.test')
            while moved != far and time.time() < deadline:
                time.sleep(0.2)
                moved = resolve('moving.test')
            print('moving_after', moved, attempt(far, 8081))
            # The old address was let through for its TTL (at least 2 s) and must close again.
            deadline = time.time() + 15
            old = attempt(near, 8081, timeout=0.5)
            while old != 'BLOCKED' and time.time() < deadline:
                time.sleep(0.2)
                old = attempt(near, 8081, timeout=0.5)
            print('moving_old', old)
            """
        var spec = Hangar_V1_JobSpec()
        spec.argv = ["/usr/bin/python3", "-c", script, "egress-\(tag)", near, far]
        spec.limits.timeoutMs = 60_000
        spec.network.mode = .networkAllowlist
        spec.grants.allowNet = ["allowed.test:8080", "moving.test", "*.wild.test:8080"]
        spec.grants.denyNet = ["deny.wild.test"]
        // The records change once the job has asked for moving.test (dnsmasq logs each query).
        let mover = Task {
            let asked = await eventually(within: .seconds(40)) { peer.dnsLog.contains("query[A] moving.test") }
            if asked { try? peer.setRecords(["moving.test": far, "allowed.test": near]) }
            return asked
        }
        let outcome = await runtime.run(spec, jobID: "egress-\(kind)-\(tag)")
        mover.cancel()
        let stdout = String(decoding: outcome.stdout, as: UTF8.self)
        let summary =
            "\(outcome.status) “\(outcome.message)” stdout: \(stdout) stderr: \(String(decoding: outcome.stderr, as: UTF8.self).prefix(800)) dns: \(peer.dnsLog.suffix(1500))"
        func field(_ key: String) -> [String]? {
            stdout.split(separator: "\n").first { $0.hasPrefix(key + " ") }
                .map { $0.split(separator: " ").dropFirst().map(String.init) }
        }
        #expect(outcome.status == .succeeded, "\(summary)")
        #expect(await mover.value, "the job never asked for moving.test: \(summary)")
        #expect(field("resolve_allowed") == [near], "\(summary)")
        #expect(field("allowed_8080") == ["OPEN:hello@\(near):8080"], "\(summary)")
        #expect(field("allowed_8081") == ["BLOCKED"], "granted on port 8080 only: \(summary)")
        #expect(field("resolve_other") == ["NXDOMAIN"], "\(summary)")
        #expect(field("direct_far") == ["BLOCKED"], "\(summary)")
        #expect(
            [["FAILED"], ["NXDOMAIN"]].contains(field("resolve_rebind")),
            "a granted name may not resolve to a private address: \(summary)"
        )
        #expect(field("wild") == ["OPEN:hello@\(far):8080"], "\(summary)")
        #expect(field("resolve_denied") == ["NXDOMAIN"], "deny wins over *.wild.test: \(summary)")
        #expect(field("moving_before") == [near, "OPEN:hello@\(near):8081"], "\(summary)")
        #expect(field("moving_after") == [far, "OPEN:hello@\(far):8081"], "\(summary)")
        #expect(field("moving_old") == ["BLOCKED"], "the old address stays open past its TTL: \(summary)")
        // Nothing the job was refused reached the upstream: the resolver answered it itself.
        #expect(!peer.dnsLog.contains("other.test"), "\(peer.dnsLog)")
        #expect(!peer.dnsLog.contains("deny.wild.test"), "\(peer.dnsLog)")
    }

    @Test("a job granted every address resolves any name; without a resolver upstream, a name grant is an error")
    func everyAddressAndNoUpstream() async throws {
        let tag = H.tag()
        let peer = try TestPeer.start(tag: tag, subnet: .testNet)
        defer { peer.stop() }
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening)
        try peer.startDNS(["anything.test": peer.address(3)])
        let runtime = ProcessRuntime(
            resources: NodeResources(users: Kind.process.users, dnsUpstream: try #require(DNSUpstream(peer.address(2))))
        )
        var spec = Hangar_V1_JobSpec()
        spec.argv = [
            "/usr/bin/python3", "-c",
            "import socket; s = socket.create_connection(('anything.test', 8080), timeout=3); print(s.recv(64).decode())",
        ]
        spec.limits.timeoutMs = 30_000
        spec.network.mode = .networkAllowlist
        spec.network.allow = ["0.0.0.0/0"]
        let outcome = await runtime.run(spec, jobID: "egress-any-\(tag)")
        #expect(
            String(decoding: outcome.stdout, as: UTF8.self) == "hello@\(peer.address(3)):8080\n",
            "\(outcome.status) \(outcome.message) \(String(decoding: outcome.stderr, as: UTF8.self))"
        )

        let without = ProcessRuntime(resources: NodeResources(users: Kind.process.users, dnsUpstream: nil))
        spec.network.allow = []
        spec.grants.allowNet = ["anything.test"]
        let refused = await without.run(spec, jobID: "egress-noupstream-\(tag)")
        #expect(refused.status == .error)
        #expect(refused.message.contains("no upstream DNS resolver"), "\(refused.message)")
    }
}

/// The resolver's pure parts: the DNS messages it reads and writes, and what a grant set lets resolve.
@Suite("Egress resolver: DNS messages and name decisions")
struct EgressDecisionTests {
    /// A query for `name` of `type`, id 0x1234.
    static func query(_ name: String, type: UInt16 = 1) -> [UInt8] {
        var bytes: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") { bytes += [UInt8(label.utf8.count)] + Array(label.utf8) }
        return bytes + [0, UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
    }

    @Test("a query's question is read; replies repeat it with the code; malformed messages are nil")
    func messages() throws {
        let bytes = Self.query("Api.Example.COM")
        let query = try #require(DNSMessage.query(bytes))
        #expect(query.id == 0x1234)
        #expect(query.question == .init(name: "api.example.com", type: 1, recordClass: 1))
        let reply = DNSMessage.reply(to: query, code: .nameError)
        #expect(reply.count == bytes.count && reply[2] & 0x80 != 0 && reply[3] & 0x0F == 3)
        // A response: the question (compressed answer names), a CNAME to b.example.com, its A record.
        var answer = bytes
        answer[2] = 0x81
        answer[3] = 0x80
        answer[7] = 2
        answer += [0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, UInt8(ascii: "b"), 0xC0, 16]  // CNAME b.example.com
        answer += [0xC0, UInt8(bytes.count + 12), 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 51, 100, 7]
        let parsed = try #require(DNSMessage.answer(answer))
        let expected: UInt32 = 0xC633_6407  // 198.51.100.7
        #expect(parsed.addresses.map(\.address) == [expected])
        #expect(parsed.addresses.map(\.ttl) == [30])
        // An A record for a name outside the question's chain is not the question's address.
        var stray = bytes
        stray[2] = 0x81
        stray[7] = 1
        stray += [1, UInt8(ascii: "x"), 0, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]
        #expect(try #require(DNSMessage.answer(stray)).addresses.isEmpty)
        // Truncated, a pointer loop, a pointer forwards, a response where a query belongs.
        #expect(DNSMessage.query(Array(bytes.dropLast())) == nil)
        #expect(DNSMessage.query([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]) == nil)
        #expect(DNSMessage.query([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 20, 0, 1, 0, 1]) == nil)
        #expect(DNSMessage.query(answer) == nil)
        // A pointer into the header (found by the fuzzer): the question would change with the id.
        #expect(DNSMessage.query([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0, 0, 1, 0, 1]) == nil)
        for length in 0..<answer.count { _ = DNSMessage.answer(Array(answer.prefix(length))) }
    }

    @Test("deny wins over allow; *.domain is only its subdomains; ports add up; 0.0.0.0/0 resolves any name")
    func decisions() throws {
        var grants = Hangar_V1_Grants()
        grants.allowNet = ["api.example.com:443", "api.example.com:8443", "*.cdn.test", "plain.test"]
        grants.denyNet = ["bad.cdn.test", "203.0.113.0/24"]
        let egress = try Egress(network: Hangar_V1_NetworkPolicy(), grants: grants)
        #expect(egress.decide("api.example.com") == .granted(ports: [443, 8443]))
        #expect(egress.decide("x.cdn.test") == .granted(ports: [nil]))
        #expect(egress.decide("cdn.test") == .refused)
        #expect(egress.decide("bad.cdn.test") == .refused)
        #expect(egress.decide("plain.test") == .granted(ports: [nil]))
        #expect(egress.decide("example.com") == .refused)
        #expect(egress.resolves && !egress.allowsEveryAddress)
        // Rebinding: internal addresses refused unless an allowed network covers them; denied ones always.
        let (privateAddress, loopback, denied, publicAddress): (UInt32, UInt32, UInt32, UInt32) =
            (0x0A00_0001, 0x7F00_0001, 0xCB00_7105, 0xC633_6405)
        #expect(!egress.mayResolve(to: privateAddress))
        #expect(!egress.mayResolve(to: loopback))
        #expect(!egress.mayResolve(to: denied))
        #expect(egress.mayResolve(to: publicAddress))
        var network = Hangar_V1_NetworkPolicy()
        network.allow = ["0.0.0.0/0"]
        let any = try Egress(network: network, grants: grants)
        #expect(any.decide("anything.org") == .granted(ports: []))
        #expect(any.decide("bad.cdn.test") == .refused)
        #expect(any.mayResolve(to: privateAddress))
        #expect(!(try Egress(network: Hangar_V1_NetworkPolicy(), grants: Hangar_V1_Grants())).resolves)
    }

    @Test("the namespace's rules: DNS to the resolver, denies before allows, ports kept")
    func rules() throws {
        var grants = Hangar_V1_Grants()
        grants.allowNet = ["198.51.100.0/24", "203.0.113.7:443", "api.example.com"]
        grants.denyNet = ["198.51.100.9"]
        var network = Hangar_V1_NetworkPolicy()
        network.allow = ["192.0.2.0/24"]
        let ruleset = JobNetwork.ruleset(try Egress(network: network, grants: grants), gateway: "10.254.0.5")
        let lines = ruleset.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let deny = try #require(lines.firstIndex(of: "ip daddr 198.51.100.9/32 drop"))
        let allow = try #require(lines.firstIndex(of: "ip daddr 198.51.100.0/24 accept"))
        #expect(deny < allow)
        #expect(lines.contains("ip daddr 203.0.113.7/32 meta l4proto { tcp, udp } th dport 443 accept"))
        #expect(lines.contains("ip daddr 192.0.2.0/24 accept"))
        #expect(lines.contains("ip daddr 10.254.0.5 udp dport 53 accept"))
        #expect(lines.contains("ip daddr 10.254.0.1 udp dport 53 dnat ip to 10.254.0.5"))
        let gatewayDrop = try #require(lines.firstIndex(of: "ip daddr { 10.254.0.5, 169.254.0.0/16 } drop"))
        #expect(try #require(lines.firstIndex(of: "ip daddr 10.254.0.5 udp dport 53 accept")) < gatewayDrop)
    }
}
