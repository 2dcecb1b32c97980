import HangarShared

/// A submission that passed validation: the node-ready spec with every limit resolved.
public struct ValidatedSubmission: Sendable {
    public var tenant: String
    public var requestID: String
    public var spec: Hangar_V1_JobSpec
    public var priority: Int32
    public var labels: [String: String]
    public var wait: Bool
    /// Attempts allowed in all (1 = no retry) and the first backoff.
    public var maxAttempts: UInt32
    public var backoff: Duration
}

/// Checks a `SubmitRequest` field by field. Pure: no I/O, no clock.
public struct RequestValidator: Sendable {
    /// Runtimes Hangar knows about (a node may still not offer one).
    public static let knownRuntimes: Set<String> = ["process", "container", "gvisor", "microvm", "wasm", "null"]
    /// Interpreters for `code` submissions.
    public static let languages: [String: [String]] = [
        "python": ["/usr/bin/python3", "-c"],
        "sh": ["/bin/sh", "-c"],
        "bash": ["/bin/bash", "-c"],
    ]
    public var bounds: RequestBounds

    public init(bounds: RequestBounds = RequestBounds()) {
        self.bounds = bounds
    }

    /// Validates `request` sent on `tenant`'s subject against the tenant's policy.
    public func validate(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String,
        policy: TenantPolicy = TenantPolicy()
    ) -> Result<ValidatedSubmission, Rejection> {
        do throws(Rejection) {
            return .success(try check(request, tenant: tenant, policy: policy))
        } catch {
            return .failure(error)
        }
    }

    private func check(
        _ request: Hangar_V1_SubmitRequest,
        tenant: String,
        policy: TenantPolicy
    ) throws(Rejection) -> ValidatedSubmission {
        guard Subjects.isValidToken(tenant) else {
            throw Rejection(.invalidRequest, "tenant", "tenant '\(tenant)' must be 1-64 characters of A-Z a-z 0-9 _ -")
        }
        try checkRequestID(request.requestID)

        var spec = Hangar_V1_JobSpec()
        spec.runtime = request.runtime.isEmpty ? "process" : request.runtime
        guard Self.knownRuntimes.contains(spec.runtime) else {
            throw Rejection(
                .invalidRequest,
                "runtime",
                "unknown runtime '\(spec.runtime)'; use one of \(Self.knownRuntimes.sorted().joined(separator: ", "))"
            )
        }
        if let allowed = policy.runtimes, !allowed.contains(spec.runtime) {
            throw Rejection(
                .notAllowed,
                "runtime",
                "tenant '\(tenant)' may not use runtime '\(spec.runtime)'; allowed: \(allowed.sorted().joined(separator: ", "))"
            )
        }
        spec.template = request.template.isEmpty ? "host" : request.template
        // Whether a node holds the template is placement's question (rejected at once if none does).
        guard TemplateName.isValid(spec.template) else {
            throw Rejection(
                .invalidRequest,
                "template",
                "template name '\(spec.template)' must be \(TemplateName.rule)"
            )
        }
        if let allowed = policy.templates, !allowed.contains(spec.template) {
            throw Rejection(
                .notAllowed,
                "template",
                "tenant '\(tenant)' may not use template '\(spec.template)'; allowed: \(allowed.sorted().joined(separator: ", "))"
            )
        }
        spec.argv = try command(of: request)
        guard request.stdin.count <= bounds.maxStdinBytes else {
            throw Rejection(
                .limitExceeded,
                "stdin",
                "stdin is \(request.stdin.count) bytes; the maximum is \(bounds.maxStdinBytes)"
            )
        }
        spec.stdin = request.stdin
        try checkEnvironment(request.env)
        spec.env = request.env
        try checkCwd(request.cwd)
        spec.cwd = request.cwd
        try checkFiles(request.files)
        spec.files = request.files
        try checkFilesOut(request.filesOut, runtime: spec.runtime)
        spec.filesOut = request.filesOut
        spec.limits = try resolve(request.limits, policy.limits)
        if spec.runtime != "null" {
            guard UInt64(spec.limits.cpuMillis) <= policy.maxCPUMillis else {
                throw Rejection(
                    .quotaExceeded,
                    "limits.cpu_millis",
                    "the job asks for \(spec.limits.cpuMillis) millicores; tenant '\(tenant)' may hold at most \(policy.maxCPUMillis)"
                )
            }
            guard spec.limits.memoryBytes <= policy.maxMemoryBytes else {
                throw Rejection(
                    .quotaExceeded,
                    "limits.memory_bytes",
                    "the job asks for \(spec.limits.memoryBytes) bytes of memory; tenant '\(tenant)' may hold at most \(policy.maxMemoryBytes)"
                )
            }
        }
        let granted = try checkGrants(
            request.hasGrants ? request.grants : nil,
            network: request.network,
            runtime: spec.runtime,
            tenant: tenant,
            policy: policy
        )
        spec.network = try checkNetwork(
            granted.network,
            runtime: spec.runtime,
            grantsNet: !granted.grants.allowNet.isEmpty
        )
        if granted.grants != Hangar_V1_Grants() { spec.grants = granted.grants }
        guard policy.priorities.contains(request.priority) else {
            throw Rejection(
                .invalidRequest,
                "priority",
                "priority \(request.priority) is outside \(policy.priorities.lowerBound)...\(policy.priorities.upperBound) for tenant '\(tenant)'"
            )
        }
        try checkRetry(request)
        try checkLabels(request.labels)
        return ValidatedSubmission(
            tenant: tenant,
            requestID: request.requestID,
            spec: spec,
            priority: request.priority,
            labels: request.labels,
            wait: request.wait,
            maxAttempts: request.retry.maxAttempts == 0 ? 3 : request.retry.maxAttempts,
            backoff: .milliseconds(request.retry.backoffMs == 0 ? 100 : Int64(request.retry.backoffMs))
        )
    }

    private func checkRequestID(_ id: String) throws(Rejection) {
        guard id.utf8.count <= bounds.maxRequestIDBytes else {
            throw Rejection(
                .invalidRequest,
                "request_id",
                "request_id is longer than \(bounds.maxRequestIDBytes) bytes"
            )
        }
        guard id.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw Rejection(.invalidRequest, "request_id", "request_id must be printable ASCII without spaces")
        }
    }

    private func command(of request: Hangar_V1_SubmitRequest) throws(Rejection) -> [String] {
        let hasCode = request.hasCode && !(request.code.language.isEmpty && request.code.source.isEmpty)
        switch (request.argv.isEmpty, hasCode) {
        case (true, false):
            throw Rejection(.invalidRequest, "argv", "give either argv (a command) or code (language + source)")
        case (false, true):
            throw Rejection(.invalidRequest, "code", "give argv or code, not both")
        case (false, false):
            guard request.argv.count <= bounds.maxArgs else {
                throw Rejection(
                    .limitExceeded,
                    "argv",
                    "argv has \(request.argv.count) arguments; the maximum is \(bounds.maxArgs)"
                )
            }
            guard !request.argv[0].isEmpty else {
                throw Rejection(.invalidRequest, "argv", "argv[0] (the program) is empty")
            }
            let total = request.argv.reduce(0) { $0 + $1.utf8.count + 1 }
            guard total <= bounds.maxArgvBytes else {
                throw Rejection(.limitExceeded, "argv", "argv is \(total) bytes; the maximum is \(bounds.maxArgvBytes)")
            }
            if let index = request.argv.firstIndex(where: { $0.utf8.contains(0) }) {
                throw Rejection(.invalidRequest, "argv", "argv[\(index)] contains a NUL byte")
            }
            return request.argv
        case (true, true):
            guard let interpreter = Self.languages[request.code.language] else {
                throw Rejection(
                    .unsupported,
                    "code.language",
                    "language '\(request.code.language)' is not supported; use one of \(Self.languages.keys.sorted().joined(separator: ", "))"
                )
            }
            guard !request.code.source.isEmpty else {
                throw Rejection(.invalidRequest, "code.source", "code.source is empty")
            }
            guard request.code.source.utf8.count <= bounds.maxCodeBytes else {
                throw Rejection(
                    .limitExceeded,
                    "code.source",
                    "code.source is \(request.code.source.utf8.count) bytes; the maximum is \(bounds.maxCodeBytes)"
                )
            }
            guard !request.code.source.utf8.contains(0) else {
                throw Rejection(.invalidRequest, "code.source", "code.source contains a NUL byte")
            }
            return interpreter + [request.code.source]
        }
    }

    private func checkEnvironment(_ env: [String: String]) throws(Rejection) {
        guard env.count <= bounds.maxEnvEntries else {
            throw Rejection(
                .limitExceeded,
                "env",
                "env has \(env.count) entries; the maximum is \(bounds.maxEnvEntries)"
            )
        }
        for (key, value) in env {
            let bytes = Array(key.utf8)
            let validName =
                !bytes.isEmpty && bytes.count <= 256
                && bytes.enumerated().allSatisfy { index, byte in
                    byte == 0x5F || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                        || (index > 0 && byte >= 0x30 && byte <= 0x39)
                }
            guard validName else {
                throw Rejection(
                    .invalidRequest,
                    "env",
                    "env name '\(key.prefix(64))' must match [A-Za-z_][A-Za-z0-9_]*"
                )
            }
            guard value.utf8.count <= bounds.maxEnvValueBytes, !value.utf8.contains(0) else {
                throw Rejection(
                    .invalidRequest,
                    "env",
                    "env \(key) must be at most \(bounds.maxEnvValueBytes) bytes without NUL"
                )
            }
        }
    }

    private func checkCwd(_ cwd: String) throws(Rejection) {
        guard !cwd.isEmpty else { return }
        guard cwd.hasPrefix("/"), cwd.utf8.count <= 4096, !cwd.utf8.contains(0),
            !cwd.pathComponents().contains("..")
        else {
            throw Rejection(.invalidRequest, "cwd", "cwd must be an absolute path without '..'")
        }
    }

    private func checkFiles(_ files: [Hangar_V1_FileIn]) throws(Rejection) {
        guard files.count <= bounds.maxFiles else {
            throw Rejection(.limitExceeded, "files", "\(files.count) files; the maximum is \(bounds.maxFiles)")
        }
        var total = 0
        var seen = Set<String>()
        for (index, file) in files.enumerated() {
            total += file.content.count
            let parts = file.path.pathComponents(omittingEmpty: false)
            let valid =
                !file.path.isEmpty && !file.path.hasPrefix("/") && file.path.utf8.count <= 1024
                && !file.path.utf8.contains(0) && !parts.contains { $0.isEmpty || $0 == "." || $0 == ".." }
            guard valid else {
                throw Rejection(
                    .invalidRequest,
                    "files[\(index)].path",
                    "file path '\(file.path.prefix(64))' must be relative, without '.', '..' or empty parts"
                )
            }
            guard seen.insert(file.path).inserted else {
                throw Rejection(.invalidRequest, "files[\(index)].path", "file path '\(file.path)' is given twice")
            }
            guard file.mode & ~0o777 == 0 else {
                throw Rejection(.invalidRequest, "files[\(index)].mode", "mode may hold permission bits (0o777) only")
            }
        }
        guard total <= bounds.maxFilesBytes else {
            throw Rejection(
                .limitExceeded,
                "files",
                "files hold \(total) bytes; the maximum is \(bounds.maxFilesBytes)"
            )
        }
    }

    /// Runtimes that cannot bring `files_out` back (a microVM's `/tmp` lives in guest memory the
    /// node does not read): a request for them with `files_out` is `UNSUPPORTED`, never run without.
    public static let noFilesOutRuntimes: Set<String> = ["microvm"]

    private func checkFilesOut(_ globs: [String], runtime: String) throws(Rejection) {
        if !globs.isEmpty && Self.noFilesOutRuntimes.contains(runtime) {
            throw Rejection(
                .unsupported,
                "files_out",
                "runtime '\(runtime)' cannot return files_out (the job's /tmp is in the VM's memory); "
                    + "use process, container or gvisor, or write the files to stdout"
            )
        }
        guard globs.count <= FilesOutGlob.maxGlobs else {
            throw Rejection(
                .limitExceeded,
                "files_out",
                "\(globs.count) files_out globs; the maximum is \(FilesOutGlob.maxGlobs)"
            )
        }
        for (index, glob) in globs.enumerated() {
            if let problem = FilesOutGlob.problem(with: glob) {
                throw Rejection(.invalidRequest, "files_out[\(index)]", problem)
            }
        }
    }

    private func resolve(_ asked: Hangar_V1_Limits, _ policy: LimitPolicy) throws(Rejection) -> Hangar_V1_Limits {
        var limits = Hangar_V1_Limits()
        limits.timeoutMs = try pick(asked.timeoutMs, limits: policy.timeoutMilliseconds, field: "timeout_ms")
        limits.cpuTimeMs = try pick(asked.cpuTimeMs, limits: policy.cpuTimeMilliseconds, field: "cpu_time_ms")
        limits.memoryBytes = try pick(asked.memoryBytes, limits: policy.memoryBytes, field: "memory_bytes")
        limits.pids = try pick(asked.pids, limits: policy.pids, field: "pids")
        limits.outputBytes = try pick(asked.outputBytes, limits: policy.outputBytes, field: "output_bytes")
        limits.fileSizeBytes = try pick(asked.fileSizeBytes, limits: policy.fileSizeBytes, field: "file_size_bytes")
        limits.openFiles = try pick(asked.openFiles, limits: policy.openFiles, field: "open_files")
        limits.cpuMillis = try pick(asked.cpuMillis, limits: policy.cpuMillis, field: "cpu_millis")
        return limits
    }

    private func checkRetry(_ request: Hangar_V1_SubmitRequest) throws(Rejection) {
        guard request.retry.maxAttempts <= 10 else {
            throw Rejection(.invalidRequest, "retry.max_attempts", "retry.max_attempts is at most 10")
        }
        guard request.retry.backoffMs <= 60_000 else {
            throw Rejection(.invalidRequest, "retry.backoff_ms", "retry.backoff_ms is at most 60000")
        }
    }

    private func pick<Value: FixedWidthInteger & Sendable>(
        _ asked: Value,
        limits: LimitPolicy.Bound<Value>,
        field: String
    ) throws(Rejection) -> Value {
        if asked == 0 { return limits.defaultValue }
        guard asked <= limits.maximum else {
            throw Rejection(
                .limitExceeded,
                "limits.\(field)",
                "limits.\(field) \(asked) is above the maximum \(limits.maximum)"
            )
        }
        return asked
    }

    /// Runtimes that enforce `NETWORK_ALLOWLIST` (a namespace of the node's with nftables rules).
    public static let allowlistRuntimes: Set<String> = ["process", "container", "null"]
    /// At most this many CIDRs in `network.allow`.
    public static let maxAllowedNetworks = 32

    /// `grantsNet`: whether the (granted) grants have allow_net entries that are not in
    /// `network.allow` (host names, ports), which an allowlist may consist of alone.
    func checkNetwork(
        _ network: Hangar_V1_NetworkPolicy,
        runtime: String,
        grantsNet: Bool = false
    ) throws(Rejection) -> Hangar_V1_NetworkPolicy {
        switch network.mode {
        case .networkNone, .networkLoopback:
            guard network.allow.isEmpty else {
                throw Rejection(
                    .invalidRequest,
                    "network.allow",
                    "network.allow is only meaningful with NETWORK_ALLOWLIST"
                )
            }
            return network
        case .networkAllowlist:
            guard Self.allowlistRuntimes.contains(runtime) else {
                throw Rejection(
                    .unsupported,
                    "network.mode",
                    "runtime '\(runtime)' cannot enforce NETWORK_ALLOWLIST; use "
                        + Self.allowlistRuntimes.sorted().joined(separator: ", ")
                )
            }
            guard !network.allow.isEmpty || grantsNet, network.allow.count <= Self.maxAllowedNetworks else {
                throw Rejection(
                    .invalidRequest,
                    "network.allow",
                    "NETWORK_ALLOWLIST needs 1 to \(Self.maxAllowedNetworks) CIDRs in network.allow, or grants.allow_net"
                )
            }
            for (index, cidr) in network.allow.enumerated() where IPv4CIDR(cidr) == nil {
                throw Rejection(
                    .invalidRequest,
                    "network.allow[\(index)]",
                    "'\(cidr.prefix(64))' is not an IPv4 CIDR such as 203.0.113.0/24"
                )
            }
            return network
        case .UNRECOGNIZED(let value):
            throw Rejection(.invalidRequest, "network.mode", "unknown network mode \(value)")
        }
    }

    private func checkLabels(_ labels: [String: String]) throws(Rejection) {
        guard labels.count <= bounds.maxLabels else {
            throw Rejection(.limitExceeded, "labels", "\(labels.count) labels; the maximum is \(bounds.maxLabels)")
        }
        for (key, value) in labels where key.isEmpty || key.utf8.count > 128 || value.utf8.count > 256 {
            throw Rejection(
                .invalidRequest,
                "labels",
                "label '\(key.prefix(64))' must have a 1-128 byte key and a value of at most 256 bytes"
            )
        }
    }
}

/// Why a submission is refused, as the `Rejected` message the tenant receives.
public struct Rejection: Error, Sendable {
    public var rejected: Hangar_V1_Rejected

    public init(_ reason: Hangar_V1_RejectReason, _ field: String, _ message: String) {
        var rejected = Hangar_V1_Rejected()
        rejected.reason = reason
        rejected.field = field
        rejected.message = message
        self.rejected = rejected
    }
}
