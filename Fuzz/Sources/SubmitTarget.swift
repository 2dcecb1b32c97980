import Foundation
import HangarScheduler
import HangarShared
import SwiftProtobuf

/// tenant -> scheduler: `SubmitRequest`, decoded as `Scheduler.handleSubmit` does, then validated
/// with `RequestValidator` under one of four tenant policies, with the tenant token taken from a
/// subject built out of the input (as the scheduler takes it from `hangar.submit.<tenant>`).
let submitTarget = FuzzTarget(
    name: "submit",
    summary: "tenant -> scheduler: SubmitRequest + RequestValidator.validate",
    run: { data in
        guard let request = decodeAndCheck(Hangar_V1_SubmitRequest.self, data) else { return }
        let source = request.labels["tenant"] ?? (request.requestID.isEmpty ? "acme" : request.requestID)
        let tenant = String(Subjects.token(Subjects.submit(tenant: source), at: 2) ?? "")
        let policy = SubmitPolicies.all[data.count % SubmitPolicies.all.count]
        let validator = RequestValidator()
        let outcome = validator.validate(request, tenant: tenant, policy: policy)
        switch outcome {
        case .success(let valid):
            checkValidated(valid, request: request, tenant: tenant, policy: policy, bounds: validator.bounds)
        case .failure(let rejection):
            checkRejection(rejection)
        }
        // After a restart the scheduler re-validates the request it stored as bytes
        // (Scheduler+Recovery): the same request must get the same answer.
        let stored: Data
        do {
            stored = try request.serializedBytes()
        } catch {
            fail("SubmitRequest does not encode for the store: \(error)")
        }
        guard let reloaded = try? Hangar_V1_SubmitRequest(serializedBytes: stored) else {
            fail("the stored SubmitRequest does not decode")
        }
        let again = validator.validate(reloaded, tenant: tenant, policy: policy)
        switch (outcome, again) {
        case (.success(let first), .success(let second)):
            require(
                first.spec == second.spec && first.priority == second.priority && first.labels == second.labels
                    && first.maxAttempts == second.maxAttempts && first.backoff == second.backoff
                    && first.requestID == second.requestID && first.wait == second.wait,
                "re-validating the stored request gave a different submission"
            )
        case (.failure(let first), .failure(let second)):
            require(
                first.rejected.reason == second.rejected.reason && first.rejected.field == second.rejected.field,
                "re-validating the stored request gave a different rejection: \(first.rejected) vs \(second.rejected)"
            )
        default:
            fail("re-validating the stored request changed accept/reject")
        }
    },
    seeds: {
        // One more argument than RequestBounds.maxArgs (4096), alone: variants of it would be large.
        let tooMany = Hangar_V1_SubmitRequest.with { $0.argv = ["/bin/echo"] + Array(repeating: "", count: 4096) }
        return protobufSeeds(SubmitSamples.valid) + [("valid-too-many-args", try! tooMany.serializedBytes())]
    },
    textForm: TextForm(Hangar_V1_SubmitRequest.self)
)

/// What a submission that passed validation must satisfy before it is queued and sent to a node.
private func checkValidated(
    _ valid: ValidatedSubmission,
    request: Hangar_V1_SubmitRequest,
    tenant: String,
    policy: TenantPolicy,
    bounds: RequestBounds
) {
    let spec = valid.spec
    require(valid.tenant == tenant && Subjects.isValidToken(valid.tenant), "accepted an invalid tenant \(show(tenant))")
    require(
        valid.requestID == request.requestID && valid.requestID.utf8.count <= bounds.maxRequestIDBytes
            && valid.requestID.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F },
        "accepted request_id \(show(valid.requestID))"
    )
    require(RequestValidator.knownRuntimes.contains(spec.runtime), "accepted runtime \(show(spec.runtime))")
    require(policy.runtimes?.contains(spec.runtime) ?? true, "accepted runtime \(spec.runtime) the policy forbids")
    require(TemplateName.isValid(spec.template), "accepted template \(show(spec.template))")
    require(policy.templates?.contains(spec.template) ?? true, "accepted template the policy forbids")

    // The command: argv[0] is the program, nothing holds NUL, the sizes are bounded.
    require(!spec.argv.isEmpty && !spec.argv[0].isEmpty, "accepted an empty command")
    require(!spec.argv.contains { $0.utf8.contains(0) }, "accepted a NUL byte in argv")
    require(spec.argv.count <= bounds.maxArgs + 3, "accepted \(spec.argv.count) arguments")
    require(
        spec.argv.reduce(0) { $0 + $1.utf8.count + 1 } <= max(bounds.maxArgvBytes, bounds.maxCodeBytes + 64),
        "accepted an oversized argv"
    )
    require(spec.stdin.count <= bounds.maxStdinBytes, "accepted \(spec.stdin.count) bytes of stdin")

    // The environment: names of [A-Za-z_][A-Za-z0-9_]*, values without NUL.
    require(spec.env.count <= bounds.maxEnvEntries, "accepted \(spec.env.count) env entries")
    for (key, value) in spec.env {
        let bytes = Array(key.utf8)
        let nameOK =
            !bytes.isEmpty && !bytes.contains(0x3D) && !bytes.contains(0) && !(bytes[0] >= 0x30 && bytes[0] <= 0x39)
        require(nameOK, "accepted env name \(show(key))")
        require(!value.utf8.contains(0) && value.utf8.count <= bounds.maxEnvValueBytes, "accepted env value of \(key)")
    }

    // Paths, as the kernel reads them: bytes split at '/'. The node joins them to its scratch
    // directory, so a ".." component (or "." / empty in a file path) escapes or aliases it.
    if !spec.cwd.isEmpty {
        let parts = byteComponents(spec.cwd)
        require(
            spec.cwd.utf8.first == 0x2F && !spec.cwd.utf8.contains(0) && !parts.contains(Array("..".utf8)),
            "accepted cwd \(show(spec.cwd)) whose byte components are \(showComponents(parts))"
        )
    }
    require(spec.files.count <= bounds.maxFiles, "accepted \(spec.files.count) files")
    require(
        spec.files.reduce(0) { $0 + $1.content.count } <= bounds.maxFilesBytes,
        "accepted files over \(bounds.maxFilesBytes) bytes"
    )
    var seen = Set<String>()
    for file in spec.files {
        let parts = byteComponents(file.path)
        let escapes = parts.contains { $0.isEmpty || $0 == [0x2E] || $0 == [0x2E, 0x2E] }
        require(
            !file.path.isEmpty && !escapes && !file.path.utf8.contains(0),
            "accepted file path \(show(file.path)) whose byte components are \(showComponents(parts))"
        )
        require(seen.insert(file.path).inserted, "accepted file path \(show(file.path)) twice")
        require(file.mode & ~0o777 == 0, "accepted file mode \(String(file.mode, radix: 8))")
    }

    // Limits: each at most the policy's maximum; resources within the tenant's quota.
    let limits = spec.limits
    let bound = policy.limits
    require(limits.timeoutMs <= bound.timeoutMilliseconds.maximum, "timeout_ms above the maximum")
    require(limits.cpuTimeMs <= bound.cpuTimeMilliseconds.maximum, "cpu_time_ms above the maximum")
    require(limits.memoryBytes <= bound.memoryBytes.maximum, "memory_bytes above the maximum")
    require(limits.pids <= bound.pids.maximum, "pids above the maximum")
    require(limits.outputBytes <= bound.outputBytes.maximum, "output_bytes above the maximum")
    require(limits.fileSizeBytes <= bound.fileSizeBytes.maximum, "file_size_bytes above the maximum")
    require(limits.openFiles <= bound.openFiles.maximum, "open_files above the maximum")
    require(limits.cpuMillis <= bound.cpuMillis.maximum, "cpu_millis above the maximum")
    if spec.runtime != "null" {
        require(UInt64(limits.cpuMillis) <= policy.maxCPUMillis, "cpu_millis above the tenant's quota")
        require(limits.memoryBytes <= policy.maxMemoryBytes, "memory_bytes above the tenant's quota")
    }
    require(spec.network.mode == .networkNone || spec.network.mode == .networkLoopback, "accepted network mode")
    require(spec.network.allow.isEmpty, "accepted an allow list")

    require(policy.priorities.contains(valid.priority), "accepted priority \(valid.priority)")
    require((1...10).contains(valid.maxAttempts), "accepted max_attempts \(valid.maxAttempts)")
    require(valid.backoff > .zero && valid.backoff <= .seconds(60), "accepted backoff \(valid.backoff)")
    require(valid.labels.count <= bounds.maxLabels, "accepted \(valid.labels.count) labels")
    require(valid.labels.keys.allSatisfy { !$0.isEmpty && $0.utf8.count <= 128 }, "accepted a label key")
    require(valid.labels.values.allSatisfy { $0.utf8.count <= 256 }, "accepted a label value")

    // What the scheduler sends the node, and what a node sends back, must encode.
    var assignment = Hangar_V1_Assignment()
    assignment.jobID = "j0123456789abcdefghjk0001"
    assignment.tenant = valid.tenant
    assignment.attempt = valid.maxAttempts
    assignment.spec = spec
    checkEncodings(assignment)
}

/// A rejection is what the tenant gets back: it names a reason, a field and a message, and encodes.
private func checkRejection(_ rejection: Rejection) {
    let rejected = rejection.rejected
    require(rejected.reason != .unspecified, "a rejection without a reason")
    require(!rejected.field.isEmpty && !rejected.message.isEmpty, "a rejection without a field or message")
    var reply = Hangar_V1_SubmitReply()
    reply.rejected = rejected
    checkEncodings(reply)
}

/// A path split at every '/' byte, the way the kernel resolves it.
private func byteComponents(_ path: String) -> [[UInt8]] {
    Array(path.utf8).split(separator: 0x2F, omittingEmptySubsequences: false).map(Array.init)
}

private func showComponents(_ parts: [[UInt8]]) -> String {
    show(parts.map { String(decoding: $0, as: UTF8.self).unicodeScalars.map { $0.escaped(asASCII: true) }.joined() })
}

/// The policies a submission is checked against (the input's length picks one).
enum SubmitPolicies {
    static let all: [TenantPolicy] = [TenantPolicy(), restricted, nullOnly, noTemplates]

    /// A tenant limited to two runtimes, priorities 2...5 and small jobs.
    static var restricted: TenantPolicy {
        var policy = TenantPolicy()
        policy.runtimes = ["process", "null"]
        policy.templates = ["host"]
        policy.priorities = 2...5
        policy.maxCPUMillis = 2000
        policy.maxMemoryBytes = 1 << 30
        policy.limits.timeoutMilliseconds = .init(1000, max: 60_000)
        policy.limits.memoryBytes = .init(64 << 20, max: 512 << 20)
        policy.limits.cpuMillis = .init(250, max: 2000)
        policy.limits.pids = .init(16, max: 64)
        return policy
    }

    /// A tenant that may run nothing but `null` jobs at priority 0, with no CPU or memory quota.
    static var nullOnly: TenantPolicy {
        var policy = TenantPolicy()
        policy.runtimes = ["null"]
        policy.priorities = 0...0
        policy.maxCPUMillis = 0
        policy.maxMemoryBytes = 0
        return policy
    }

    /// A tenant allowed no template at all.
    static var noTemplates: TenantPolicy {
        var policy = TenantPolicy()
        policy.templates = []
        return policy
    }
}

enum SubmitSamples {
    static var valid: [(String, Hangar_V1_SubmitRequest)] {
        [
            (
                "argv",
                .with {
                    $0.requestID = "req-1"
                    $0.argv = ["/bin/echo", "hello"]
                }
            ),
            (
                "code",
                .with {
                    $0.requestID = "req-2"
                    $0.code = .with {
                        $0.language = "python"
                        $0.source = "print(1 + 1)"
                    }
                    $0.wait = true
                }
            ),
            (
                "full",
                .with {
                    $0.requestID = "acme-42"
                    $0.runtime = "process"
                    $0.template = "host"
                    $0.argv = ["/bin/sh", "-c", "cat data/in.txt"]
                    $0.stdin = Data("stdin".utf8)
                    $0.env = ["LANG": "C.UTF-8", "_X1": "y"]
                    $0.cwd = "/tmp/work"
                    $0.files = [
                        .with {
                            $0.path = "data/in.txt"
                            $0.content = Data("abc".utf8)
                            $0.mode = 0o644
                        },
                        .with {
                            $0.path = "run.sh"
                            $0.content = Data("#!/bin/sh\n".utf8)
                            $0.mode = 0o755
                        },
                    ]
                    $0.limits = Samples.limits
                    $0.network = .with { $0.mode = .networkLoopback }
                    $0.priority = 3
                    $0.labels = ["zone": "a", "tenant": "acme"]
                    $0.wait = true
                    $0.retry = .with {
                        $0.maxAttempts = 2
                        $0.backoffMs = 250
                    }
                }
            ),
            (
                "null-runtime",
                .with {
                    $0.runtime = "null"
                    $0.argv = ["x"]
                    $0.limits = .with { $0.cpuMillis = 16_000 }
                }
            ),
            (
                "rejected-paths",
                .with {
                    $0.argv = ["/bin/true"]
                    $0.cwd = "/tmp/../etc"
                    $0.files = [.with { $0.path = "../escape" }, .with { $0.path = "a/./b" }]
                }
            ),
            (
                "rejected-cwd",
                .with {
                    $0.argv = ["/bin/pwd"]
                    $0.cwd = "/tmp/../etc"
                }
            ),
            (
                "rejected-file-path",
                .with {
                    $0.argv = ["/bin/ls"]
                    $0.cwd = "/tmp"
                    $0.files = [.with { $0.path = "../x" }]
                }
            ),
            (
                "rejected-limits",
                .with {
                    $0.argv = ["/bin/true"]
                    $0.limits = .with {
                        $0.memoryBytes = UInt64.max
                        $0.timeoutMs = UInt32.max
                    }
                    $0.network = .with {
                        $0.mode = .networkAllowlist
                        $0.allow = ["10.0.0.0/8"]
                    }
                    $0.priority = -1
                    $0.retry = .with { $0.maxAttempts = 11 }
                }
            ),
            (
                "rejected-env",
                .with {
                    $0.argv = ["/bin/true"]
                    $0.env = ["1BAD": "x", "A=B": "y", "": "z"]
                    $0.labels = ["": "empty key"]
                }
            ),
            (
                "rejected-tenant",
                .with {
                    $0.argv = ["/bin/true"]
                    $0.labels = ["tenant": "a.b*c"]
                }
            ),
        ]
    }
}
