import Foundation
import Glibc
import HangarNode
import HangarShared
import HangarTestSupport
import Testing

private typealias H = Hostile

/// Network namespaces and host interfaces the node made for jobs (`hangar-<n>`, `hgh<n>`).
private func jobNetworks() -> [String] {
    let namespaces = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
    let interfaces = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? []
    return
        (namespaces.filter { $0.hasPrefix("hangar-") && !$0.hasPrefix("hangar-testpeer") }
        + interfaces.filter { $0.hasPrefix("hgh") }).sorted()
}

/// The network namespaces under `/run/netns`, each as `net:[inode]` (what `/proc/PID/ns/net` reads).
private func namespaceIdentities() -> [String: String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
    var identities: [String: String] = [:]
    for name in names {
        var info = stat()
        if stat("/run/netns/" + name, &info) == 0 { identities[name] = "net:[\(info.st_ino)]" }
    }
    return identities
}

@Suite("NETWORK_ALLOWLIST: egress only to the allowed CIDRs", .serialized)
struct NetworkAllowlistTests {
    @Test(
        "18. an allowlisted peer answers; another address, the host, loopback services and metadata do not",
        arguments: HostileRuntime.allCases
    )
    func allowlist(kind: HostileRuntime) async throws {
        let tag = H.tag()
        let peer = try TestPeer.start(tag: tag)
        defer { peer.stop() }
        guard let hostListener = H.loopbackListener() else {
            Issue.record("no host listener")
            return
        }
        defer { close(hostListener.fd) }
        let before = jobNetworks()
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening, "the peer's server did not listen on \(peer.address(2)):8080 within 10 s")
        let script = """
            import os, socket, sys
            print('netns', os.readlink('/proc/self/ns/net'))
            def attempt(host, port):
                try:
                    with socket.create_connection((host, port), timeout=2) as s:
                        return 'OPEN:' + s.recv(64).decode()
                except OSError as error:
                    return 'BLOCKED'
            gateway = '-'
            for line in open('/proc/net/route').read().splitlines()[1:]:
                fields = line.split()
                if fields[1] == '00000000':
                    raw = bytes.fromhex(fields[2])[::-1]
                    gateway = '.'.join(str(b) for b in raw)
            print('allowed', attempt(sys.argv[2], 8080))
            print('other', attempt(sys.argv[4], 8080))
            print('gateway', gateway != '-' and attempt(gateway, int(sys.argv[3])) or 'BLOCKED')
            print('loopback', attempt('127.0.0.1', int(sys.argv[3])))
            print('metadata', attempt('169.254.169.254', 80))
            """
        let run = await H.python(
            kind,
            "allowlist",
            script,
            arguments: [peer.address(2), String(hostListener.port), peer.address(3)],
            tag: tag
        ) {
            $0.network.mode = .networkAllowlist
            $0.network.allow = [peer.address(2) + "/32"]
            $0.limits.timeoutMs = 30_000
        }
        if kind == .gvisor {
            // Defence: refused before anything runs; gVisor keeps its own network stack.
            #expect(run.outcome.status == .error, "\(run.summary)")
            #expect(run.outcome.message.contains("not supported by the gvisor runtime"), "\(run.summary)")
        } else {
            #expect(run.outcome.status == .succeeded, "\(run.summary)")
            // Defence: the nftables output chain in the job's namespace (policy drop, allowed CIDRs
            // only, never the gateway or link-local), and the host's input filter for job veths.
            #expect(run.field("allowed") == ["OPEN:hello@\(peer.address(2)):8080"], "\(run.summary)")
            #expect(run.field("other") == ["BLOCKED"], "\(run.summary)")
            #expect(run.field("gateway") == ["BLOCKED"], "\(run.summary)")
            #expect(run.field("loopback") == ["BLOCKED"], "\(run.summary)")
            #expect(run.field("metadata") == ["BLOCKED"], "\(run.summary)")
            #expect(!H.somebodyConnected(to: hostListener.fd))
        }
        // The job's own namespace is gone (its veth pair goes with it). Other suites run network
        // jobs in parallel, so the job's is told from theirs by its inode, which the job printed.
        if let netns = run.field("netns")?.first {
            let released = await eventually(within: .seconds(10)) { !namespaceIdentities().values.contains(netns) }
            #expect(
                released,
                "the job's namespace \(netns) is left behind: \(namespaceIdentities()) (before: \(before))"
            )
        } else {
            #expect(kind == .gvisor, "the job printed no namespace: \(run.summary)")
        }
        await H.expectHostUnharmed(after: run)
    }

    @Test("a bad CIDR is refused before anything is set up")
    func badCIDR() async {
        let run = await H.shell(.process, "badcidr", "true") {
            $0.network.mode = .networkAllowlist
            $0.network.allow = ["10.0.0.0/33"]
        }
        #expect(run.outcome.status == .error)
        #expect(run.outcome.message.contains("not an IPv4 CIDR"), "\(run.summary)")
    }
}
