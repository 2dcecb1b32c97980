import HangarShared

extension RequestValidator {
    /// Runtimes whose nodes enforce path grants (host paths bound into the sandbox read-only or
    /// read-write, the rest absent): bubblewrap binds (process), OCI bind mounts (container,
    /// gvisor), a virtiofs share of the granted paths mounted by the guest (microvm), WASI preopens
    /// (wasm). `null` runs nothing, so it enforces any grant trivially.
    public static let pathGrantRuntimes: Set<String> = ["process", "container", "gvisor", "microvm", "wasm", "null"]

    /// Runtimes whose nodes enforce network grants beyond IPv4 networks on any port: host names
    /// (through a resolver of the job's own, see the node's `EgressResolver`), ports and deny_net,
    /// all in the job's network namespace. gVisor keeps its own network stack.
    public static let egressRuntimes: Set<String> = ["process", "container", "null"]

    /// What grants a job gets: the request's grants (and its `network.allow` CIDRs, their older
    /// alias), each allow within the tenant's maximum (`TenantPolicy.grants`), with the tenant's
    /// denies added; plus the network policy that enforces its network grants. Every refusal names
    /// the grant: `NOT_ALLOWED` beyond the tenant's maximum, `UNSUPPORTED` when the runtime cannot
    /// enforce it (never run without it), `INVALID_REQUEST` when it does not parse.
    /// `requested` is nil when the request carries no grants; `requestedNetwork` is its network
    /// policy. Used for jobs and sandboxes alike.
    func checkGrants(
        _ requested: Hangar_V1_Grants?,
        network requestedNetwork: Hangar_V1_NetworkPolicy,
        runtime: String,
        tenant: String,
        policy: TenantPolicy
    ) throws(Rejection) -> (grants: Hangar_V1_Grants, network: Hangar_V1_NetworkPolicy) {
        var network = requestedNetwork
        guard let requested else {
            try checkAlias(network.allow, tenant: tenant, policy: policy)
            return (Hangar_V1_Grants(), network)
        }
        let asked: GrantSet
        do {
            asked = try GrantSet(requested)
        } catch {
            throw Rejection(.invalidRequest, error.field, error.message)
        }
        let maximum = policy.grants
        for (index, path) in asked.allowRead.enumerated() where maximum.access(path.path) < .read {
            throw beyond("allow_read", index, path.path, tenant: tenant, maximum: maximum)
        }
        for (index, path) in asked.allowWrite.enumerated() where maximum.access(path.path) < .readWrite {
            throw beyond("allow_write", index, path.path, tenant: tenant, maximum: maximum)
        }
        for (index, grant) in asked.allowNet.enumerated() where !Self.within(grant, maximum) {
            throw beyond("allow_net", index, grant.description, tenant: tenant, maximum: maximum)
        }
        if asked.grantsPaths && !Self.pathGrantRuntimes.contains(runtime) {
            let field = asked.allowRead.isEmpty ? "grants.allow_write[0]" : "grants.allow_read[0]"
            throw Rejection(
                .unsupported,
                field,
                "runtime '\(runtime)' cannot enforce host path grants; runtimes that can: "
                    + Self.pathGrantRuntimes.sorted().joined(separator: ", ")
            )
        }
        // IPv4 networks on any port are enforced by NETWORK_ALLOWLIST's rules on every runtime that
        // has it; host names (a resolver of the job's own), ports and denies by fewer.
        let needsEgress =
            asked.allowNet.contains { $0.network == nil || $0.port != nil } || !asked.denyNet.isEmpty
        if needsEgress && !Self.egressRuntimes.contains(runtime) {
            let (list, index, entry) =
                asked.allowNet.enumerated().first { $0.element.network == nil || $0.element.port != nil }
                .map { ("allow_net", $0.offset, $0.element.description) }
                ?? ("deny_net", 0, asked.denyNet[0].description)
            throw Rejection(
                .unsupported,
                "grants.\(list)[\(index)]",
                "'\(entry)': runtime '\(runtime)' cannot enforce host names, ports or deny_net in network grants; "
                    + "runtimes that can: " + Self.egressRuntimes.sorted().joined(separator: ", ")
            )
        }
        var granted = asked.message
        granted.denyRead += maximum.denyRead.map(\.path).filter { !granted.denyRead.contains($0) }
        granted.denyWrite += maximum.denyWrite.map(\.path).filter { !granted.denyWrite.contains($0) }
        if !asked.allowNet.isEmpty {
            // A granted name may resolve into a network the tenant is denied: the node drops it.
            granted.denyNet += maximum.denyNet.map(\.description).filter { !granted.denyNet.contains($0) }
        }
        if !asked.allowNet.isEmpty {
            switch network.mode {
            case .networkNone, .networkAllowlist:
                network.mode = .networkAllowlist
                // Networks on any port join network.allow; the rest stays in the grants, where the
                // node reads it.
                let cidrs = asked.allowNet.filter { $0.port == nil }.compactMap(\.network).map(\.description)
                network.allow += cidrs.filter { !network.allow.contains($0) }
            default:
                throw Rejection(
                    .invalidRequest,
                    "grants.allow_net",
                    "grants.allow_net needs network mode NONE (the default) or ALLOWLIST"
                )
            }
        }
        try checkAlias(requestedNetwork.allow, tenant: tenant, policy: policy)
        return (granted, network)
    }

    /// `network.allow` CIDRs are `allow_net` grants under their older name: within the maximum too.
    private func checkAlias(_ cidrs: [String], tenant: String, policy: TenantPolicy) throws(Rejection) {
        for (index, cidr) in cidrs.enumerated() {
            guard let grant = NetGrant(cidr), grant.network != nil else { continue }  // checkNetwork names it
            guard Self.within(grant, policy.grants) else {
                throw Rejection(
                    .notAllowed,
                    "network.allow[\(index)]",
                    "tenant '\(tenant)' may not be granted network '\(cidr)'"
                )
            }
        }
    }

    private func beyond(
        _ list: String,
        _ index: Int,
        _ entry: String,
        tenant: String,
        maximum: GrantSet
    ) -> Rejection {
        let allowed = list == "allow_net" ? maximum.allowNet.map(\.description) : pathsOf(list, maximum)
        return Rejection(
            .notAllowed,
            "grants.\(list)[\(index)]",
            "tenant '\(tenant)' may not be granted \(list) '\(entry)'; its maximum: "
                + (allowed.isEmpty ? "none" : allowed.joined(separator: ", "))
        )
    }

    private func pathsOf(_ list: String, _ maximum: GrantSet) -> [String] {
        (list == "allow_write" ? maximum.allowWrite : maximum.allowRead + maximum.allowWrite).map(\.path)
    }

    /// Whether every destination `grant` allows is allowed by `maximum` (and none it denies).
    static func within(_ grant: NetGrant, _ maximum: GrantSet) -> Bool {
        let covered = maximum.allowNet.contains { Self.covers($0, grant) }
        let touchesDenied = maximum.denyNet.contains { Self.covers($0, grant) || Self.covers(grant, $0) }
        return covered && !touchesDenied
    }

    /// Whether every destination of `inner` is one of `outer`'s.
    static func covers(_ outer: NetGrant, _ inner: NetGrant) -> Bool {
        if let port = outer.port, inner.port != port { return false }
        switch (outer.target, inner.target) {
        case (.host(let a), .host(let b)):
            return a == b
        case (.subdomains(let a), .host(let b)):
            return b.hasSuffix("." + a)
        case (.subdomains(let a), .subdomains(let b)):
            return b == a || b.hasSuffix("." + a)
        case (.network(let address, let prefix), .network(let innerAddress, let innerPrefix)):
            guard innerPrefix >= prefix else { return false }
            return prefix == 0 || innerAddress & (UInt32.max << (32 - prefix)) == address
        default:
            return false
        }
    }
}
