import HangarShared

/// Where an allowlist job's traffic may go, from its network policy (`network.allow`: IPv4 networks,
/// any port) and its network grants (`grants.allow_net` / `deny_net`: also host names, `*.domain`
/// wildcards and ports), as the scheduler validated them.
///
/// Networks become nftables rules in the job's namespace; names are enforced by the job's own
/// resolver (``EgressResolver``): it answers only granted names, and the addresses it gives are
/// let through for their TTL. A deny always wins: a denied network is dropped before any accept,
/// and a denied name (with or without a port) does not resolve at all.
struct Egress: Sendable, Equatable {
    /// A network, and the one port it is granted on (nil: any port).
    struct NetworkRule: Sendable, Equatable {
        let network: IPv4CIDR
        let port: UInt16?
    }

    /// Allowed networks.
    var allowed: [NetworkRule] = []
    /// Denied networks (dropped first).
    var denied: [NetworkRule] = []
    /// Granted names (`.host` or `.subdomains`), each with its port or none.
    var names: [NetGrant] = []
    /// Denied names: they never resolve.
    var deniedNames: [NetGrant] = []

    /// At most this many entries of each kind (the scheduler's bound on grants).
    static let maxEntries = 64

    /// The job's egress; fails on entries that do not parse (the scheduler validates them first,
    /// so this is a node receiving something no scheduler sends).
    init(network: Hangar_V1_NetworkPolicy, grants: Hangar_V1_Grants) throws(NetworkSetupError) {
        for cidr in network.allow {
            guard let parsed = IPv4CIDR(cidr) else {
                throw NetworkSetupError("'\(cidr.prefix(64))' is not an IPv4 CIDR such as 10.1.2.0/24")
            }
            allowed.append(NetworkRule(network: parsed, port: nil))
        }
        for (list, entries) in [("allow_net", grants.allowNet), ("deny_net", grants.denyNet)] {
            guard entries.count <= Self.maxEntries else {
                throw NetworkSetupError("grants.\(list) has \(entries.count) entries; at most \(Self.maxEntries)")
            }
            for text in entries {
                guard let grant = NetGrant(text) else {
                    throw NetworkSetupError(
                        "grants.\(list): '\(text.prefix(64))' is not a host, *.domain or IPv4 network"
                    )
                }
                let deny = list == "deny_net"
                if let cidr = grant.network {
                    let rule = NetworkRule(network: cidr, port: grant.port)
                    if deny {
                        denied.append(rule)
                    } else if !allowed.contains(rule) {
                        allowed.append(rule)
                    }
                } else if deny {
                    deniedNames.append(grant)
                } else {
                    names.append(grant)
                }
            }
        }
    }

    /// Test-friendly memberwise form.
    init(allowed: [NetworkRule] = [], denied: [NetworkRule] = [], names: [NetGrant] = [], deniedNames: [NetGrant] = [])
    {
        self.allowed = allowed
        self.denied = denied
        self.names = names
        self.deniedNames = deniedNames
    }

    /// Whether every IPv4 address is allowed on every port (`0.0.0.0/0`): then the job could reach
    /// any address anyway, so its resolver answers any name that is not denied.
    var allowsEveryAddress: Bool { allowed.contains { $0.network.prefix == 0 && $0.port == nil } }

    /// Whether the job gets a resolver: it has names to resolve.
    var resolves: Bool { !names.isEmpty || allowsEveryAddress }

    /// What the resolver does with a query for `name`.
    enum NameDecision: Equatable {
        /// It does not resolve (NXDOMAIN).
        case refused
        /// It resolves, and its addresses are let through on these ports (nil: any port).
        case granted(ports: Set<UInt16?>)
    }

    /// The decision for `name` (lowercased, no trailing dot).
    func decide(_ name: String) -> NameDecision {
        let matching = { (grant: NetGrant) -> Bool in
            switch grant.target {
            case .host(let host): return name == host
            case .subdomains(let domain): return name.hasSuffix("." + domain)
            case .network: return false
            }
        }
        if deniedNames.contains(where: matching) { return .refused }
        let ports = Set(names.filter(matching).map(\.port))
        if !ports.isEmpty { return .granted(ports: ports.contains(nil) ? [nil] : ports) }
        // Any address is reachable anyway: the name resolves, its addresses need no set entry.
        return allowsEveryAddress ? .granted(ports: []) : .refused
    }

    /// Whether `address` is inside an allowed network granted on any port.
    func allowsAddress(_ address: UInt32) -> Bool {
        allowed.contains { $0.port == nil && $0.network.contains(address) }
    }

    /// Whether `address` is in a denied network granted on any port (a port-bound deny is left to
    /// the rules).
    func deniesAddress(_ address: UInt32) -> Bool {
        denied.contains { $0.port == nil && $0.network.contains(address) }
    }

    /// Addresses no public name should resolve to (DNS rebinding): this host, private and
    /// shared networks, link-local, multicast and reserved. An answer for a granted name that gives
    /// one of these is refused unless an allowed network covers the address.
    static let internalNetworks: [IPv4CIDR] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    ].compactMap { IPv4CIDR($0) }

    /// Whether `address` may be given to the job for a granted name.
    func mayResolve(to address: UInt32) -> Bool {
        if deniesAddress(address) { return false }
        if Self.internalNetworks.contains(where: { $0.contains(address) }) { return allowsAddress(address) }
        return true
    }
}

extension IPv4CIDR {
    /// Whether `address` is inside this network.
    func contains(_ candidate: UInt32) -> Bool {
        prefix == 0 || candidate & (UInt32.max << (32 - prefix)) == address
    }
}
