import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

private typealias H = Hostile

/// A peer "outside host" for allowlist tests: a network namespace joined to the host by a veth pair
/// (host `10.253.K.1/29`, peer `.2` and `.3`) with a TCP server on port 8080 of the peer that answers
/// "hello". Nothing here leaves the machine.
private struct Peer {
    let name: String
    let hostInterface: String
    let base: String
    let server: Process

    static func start(tag: String) throws -> Peer {
        let k = Int.random(in: 1...250)
        let suffix = String(tag.suffix(6))
        let name = "hangar-testpeer-\(suffix)"
        let hostInterface = "hgtp\(suffix)"
        let base = "10.253.\(k)."
        let commands = [
            ["ip", "netns", "add", name],
            ["ip", "link", "add", hostInterface, "type", "veth", "peer", "name", "hgtq\(suffix)"],
            ["ip", "link", "set", "hgtq\(suffix)", "netns", name],
            ["ip", "addr", "add", base + "1/29", "dev", hostInterface],
            ["ip", "link", "set", hostInterface, "up"],
            ["ip", "-n", name, "addr", "add", base + "2/29", "dev", "hgtq\(suffix)"],
            ["ip", "-n", name, "addr", "add", base + "3/29", "dev", "hgtq\(suffix)"],
            ["ip", "-n", name, "link", "set", "hgtq\(suffix)", "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "-n", name, "route", "add", "default", "via", base + "1"],
        ]
        for command in commands { try shell(command) }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        server.arguments = [
            "netns", "exec", name, "/usr/bin/python3", "-c",
            """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('0.0.0.0', 8080)); s.listen(16)
            while True:
                c, _ = s.accept(); c.sendall(b'hello'); c.close()
            """,
        ]
        try server.run()
        return Peer(name: name, hostInterface: hostInterface, base: base, server: server)
    }

    /// Whether the server listens on port 8080 in the peer's namespace: a LISTEN (`0A`) socket on
    /// `0.0.0.0:8080` (`00000000:1F90`) in `/proc/<pid>/net/tcp`, which shows the server's namespace.
    var listening: Bool {
        let table = (try? String(contentsOfFile: "/proc/\(server.processIdentifier)/net/tcp", encoding: .utf8)) ?? ""
        return table.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[1] == "00000000:1F90" && fields[3] == "0A"
        }
    }

    func stop() {
        // Everything in the peer namespace (the server, whatever `ip netns exec` left) is killed.
        let pids = (try? Self.shell(["ip", "netns", "pids", name])) ?? ""
        for pid in pids.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
        kill(server.processIdentifier, SIGKILL)
        _ = try? Self.shell(["ip", "link", "del", hostInterface])
        _ = try? Self.shell(["ip", "netns", "del", name])
    }

    @discardableResult
    static func shell(_ argv: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/" + argv[0])
        process.arguments = Array(argv.dropFirst())
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw PeerError(message: "\(argv.joined(separator: " ")): \(output)")
        }
        return output
    }
}

private struct PeerError: Error {
    var message: String
}

/// Network namespaces and host interfaces the node made for jobs (`hangar-<n>`, `hgh<n>`).
private func jobNetworks() -> [String] {
    let namespaces = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
    let interfaces = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? []
    return
        (namespaces.filter { $0.hasPrefix("hangar-") && !$0.hasPrefix("hangar-testpeer") }
        + interfaces.filter { $0.hasPrefix("hgh") }).sorted()
}

@Suite("NETWORK_ALLOWLIST: egress only to the allowed CIDRs", .serialized)
struct NetworkAllowlistTests {
    @Test(
        "18. an allowlisted peer answers; another address, the host, loopback services and metadata do not",
        arguments: HostileRuntime.allCases
    )
    func allowlist(kind: HostileRuntime) async throws {
        let tag = H.tag()
        let peer = try Peer.start(tag: tag)
        defer { peer.stop() }
        guard let hostListener = H.loopbackListener() else {
            Issue.record("no host listener")
            return
        }
        defer { close(hostListener.fd) }
        let before = jobNetworks()
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening, "the peer's server did not listen on \(peer.base)2:8080 within 10 s")
        let script = """
            import socket, sys
            def attempt(host, port):
                try:
                    with socket.create_connection((host, port), timeout=2) as s:
                        return 'OPEN:' + s.recv(16).decode()
                except OSError as error:
                    return 'BLOCKED'
            gateway = '-'
            for line in open('/proc/net/route').read().splitlines()[1:]:
                fields = line.split()
                if fields[1] == '00000000':
                    raw = bytes.fromhex(fields[2])[::-1]
                    gateway = '.'.join(str(b) for b in raw)
            print('allowed', attempt(sys.argv[2] + '2', 8080))
            print('other', attempt(sys.argv[2] + '3', 8080))
            print('gateway', gateway != '-' and attempt(gateway, int(sys.argv[3])) or 'BLOCKED')
            print('loopback', attempt('127.0.0.1', int(sys.argv[3])))
            print('metadata', attempt('169.254.169.254', 80))
            """
        let run = await H.python(
            kind,
            "allowlist",
            script,
            arguments: [peer.base, String(hostListener.port)],
            tag: tag
        ) {
            $0.network.mode = .networkAllowlist
            $0.network.allow = [peer.base + "2/32"]
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
            #expect(run.field("allowed") == ["OPEN:hello"], "\(run.summary)")
            #expect(run.field("other") == ["BLOCKED"], "\(run.summary)")
            #expect(run.field("gateway") == ["BLOCKED"], "\(run.summary)")
            #expect(run.field("loopback") == ["BLOCKED"], "\(run.summary)")
            #expect(run.field("metadata") == ["BLOCKED"], "\(run.summary)")
            #expect(!H.somebodyConnected(to: hostListener.fd))
        }
        // Other suites run network jobs in parallel: their namespaces may come and go during this
        // test, so what must hold is that nothing new is left once the suites around us settle.
        let released = await eventually(within: .seconds(10)) { Set(jobNetworks()).isSubset(of: before) }
        #expect(released, "the job's namespace or veth is left behind: \(jobNetworks()) (before: \(before))")
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
