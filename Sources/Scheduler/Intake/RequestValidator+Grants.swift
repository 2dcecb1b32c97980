import HangarShared

extension RequestValidator {
    /// Runtimes whose nodes enforce path grants (host paths bound into the sandbox read-only or
    /// read-write, the rest absent): bubblewrap binds (process), OCI bind mounts (container,
    /// gvisor). `null` runs nothing, so it enforces any grant trivially. Not yet: microvm (needs a
    /// share into the guest), wasm (WASI preopens, with the runtime).
    public static let pathGrantRuntimes: Set<String> = ["process", "container", "gvisor", "wasm", "null"]

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
        // Network grants are enforced today as NETWORK_ALLOWLIST (IPv4 networks, any port); names,
        // ports and deny_net need the per-job resolver and are refused until a runtime has it.
        for (index, grant) in asked.allowNet.enumerated() where grant.network == nil || grant.port != nil {
            throw Rejection(
                .unsupported,
                "grants.allow_net[\(index)]",
                "'\(grant)': host names and ports in allow_net are not enforced by any runtime yet; "
                    + "grant IPv4 addresses or CIDRs (any port)"
            )
        }
        if !asked.denyNet.isEmpty {
            throw Rejection(.unsupported, "grants.deny_net[0]", "deny_net is not enforced by any runtime yet")
        }
        var granted = asked.message
        granted.denyRead += maximum.denyRead.map(\.path).filter { !granted.denyRead.contains($0) }
        granted.denyWrite += maximum.denyWrite.map(\.path).filter { !granted.denyWrite.contains($0) }
        if !asked.allowNet.isEmpty {
            switch network.mode {
            case .networkNone, .networkAllowlist:
                network.mode = .networkAllowlist
                let cidrs = asked.allowNet.compactMap(\.network).map(\.description)
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
