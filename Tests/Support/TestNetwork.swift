import Foundation
import Glibc
import HangarShared

/// A small network of "hosts" for cluster tests: one Linux bridge on this machine (address 1 of a
/// /24 of `10.252.0.0/16`) and, per host, a network namespace whose veth link is a port of that
/// bridge (address 2, 3, …). Hosts reach each other and this machine over real TCP through the
/// bridge (layer 2: nothing is routed or forwarded, nothing leaves the machine). Cutting a host's
/// link (``cut(_:)``) is a partition of that host from every other; ``heal(_:)`` joins it again.
// @unchecked Sendable: `hosts` is written only under `lock`; everything else is immutable.
public final class TestNetwork: @unchecked Sendable {
    /// One host: its namespace and its address on the bridge.
    public struct Host: Sendable {
        /// The network namespace (`/run/netns/<namespace>`).
        public let namespace: String
        /// Its address on the bridge.
        public let address: String
        /// The bridge end of its link (down: the host is cut off).
        let link: String
    }

    /// The bridge's name.
    public let bridge: String
    /// This machine's address on the bridge.
    public let address: String
    private let tag: String
    private let network: UInt32
    private let lock = NSLock()
    private var hosts: [Host] = []

    /// Creates the bridge; `tag` (up to 5 letters or digits) makes its names unique.
    public init(tag: String) throws {
        self.tag = String(tag.suffix(5))
        bridge = "hgbr\(self.tag)"
        network = 10 << 24 | 252 << 16 | UInt32.random(in: 1...254) << 8
        address = IPv4CIDR.format(network + 1)
        do {
            try TestPeer.shell(["ip", "link", "add", bridge, "type", "bridge"])
            try TestPeer.shell(["ip", "addr", "add", address + "/24", "dev", bridge])
            try TestPeer.shell(["ip", "link", "set", bridge, "up"])
        } catch {
            _ = try? TestPeer.shell(["ip", "link", "del", bridge])
            throw error
        }
    }

    /// Adds a host (a namespace with its link to the bridge, loopback up) and returns it.
    public func addHost() throws -> Host {
        try lock.withLock {
            let number = hosts.count + 1
            guard number < 250 else { throw TestPeerError(message: "a test network holds at most 249 hosts") }
            let host = Host(
                namespace: "hangar-host-\(tag)-\(number)",
                address: IPv4CIDR.format(network + UInt32(number) + 1),
                link: "hgh\(tag)\(number)"
            )
            let inner = "hgi\(tag)\(number)"
            hosts.append(host)
            for command in [
                ["ip", "netns", "add", host.namespace],
                ["ip", "link", "add", host.link, "type", "veth", "peer", "name", inner],
                ["ip", "link", "set", inner, "netns", host.namespace],
                ["ip", "link", "set", host.link, "master", bridge],
                ["ip", "link", "set", host.link, "up"],
                ["ip", "-n", host.namespace, "addr", "add", host.address + "/24", "dev", inner],
                ["ip", "-n", host.namespace, "link", "set", inner, "up"],
                ["ip", "-n", host.namespace, "link", "set", "lo", "up"],
            ] {
                try TestPeer.shell(command)
            }
            return host
        }
    }

    /// Cuts `host` off from every other host and from this machine.
    public func cut(_ host: Host) throws { try TestPeer.shell(["ip", "link", "set", host.link, "down"]) }

    /// Joins `host` to the network again.
    public func heal(_ host: Host) throws { try TestPeer.shell(["ip", "link", "set", host.link, "up"]) }

    /// Kills every process left in the hosts' namespaces, removes them and the bridge.
    public func stop() {
        let hosts = lock.withLock {
            let hosts = self.hosts
            self.hosts = []
            return hosts
        }
        for host in hosts {
            let pids = (try? TestPeer.shell(["ip", "netns", "pids", host.namespace])) ?? ""
            for pid in pids.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
            _ = try? TestPeer.shell(["ip", "link", "del", host.link])
            _ = try? TestPeer.shell(["ip", "netns", "del", host.namespace])
        }
        _ = try? TestPeer.shell(["ip", "link", "del", bridge])
    }

    deinit { stop() }
}
