import Foundation
import Glibc
import HangarShared

/// A peer "outside host" for network tests: a network namespace joined to the host by a veth pair,
/// on a /29 of its own (the host end is address 1, the peer has addresses 2 and 3), with a TCP
/// server on ports 8080 and 8081 of every peer address that answers `hello@<address>:<port>`, and,
/// if asked, a DNS server (dnsmasq) on address 2 that answers only from records the test gives and
/// never forwards anywhere. Nothing here leaves the machine.
// @unchecked Sendable: every stored property is immutable; the server's `Process` is only read for
// its pid (and killed) after it started.
public struct TestPeer: @unchecked Sendable {
    /// Which /29 the peer is on.
    public enum Subnet: Sendable {
        /// One of `10.253.0.0/16`.
        case privateNetwork
        /// One of TEST-NET-2 (`198.51.100.0/24`, RFC 5737): a public-looking address that no real
        /// host has, for tests where private addresses mean something (DNS rebinding).
        case testNet
    }

    /// The namespace's name.
    public let name: String
    /// The host end of the veth pair.
    public let hostInterface: String
    /// The /29's network address.
    public let network: UInt32
    let server: Process
    let directory: String
    /// A lock on the /29 (see ``claimSubnet(_:)``), held until ``stop()``.
    let subnetLock: Int32

    /// Address `host` of the /29 (1: the host's end, 2 and 3: the peer's).
    public func address(_ host: UInt32) -> String { IPv4CIDR.format(network + host) }

    /// Sets the peer up; `tag` makes its names unique.
    public static func start(tag: String, subnet: Subnet = .privateNetwork) throws -> TestPeer {
        let suffix = String(tag.suffix(6))
        let name = "hangar-testpeer-\(suffix)"
        let hostInterface = "hgtp\(suffix)"
        let inner = "hgtq\(suffix)"
        let (network, subnetLock) = try claimSubnet(subnet)
        let address = { (host: UInt32) in IPv4CIDR.format(network + host) }
        let commands = [
            ["ip", "netns", "add", name],
            ["ip", "link", "add", hostInterface, "type", "veth", "peer", "name", inner],
            ["ip", "link", "set", inner, "netns", name],
            ["ip", "addr", "add", address(1) + "/29", "dev", hostInterface],
            ["ip", "link", "set", hostInterface, "up"],
            ["ip", "-n", name, "addr", "add", address(2) + "/29", "dev", inner],
            ["ip", "-n", name, "addr", "add", address(3) + "/29", "dev", inner],
            ["ip", "-n", name, "link", "set", inner, "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"],
            ["ip", "-n", name, "route", "add", "default", "via", address(1)],
        ]
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-peer-\(suffix)").path
        try FileManager.default.createDirectory(atPath: directory + "/hosts", withIntermediateDirectories: true)
        do {
            for command in commands { try shell(command) }
        } catch {
            close(subnetLock)
            throw error
        }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        server.arguments = [
            "netns", "exec", name, "/usr/bin/python3", "-c",
            """
            import socket, threading
            def serve(port):
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(('0.0.0.0', port)); s.listen(16)
                while True:
                    c, _ = s.accept()
                    host, port = c.getsockname()
                    c.sendall(('hello@%s:%d' % (host, port)).encode()); c.close()
            threading.Thread(target=serve, args=(8081,), daemon=True).start()
            serve(8080)
            """,
        ]
        try server.run()
        return TestPeer(
            name: name,
            hostInterface: hostInterface,
            network: network,
            server: server,
            directory: directory,
            subnetLock: subnetLock
        )
    }

    /// A /29 of `subnet` that no other peer of any test process on this machine has: one whose
    /// lock file (`/run/lock/hangar-testpeer-<network>`) this process could lock, tried in random
    /// order. Two peers on one /29 (suites run side by side) would route each other's traffic.
    private static func claimSubnet(_ subnet: Subnet) throws -> (network: UInt32, lock: Int32) {
        let candidates: [UInt32] =
            switch subnet {
            case .privateNetwork: (1...250).map { 10 << 24 | 253 << 16 | $0 << 8 }
            case .testNet: (1...30).map { 198 << 24 | 51 << 16 | 100 << 8 | $0 * 8 }
            }
        for network in candidates.shuffled() {
            let fd = open("/run/lock/hangar-testpeer-\(IPv4CIDR.format(network))", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { continue }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return (network, fd) }
            close(fd)
        }
        throw TestPeerError(message: "every /29 of \(subnet) is taken by another test peer")
    }

    /// Whether the server listens on ports 8080 and 8081 in the peer's namespace (LISTEN sockets on
    /// `0.0.0.0` in `/proc/<pid>/net/tcp`, which shows the server's namespace).
    public var listening: Bool {
        let table = (try? String(contentsOfFile: "/proc/\(server.processIdentifier)/net/tcp", encoding: .utf8)) ?? ""
        let listeners = table.split(separator: "\n").compactMap { line -> Substring? in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[3] == "0A" ? fields[1] : nil
        }
        return listeners.contains("00000000:1F90") && listeners.contains("00000000:1F91")
    }

    /// Starts dnsmasq on address 2, port 53, answering `records` (name → IPv4 address) with a TTL
    /// of `ttl` seconds and REFUSED for anything else, logging every query (``dnsLog``); returns
    /// once it answers. ``setRecords(_:)``
    /// changes the records while it runs.
    public func startDNS(_ records: [String: String], ttl: Int = 1) throws {
        try setRecords(records)
        // dnsmasq goes into the background itself (a long-running child of Foundation's `Process`
        // can block the reaping of other children), leaving its pid in the peer's directory.
        let pidFile = directory + "/dnsmasq.pid"
        try Self.shell([
            "ip", "netns", "exec", name, "/usr/sbin/dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--pid-file=\(pidFile)", "--user=root", "--group=root", "--listen-address=\(address(2))",
            "--bind-interfaces", "--port=53", "--local-ttl=\(ttl)", "--hostsdir=\(directory)/hosts", "--log-queries",
            "--log-facility=\(directory)/dnsmasq.log",
        ])
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let pid = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap {
                Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            if let pid, answersDNS(pid) { return }
            usleep(20_000)  // polling a condition with a deadline, not a sleep as synchronisation
        }
        throw TestPeerError(message: "dnsmasq did not answer within 10 s: \(dnsLog)")
    }

    /// Replaces the DNS records (dnsmasq reads its hosts directory again when a file in it changes).
    public func setRecords(_ records: [String: String]) throws {
        let text = records.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)\n" }.joined()
        let path = directory + "/hosts/records"
        try text.write(toFile: path + ".new", atomically: false, encoding: .utf8)
        guard rename(path + ".new", path) == 0 else { throw TestPeerError(message: "cannot replace \(path)") }
    }

    /// What dnsmasq logged.
    public var dnsLog: String { (try? String(contentsOfFile: directory + "/dnsmasq.log", encoding: .utf8)) ?? "" }

    /// Whether dnsmasq (`pid`, which `ip netns exec` became) has UDP port 53 of address 2 bound,
    /// from `/proc/<pid>/net/udp`, which shows its namespace.
    private func answersDNS(_ pid: Int32) -> Bool {
        let hex = String(format: "%08X:0035", (network + 2).byteSwapped)
        let table = (try? String(contentsOfFile: "/proc/\(pid)/net/udp", encoding: .utf8)) ?? ""
        return table.contains(hex)
    }

    /// Kills everything in the peer's namespace and removes it.
    public func stop() {
        let pids = (try? Self.shell(["ip", "netns", "pids", name])) ?? ""
        for pid in pids.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
        kill(server.processIdentifier, SIGKILL)
        _ = try? Self.shell(["ip", "link", "del", hostInterface])
        _ = try? Self.shell(["ip", "netns", "del", name])
        try? FileManager.default.removeItem(atPath: directory)
        close(subnetLock)
    }

    /// Runs `/usr/sbin/<argv[0]>` and returns its output; throws on a non-zero exit.
    @discardableResult
    public static func shell(_ argv: [String]) throws -> String {
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
            throw TestPeerError(message: "\(argv.joined(separator: " ")): \(output)")
        }
        return output
    }
}

/// A peer that could not be set up.
public struct TestPeerError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
