import HangarShared

/// Grants and network policy of stateful sandboxes: a create request's `grants` and `network` are
/// checked by the same rules as a job's (``RequestValidator/checkGrants(_:network:runtime:tenant:policy:)``
/// and `checkNetwork`, same rejections and field names), then against what the runtime's sandboxes
/// enforce, and their decisions are audited as a job's are (`grant.granted`, `grant.denied`).
extension Scheduler {
    /// Runtimes whose stateful sandboxes enforce host path grants: bubblewrap binds in a `process`
    /// sandbox, OCI bind mounts in a `container` or `gvisor` one, a virtiofs share in a `microvm`
    /// one; `null` holds nothing. A runtime can enforce path grants for jobs
    /// (``RequestValidator/pathGrantRuntimes``) before its sandboxes do (`wasm` has no sandboxes).
    static let sandboxPathGrantRuntimes: Set<String> = ["process", "container", "gvisor", "microvm", "null"]

    /// The places of a sandbox's own (its writable layer and its agent): no host path may be granted
    /// at, above or below them, since a grant's bind would hide them or be hidden by them.
    static let sandboxOwnPaths = ["/home/user", "/root", "/tmp", "/.hangar"]

    /// Why a sandbox on `runtime` cannot have `grants` (as the job rules admitted them), or nil.
    static func checkSandboxGrants(_ grants: Hangar_V1_Grants, runtime: String) -> Rejection? {
        let lists = [("allow_read", grants.allowRead), ("allow_write", grants.allowWrite)]
        for (list, paths) in lists {
            guard let first = paths.first else { continue }
            guard sandboxPathGrantRuntimes.contains(runtime) else {
                return Rejection(
                    .unsupported,
                    "grants.\(list)[0]",
                    "'\(first)': sandboxes of runtime '\(runtime)' cannot enforce host path grants yet; runtimes whose "
                        + "sandboxes can: " + sandboxPathGrantRuntimes.sorted().joined(separator: ", ")
                )
            }
            for (index, path) in paths.enumerated() {
                guard let granted = GrantPath(path) else { continue }  // normalized by the job rules
                for own in sandboxOwnPaths {
                    guard granted.covers(own) || granted.isUnder(own) else { continue }
                    return Rejection(
                        .invalidRequest,
                        "grants.\(list)[\(index)]",
                        "'\(path)' reaches \(own), a sandbox's own place (its writable layer or its agent); "
                            + "grant a host path outside \(sandboxOwnPaths.joined(separator: ", "))"
                    )
                }
            }
        }
        return nil
    }

    /// Audits a sandbox's grants as decided at creation: `grant.granted` with what was asked and
    /// what the sandbox got (the tenant's denies added, network grants as the network policy).
    func auditSandboxGrantGranted(
        _ request: Hangar_V1_SandboxCreateRequest,
        _ admitted: Hangar_V1_SandboxCreateRequest,
        tenant: String,
        sandboxID: String
    ) {
        let detail =
            "sandbox asked: \(Self.describe(request.grants, alias: request.network.allow)); "
            + "granted: \(Self.describe(admitted.grants, alias: admitted.network.allow))"
        enqueueSandboxAudit(tenant: tenant, event: "grant.granted", sandboxID: sandboxID, detail: detail)
    }

    /// Audits a sandbox creation refused because of its grants or network (`grant.denied`, with the
    /// grant named).
    func auditSandboxGrantDenied(_ request: Hangar_V1_SandboxCreateRequest, tenant: String, rejection: Rejection) {
        let field = rejection.rejected.field
        guard field.hasPrefix("grants") || field.hasPrefix("network.allow") else { return }
        let detail =
            "sandbox asked: \(Self.describe(request.grants, alias: request.network.allow)); "
            + "\(rejection.rejected.reason) \(field): \(rejection.rejected.message)"
        enqueueSandboxAudit(tenant: tenant, event: "grant.denied", sandboxID: nil, detail: detail)
    }

    private func enqueueSandboxAudit(tenant: String, event: String, sandboxID: String?, detail: String) {
        let logger = self.logger
        store.enqueue(
            .audit(actor: "tenant:\(tenant)", event: event, jobID: sandboxID, detail: String(detail.prefix(4000)))
        ) { error in
            logger.error("could not audit", metadata: ["event": "\(event)", "error": "\(error)"])
        }
    }
}
