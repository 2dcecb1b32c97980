import Foundation
import Glibc
import HangarShared
import Synchronization

/// The network of a `NETWORK_ALLOWLIST` job: a network namespace of its own joined to the host by
/// a veth pair (`10.254.x.y/30`, the host side is the gateway), with an nftables ruleset inside the
/// namespace whose output policy is drop: only loopback, replies, and the allowed CIDRs pass, and
/// never the gateway itself or link-local addresses (`169.254.0.0/16`, cloud metadata). The sandbox
/// joins it instead of an empty network namespace; its processes have no capability over it, so the
/// rules cannot be changed from inside.
///
/// On the host (once per boot, see ``HostNetwork``): forwarding on, traffic from job namespaces
/// masqueraded, and nothing from a job's veth may reach the host itself or another job's namespace.
struct JobNetwork: Sendable {
    /// The namespace's name under `/run/netns`.
    let name: String
    /// What `setns`/`nsenter --net=` and the OCI spec take.
    var path: String { "/run/netns/" + name }
    let hostInterface: String
    let subnet: Int
    /// Where ``subnet`` came from and goes back to.
    let subnets: SubnetPool

    /// At most this many CIDRs per job.
    static let maxAllowed = 32

    /// Sets up the namespace, veth pair and rules. Needs root, `ip` and `nft`. With `process`, the
    /// network namespace of that process is used (and named) instead of a new one: a container
    /// whose user namespace is not root's may only join a network namespace its own user namespace
    /// owns (``OwnedUserNamespace``).
    static func create(
        allow: [String],
        namespaceOf process: Int32? = nil,
        subnets: SubnetPool
    ) async throws(NetworkSetupError) -> JobNetwork {
        guard geteuid() == 0 else { throw NetworkSetupError("NETWORK_ALLOWLIST needs a node running as root") }
        guard (1...maxAllowed).contains(allow.count) else {
            throw NetworkSetupError("NETWORK_ALLOWLIST needs 1 to \(maxAllowed) CIDRs in network.allow")
        }
        let cidrs = try allow.map { cidr throws(NetworkSetupError) in
            guard let parsed = IPv4CIDR(cidr) else {
                throw NetworkSetupError("'\(cidr.prefix(64))' is not an IPv4 CIDR such as 10.1.2.0/24")
            }
            return parsed
        }
        try await HostNetwork.prepare()
        guard let subnet = subnets.take() else {
            throw NetworkSetupError("all \(SubnetPool.capacity) job networks of this node are in use")
        }
        let suffix = String(subnet, radix: 36)
        let network = JobNetwork(
            name: "hangar-\(suffix)",
            hostInterface: "hgh\(suffix)",
            subnet: subnet,
            subnets: subnets
        )
        do {
            try await network.setUp(cidrs, namespaceOf: process)
        } catch {
            await network.remove()
            throw error
        }
        return network
    }

    /// The two usable addresses of the job's /30: the host's (gateway) and the namespace's.
    var addresses: (gateway: String, sandbox: String) {
        let base = 10 << 24 | 254 << 16 | subnet << 2
        return (IPv4CIDR.format(UInt32(base + 1)), IPv4CIDR.format(UInt32(base + 2)))
    }

    private func setUp(_ allow: [IPv4CIDR], namespaceOf process: Int32?) async throws(NetworkSetupError) {
        let inner = "hgs" + hostInterface.dropFirst(3)
        let (gateway, sandbox) = addresses
        SandboxLedger.current.made(.network(namespace: name, hostInterface: hostInterface))
        try await Self.run(
            process.map { ["ip", "netns", "attach", name, String($0)] } ?? ["ip", "netns", "add", name]
        )
        try await Self.run(["ip", "link", "add", hostInterface, "type", "veth", "peer", "name", inner])
        try await Self.run(["ip", "link", "set", inner, "netns", name])
        try await Self.run(["ip", "addr", "add", gateway + "/30", "dev", hostInterface])
        try await Self.run(["ip", "link", "set", hostInterface, "up"])
        try await Self.run(["ip", "-n", name, "addr", "add", sandbox + "/30", "dev", inner])
        try await Self.run(["ip", "-n", name, "link", "set", inner, "up"])
        try await Self.run(["ip", "-n", name, "link", "set", "lo", "up"])
        try await Self.run(["ip", "-n", name, "route", "add", "default", "via", gateway])
        let allowed = allow.map(\.description).joined(separator: ", ")
        let ruleset = """
            table inet hangar {
              chain output {
                type filter hook output priority 0; policy drop;
                oif "lo" accept
                ct state established,related accept
                meta nfproto ipv6 drop
                ip daddr { \(gateway), 169.254.0.0/16 } drop
                \(allow.isEmpty ? "" : "ip daddr { \(allowed) } accept")
              }
            }

            """
        try await Self.run(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin: Data(ruleset.utf8))
    }

    /// Deletes the namespace (which deletes both veth ends) and frees the subnet. Safe to call on a
    /// half-built network.
    func remove() async {
        _ = try? await Self.run(["ip", "link", "del", hostInterface])
        _ = try? await Self.run(["ip", "netns", "del", name])
        if !FileManager.default.fileExists(atPath: path) {
            SandboxLedger.current.gone(.network(namespace: name, hostInterface: hostInterface))
        }
        subnets.give(subnet)
    }

    static func run(_ argv: [String], stdin: Data = Data()) async throws(NetworkSetupError) {
        let command = SandboxCommand(
            executable: argv[0] == "ip" ? "/usr/sbin/ip" : "/usr/sbin/nft",
            arguments: argv,
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            stdin: stdin,
            timeout: .seconds(10),
            outputLimit: 16_384
        )
        let result: SandboxResult
        do {
            result = try await SandboxProcess.run(command)
        } catch {
            throw NetworkSetupError("\(argv.joined(separator: " ")): \(error.description)")
        }
        guard result.termination == .exited(0), result.killReason == nil else {
            let output = String(decoding: result.stderr + result.stdout, as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            throw NetworkSetupError("\(argv.prefix(6).joined(separator: " ")) failed: \(output)")
        }
    }
}

/// The host side of job networks, set up once per node process: IPv4 forwarding, masquerading of
/// `10.254.0.0/16`, and a filter that drops whatever a job's veth sends to the host itself and
/// between job namespaces.
enum HostNetwork {
    private static let prepared = Mutex(false)

    static func prepare() async throws(NetworkSetupError) {
        if prepared.withLock({ $0 }) { return }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft") else {
            throw NetworkSetupError("NETWORK_ALLOWLIST needs nftables (/usr/sbin/nft) on the node")
        }
        let ruleset = """
            table ip hangar-jobs
            delete table ip hangar-jobs
            table ip hangar-jobs {
              chain input {
                type filter hook input priority -10; policy accept;
                iifname "hgh*" ct state established,related accept
                iifname "hgh*" drop
              }
              chain forward {
                type filter hook forward priority -10; policy accept;
                iifname "hgh*" oifname "hgh*" drop
              }
              chain postrouting {
                type nat hook postrouting priority 100; policy accept;
                ip saddr 10.254.0.0/16 oifname != "hgh*" masquerade
              }
            }

            """
        try await JobNetwork.run(["nft", "-f", "-"], stdin: Data(ruleset.utf8))
        guard (try? "1\n".write(toFile: "/proc/sys/net/ipv4/ip_forward", atomically: false, encoding: .utf8)) != nil
        else {
            throw NetworkSetupError("cannot turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")
        }
        prepared.withLock { $0 = true }
    }
}

/// The /30 subnets of `10.254.0.0/16` in use by one node (``NodeResources/subnets``).
final class SubnetPool: Sendable {
    /// Subnet indexes are 1 ..< size (index 0 would hold 10.254.0.0 itself).
    static let size = 16_384
    /// How many job networks a node can have at once.
    static let capacity = size - 1
    private let used = Mutex(Set<Int>())

    /// A free subnet index, chosen at random so that node processes on one host rarely collide;
    /// nil when all ``capacity`` are in use.
    func take() -> Int? {
        used.withLock { used in
            guard used.count < Self.capacity else { return nil }
            while true {
                let index = Int.random(in: 1..<Self.size)
                if used.insert(index).inserted { return index }
            }
        }
    }

    func give(_ index: Int) { _ = used.withLock { $0.remove(index) } }
}

/// Why a job's network could not be set up.
struct NetworkSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
