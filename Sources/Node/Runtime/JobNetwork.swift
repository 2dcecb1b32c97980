import Foundation
import Glibc
import HangarShared
import Synchronization

/// The network of a `NETWORK_ALLOWLIST` job: a network namespace of its own joined to the host by
/// a veth pair (`10.254.x.y/30`, the host side is the gateway), with an nftables ruleset inside the
/// namespace whose output policy is drop: only loopback, replies, and the job's ``Egress`` pass —
/// its allowed networks (on their port, if granted on one) minus its denied ones, plus the
/// addresses its resolver gave for granted names (the sets `resolved` and `resolved_ports`, filled
/// by ``EgressResolver`` for their TTL) — and never the gateway (except DNS to the job's resolver)
/// or link-local addresses (`169.254.0.0/16`, cloud metadata). The sandbox joins it instead of an
/// empty network namespace; its processes have no capability over it, so the rules cannot be
/// changed from inside. A job with names to resolve finds its resolver at ``resolverAddress``.
///
/// On the host (once per boot, see ``HostNetwork``): forwarding on, traffic from job namespaces
/// masqueraded, and nothing from a job's veth may reach the host itself (but DNS to a job
/// resolver) or another job's namespace.
struct JobNetwork: Sendable {
    /// The namespace's name under `/run/netns`.
    let name: String
    /// What `setns`/`nsenter --net=` and the OCI spec take.
    var path: String { "/run/netns/" + name }
    let hostInterface: String
    let subnet: Int
    /// Where ``subnet`` came from and goes back to.
    let subnets: SubnetPool
    /// Where the namespace and the `ip`/`nft` processes are noted.
    let ledger: SandboxLedger?
    /// The job's resolver, when its grants name hosts.
    private(set) var resolver: EgressResolver?

    /// The address a job's `/etc/resolv.conf` names: inside the namespace, DNS to it is sent to
    /// the job's own resolver on its gateway (every job sees the same file).
    static let resolverAddress = "10.254.0.1"

    /// At most this many CIDRs per job.
    static let maxAllowed = 32

    /// Sets up the namespace, veth pair and rules. Needs root, `ip` and `nft`. With `process`, the
    /// network namespace of that process is used (and named) instead of a new one: a container
    /// whose user namespace is not root's may only join a network namespace its own user namespace
    /// owns (``OwnedUserNamespace``). The namespace is noted in `ledger` while it exists. Names in
    /// `egress` are resolved through `upstream` (required when ``Egress/resolves``).
    static func create(
        egress: Egress,
        upstream: DNSUpstream?,
        namespaceOf process: Int32? = nil,
        subnets: SubnetPool,
        ledger: SandboxLedger?
    ) async throws(NetworkSetupError) -> JobNetwork {
        guard geteuid() == 0 else { throw NetworkSetupError("NETWORK_ALLOWLIST needs a node running as root") }
        guard egress.allowed.count <= maxAllowed, egress.denied.count <= maxAllowed,
            !egress.allowed.isEmpty || !egress.names.isEmpty
        else {
            throw NetworkSetupError(
                "NETWORK_ALLOWLIST needs 1 to \(maxAllowed) networks in network.allow or grants.allow_net, or host names in grants.allow_net"
            )
        }
        if egress.resolves && upstream == nil {
            throw NetworkSetupError(
                "the job's grants name hosts, but this node has no upstream DNS resolver (no IPv4 nameserver in /etc/resolv.conf; start the node with --dns-upstream)"
            )
        }
        try await HostNetwork.prepare(ledger: ledger)
        guard let subnet = subnets.take() else {
            throw NetworkSetupError("all \(SubnetPool.capacity) job networks of this node are in use")
        }
        let suffix = String(subnet, radix: 36)
        var network = JobNetwork(
            name: "hangar-\(suffix)",
            hostInterface: "hgh\(suffix)",
            subnet: subnet,
            subnets: subnets,
            ledger: ledger
        )
        do {
            try await network.setUp(egress, namespaceOf: process)
            if egress.resolves, let upstream { try network.startResolver(egress, upstream: upstream) }
        } catch {
            await network.remove()
            throw error
        }
        return network
    }

    /// What a node process needs to take over the network of a sandbox that outlived the node
    /// process that made it (``adopt(_:upstream:subnets:ledger:)``).
    struct Saved: Codable, Sendable, Equatable {
        var name: String
        var hostInterface: String
        var subnet: Int
        /// The start's network policy and grants (serialized protobuf): its egress, rebuilt.
        var policy: Data
        var grants: Data
    }

    /// This network as ``Saved``, with the policy and grants it was made from.
    func saved(policy: Hangar_V1_NetworkPolicy, grants: Hangar_V1_Grants) -> Saved? {
        guard let policy = try? policy.serializedData(), let grants = try? grants.serializedData() else { return nil }
        return Saved(name: name, hostInterface: hostInterface, subnet: subnet, policy: policy, grants: grants)
    }

    /// Takes over a network that a node process before this one made (its namespace, veth pair
    /// and rules are still there): claims its subnet and, when its grants name hosts, starts its
    /// resolver again. The addresses the old resolver let through are dropped from the namespace's
    /// sets first (their expiries lived in that process): connections already made go on, and a
    /// new one needs its name resolved again, through the new resolver. Throws when the namespace
    /// is gone, the subnet is taken or the resolver cannot start; then nothing is claimed.
    static func adopt(
        _ saved: Saved,
        upstream: DNSUpstream?,
        subnets: SubnetPool,
        ledger: SandboxLedger?
    ) async throws(NetworkSetupError) -> JobNetwork {
        let egress: Egress
        do {
            egress = try Egress(
                network: try Hangar_V1_NetworkPolicy(serializedBytes: saved.policy),
                grants: try Hangar_V1_Grants(serializedBytes: saved.grants)
            )
        } catch {
            throw NetworkSetupError("its saved egress cannot be read: \(error)")
        }
        guard FileManager.default.fileExists(atPath: "/run/netns/" + saved.name) else {
            throw NetworkSetupError("its network namespace \(saved.name) is gone")
        }
        if egress.resolves && upstream == nil {
            throw NetworkSetupError("its grants name hosts, but this node has no upstream DNS resolver")
        }
        guard subnets.claim(saved.subnet) else {
            throw NetworkSetupError("its subnet \(saved.subnet) is in use on this node")
        }
        var network = JobNetwork(
            name: saved.name,
            hostInterface: saved.hostInterface,
            subnet: saved.subnet,
            subnets: subnets,
            ledger: ledger
        )
        do {
            try await HostNetwork.prepare(ledger: ledger)
            if egress.resolves, let upstream {
                try await network.run(
                    ["ip", "netns", "exec", network.name, "nft", "-f", "-"],
                    stdin: Data("flush set inet hangar resolved\nflush set inet hangar resolved_ports\n".utf8)
                )
                try network.startResolver(egress, upstream: upstream)
            }
        } catch {
            subnets.give(saved.subnet)
            throw error
        }
        return network
    }

    /// Starts the network's DNS resolver (``EgressResolver``) for `egress`, asking `upstream`.
    private mutating func startResolver(_ egress: Egress, upstream: DNSUpstream) throws(NetworkSetupError) {
        resolver = try EgressResolver(
            egress: egress,
            gateway: addresses.gateway,
            sandbox: addresses.sandbox,
            upstream: upstream,
            namespace: name,
            ledger: ledger
        )
    }

    /// Lets go of the network without removing it (its node process goes away and leaves it to
    /// the next): stops its resolver, which lives in this process.
    func leave() {
        resolver?.stop()
    }

    /// The two usable addresses of the job's /30: the host's (gateway) and the namespace's.
    var addresses: (gateway: String, sandbox: String) {
        let base = 10 << 24 | 254 << 16 | subnet << 2
        return (IPv4CIDR.format(UInt32(base + 1)), IPv4CIDR.format(UInt32(base + 2)))
    }

    private func setUp(_ egress: Egress, namespaceOf process: Int32?) async throws(NetworkSetupError) {
        let inner = "hgs" + hostInterface.dropFirst(3)
        let (gateway, sandbox) = addresses
        ledger?.made(.network(namespace: name, hostInterface: hostInterface))
        try await run(
            process.map { ["ip", "netns", "attach", name, String($0)] } ?? ["ip", "netns", "add", name]
        )
        try await run(["ip", "link", "add", hostInterface, "type", "veth", "peer", "name", inner])
        try await run(["ip", "link", "set", inner, "netns", name])
        try await run(["ip", "addr", "add", gateway + "/30", "dev", hostInterface])
        try await run(["ip", "link", "set", hostInterface, "up"])
        try await run(["ip", "-n", name, "addr", "add", sandbox + "/30", "dev", inner])
        try await run(["ip", "-n", name, "link", "set", inner, "up"])
        try await run(["ip", "-n", name, "link", "set", "lo", "up"])
        try await run(["ip", "-n", name, "route", "add", "default", "via", gateway])
        let ruleset = Self.ruleset(egress, gateway: gateway)
        try await run(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin: Data(ruleset.utf8))
    }

    /// The nftables ruleset of the job's namespace (see the type's summary).
    static func ruleset(_ egress: Egress, gateway: String) -> String {
        func rule(_ network: Egress.NetworkRule, _ verdict: String) -> String {
            let port = network.port.map { " meta l4proto { tcp, udp } th dport \($0)" } ?? ""
            return "    ip daddr \(network.network)\(port) \(verdict)\n"
        }
        var rules = ""
        if egress.resolves {
            // DNS to the fixed resolver address goes to the job's resolver on its gateway.
            rules += "    ip daddr \(gateway) udp dport 53 accept\n"
        }
        rules += "    ip daddr { \(gateway), 169.254.0.0/16 } drop\n"
        rules += egress.denied.map { rule($0, "drop") }.joined()
        rules += egress.allowed.map { rule($0, "accept") }.joined()
        rules += "    ip daddr @resolved accept\n"
        rules += "    meta l4proto { tcp, udp } ip daddr . th dport @resolved_ports accept\n"
        return """
            table inet hangar {
              set resolved { type ipv4_addr; }
              set resolved_ports { type ipv4_addr . inet_service; }
              chain dns {
                type nat hook output priority -100; policy accept;
                ip daddr \(resolverAddress) udp dport 53 dnat ip to \(gateway)
              }
              chain output {
                type filter hook output priority 0; policy drop;
                oif "lo" accept
                ct state established,related accept
                meta nfproto ipv6 drop
            \(rules)  }
            }

            """
    }

    /// Deletes the namespace (which deletes both veth ends) and frees the subnet. Safe to call on a
    /// half-built network.
    func remove() async {
        resolver?.stop()
        _ = try? await run(["ip", "link", "del", hostInterface])
        _ = try? await run(["ip", "netns", "del", name])
        if !FileManager.default.fileExists(atPath: path) {
            ledger?.gone(.network(namespace: name, hostInterface: hostInterface))
        }
        subnets.give(subnet)
    }

    private func run(_ argv: [String], stdin: Data = Data()) async throws(NetworkSetupError) {
        try await Self.run(argv, stdin: stdin, ledger: ledger)
    }

    /// Runs `ip` or `nft` (`argv[0]`), noted in `ledger` while it runs.
    static func run(_ argv: [String], stdin: Data = Data(), ledger: SandboxLedger?) async throws(NetworkSetupError) {
        let command = SandboxCommand(
            executable: argv[0] == "ip" ? "/usr/sbin/ip" : "/usr/sbin/nft",
            arguments: argv,
            environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            stdin: stdin,
            timeout: .seconds(10),
            outputLimit: 16_384,
            ledger: ledger
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
/// `10.254.0.0/16`, and a filter that drops whatever a job's veth sends to the host itself (but
/// DNS to job resolvers, which answer only their own job) and between job namespaces.
enum HostNetwork {
    private static let prepared = Mutex(false)

    static func prepare(ledger: SandboxLedger?) async throws(NetworkSetupError) {
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
                iifname "hgh*" ip daddr 10.254.0.0/16 udp dport 53 accept
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
        try await JobNetwork.run(["nft", "-f", "-"], stdin: Data(ruleset.utf8), ledger: ledger)
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

    /// Takes subnet `index` (a re-adopted sandbox's); false when it is in use or out of range.
    func claim(_ index: Int) -> Bool {
        guard (1..<Self.size).contains(index) else { return false }
        return used.withLock { $0.insert(index).inserted }
    }
}

/// Why a job's network could not be set up.
struct NetworkSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
