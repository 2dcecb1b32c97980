import HangarScheduler
import HangarShared
import Testing

/// Grants at admission: each allow within the tenant's maximum (else NOT_ALLOWED naming it), the
/// tenant's denies added to the job's, refused as UNSUPPORTED where no runtime enforces a grant,
/// network grants carried out as NETWORK_ALLOWLIST, and the tenants file's `grants:` section.
@Suite("Grants at admission and in the tenants file")
struct GrantAdmissionTests {
    let validator = RequestValidator()

    func request(runtime: String = "null", _ edit: (inout Hangar_V1_Grants) -> Void) -> Hangar_V1_SubmitRequest {
        var request = Hangar_V1_SubmitRequest()
        request.argv = ["/bin/true"]
        request.runtime = runtime
        edit(&request.grants)
        return request
    }

    func policy(_ yaml: String) throws -> TenantPolicy {
        try TenantDirectory.parse(yaml: "defaults:\n  grants:\n" + yaml).defaults
    }

    func rejected(_ request: Hangar_V1_SubmitRequest, _ policy: TenantPolicy = TenantPolicy()) -> Hangar_V1_Rejected? {
        if case .failure(let rejection) = validator.validate(request, tenant: "acme", policy: policy) {
            return rejection.rejected
        }
        return nil
    }

    @Test("by default no host path may be granted: NOT_ALLOWED, the grant named")
    func noPathsByDefault() {
        let refused = rejected(request { $0.allowRead = ["/srv/data"] })
        #expect(refused?.reason == .notAllowed)
        #expect(refused?.field == "grants.allow_read[0]")
        #expect(refused?.message.contains("/srv/data") == true, "\(String(describing: refused))")
    }

    @Test("within the maximum: granted, with the tenant's denies added; beyond it: NOT_ALLOWED")
    func withinMaximum() throws {
        let policy = try policy(
            """
                allow_read: [/srv/data]
                allow_write: [/srv/scratch]
                deny_read: [/srv/data/secret]
            """
        )
        let granted = try validator.validate(
            request {
                $0.allowRead = ["/srv/data/public"]
                $0.allowWrite = ["/srv/scratch/acme"]
            },
            tenant: "acme",
            policy: policy
        ).get()
        #expect(granted.spec.grants.allowRead == ["/srv/data/public"])
        #expect(granted.spec.grants.allowWrite == ["/srv/scratch/acme"])
        #expect(granted.spec.grants.denyRead == ["/srv/data/secret"], "the tenant's deny travels with the job")
        // Writing where the tenant may only read, reading outside, and reaching a denied path.
        #expect(rejected(request { $0.allowWrite = ["/srv/data"] }, policy)?.field == "grants.allow_write[0]")
        #expect(rejected(request { $0.allowRead = ["/srv"] }, policy)?.field == "grants.allow_read[0]")
        #expect(rejected(request { $0.allowRead = ["/srv/data/secret/x"] }, policy)?.reason == .notAllowed)
        #expect(
            rejected(request { $0.allowRead = ["/srv/data", "/etc"] }, policy)?.field == "grants.allow_read[1]"
        )
    }

    @Test("a runtime that cannot enforce a grant refuses it as UNSUPPORTED, naming it; path grants on every runtime")
    func unsupported() throws {
        let policy = try policy("    allow_read: [/srv/data]\n    allow_net: [\"*.example.com\", \"0.0.0.0/0\"]\n")
        // Every runtime enforces path grants (microvm through a virtiofs share).
        for runtime in ["process", "container", "gvisor", "microvm", "wasm"] {
            #expect(rejected(request(runtime: runtime) { $0.allowRead = ["/srv/data"] }, policy) == nil, "\(runtime)")
        }
        // Names, ports and denies need the node's per-job resolver and rules: not on gVisor or microvm.
        for runtime in ["gvisor", "microvm", "wasm"] {
            let name = rejected(request(runtime: runtime) { $0.allowNet = ["api.example.com:443"] }, policy)
            #expect(name?.reason == .unsupported && name?.field == "grants.allow_net[0]", "\(String(describing: name))")
            #expect(name?.message.contains("api.example.com:443") == true)
            let port = rejected(request(runtime: runtime) { $0.allowNet = ["203.0.113.7:443"] }, policy)
            #expect(port?.reason == .unsupported, "\(String(describing: port))")
            let deny = rejected(
                request(runtime: runtime) {
                    $0.allowNet = ["203.0.113.0/24"]
                    $0.denyNet = ["203.0.113.9"]
                },
                policy
            )
            #expect(deny?.reason == .unsupported && deny?.field == "grants.deny_net[0]", "\(runtime)")
        }
    }

    @Test("names, ports and deny_net are granted on runtimes with a per-job resolver; the tenant's denies travel")
    func egressGrants() throws {
        let policy = try policy(
            "    allow_net: [\"*.example.com\", \"0.0.0.0/0\"]\n    deny_net: [\"203.0.113.0/24\"]\n"
        )
        for runtime in ["process", "container", "null"] {
            let granted = try validator.validate(
                request(runtime: runtime) {
                    $0.allowNet = ["api.example.com:443", "198.51.100.7:8080", "192.0.2.0/24"]
                    $0.denyNet = ["evil.example.com"]
                },
                tenant: "acme",
                policy: policy
            ).get()
            #expect(granted.spec.network.mode == .networkAllowlist)
            // Only networks on any port go to network.allow; a ported network stays a grant.
            #expect(granted.spec.network.allow == ["192.0.2.0/24"], "\(runtime)")
            #expect(granted.spec.grants.allowNet == ["api.example.com:443", "198.51.100.7:8080", "192.0.2.0/24"])
            #expect(granted.spec.grants.denyNet == ["evil.example.com", "203.0.113.0/24"])
        }
        // A name alone makes an allowlist.
        let alone = try validator.validate(
            request(runtime: "process") { $0.allowNet = ["pypi.example.com"] },
            tenant: "acme",
            policy: policy
        ).get()
        #expect(alone.spec.network.mode == .networkAllowlist && alone.spec.network.allow.isEmpty)
        #expect(
            rejected(request(runtime: "process") { $0.allowNet = ["api.other.org"] }, policy)?.reason == .notAllowed
        )
    }

    @Test("IPv4 network grants become NETWORK_ALLOWLIST; network.allow, their older name, is bounded too")
    func networkGrants() throws {
        let granted = try validator.validate(
            request(runtime: "process") { $0.allowNet = ["203.0.113.0/24", "198.51.100.7"] },
            tenant: "acme"
        ).get()
        #expect(granted.spec.network.mode == .networkAllowlist)
        #expect(granted.spec.network.allow == ["203.0.113.0/24", "198.51.100.7/32"])
        let policy = try policy("    allow_net: [\"203.0.113.0/24\"]\n")
        #expect(rejected(request { $0.allowNet = ["198.51.100.7"] }, policy)?.field == "grants.allow_net[0]")
        #expect(
            rejected(request { $0.allowNet = ["203.0.0.0/16"] }, policy)?.reason == .notAllowed,
            "wider than allowed"
        )
        var alias = Hangar_V1_SubmitRequest()
        alias.argv = ["/bin/true"]
        alias.network.mode = .networkAllowlist
        alias.network.allow = ["198.51.100.0/24"]
        #expect(rejected(alias, policy)?.field == "network.allow[0]")
        alias.network.allow = ["203.0.113.128/25"]
        #expect(rejected(alias, policy) == nil)
    }

    @Test("allow and deny of the same path in one request: the job gets no access to it")
    func sameRequestPrecedence() throws {
        let policy = try policy("    allow_write: [/srv]\n")
        let granted = try validator.validate(
            request {
                $0.allowWrite = ["/srv/data"]
                $0.denyRead = ["/srv/data"]
            },
            tenant: "acme",
            policy: policy
        ).get()
        let set = try GrantSet(granted.spec.grants)
        #expect(set.access("/srv/data") == .none)
        #expect(set.mountPlan().isEmpty)
    }

    @Test("the tenants file's grants section: every list parsed, a bad entry or key named")
    func tenantsFile() throws {
        let policy = try policy(
            """
                allow_read: [/a]
                allow_write: [/b]
                allow_net: ["10.0.0.0/8", "*.pypi.org:443"]
                deny_read: [/a/x]
                deny_write: [/b/y]
                deny_net: ["10.1.0.0/16"]
            """
        )
        #expect(policy.grants.message.allowNet == ["10.0.0.0/8", "*.pypi.org:443"])
        #expect(policy.grants.access("/a/x") == .none && policy.grants.access("/b/y") == .read)
        #expect(TenantPolicy().grants.message.allowNet == ["0.0.0.0/0"])
        #expect(throws: TenantConfigError.self) { try self.policy("    allow_read: [relative]\n") }
        #expect(throws: TenantConfigError.self) { try self.policy("    allow_everything: [/]\n") }
        #expect(throws: TenantConfigError.self) { try self.policy("    allow_read: [/proc]\n") }
        do {
            _ = try self.policy("    allow_read: [/ok, \"x/y\"]\n")
        } catch {
            #expect("\(error)".contains("grants.allow_read[1]"), "\(error)")
        }
    }
}
