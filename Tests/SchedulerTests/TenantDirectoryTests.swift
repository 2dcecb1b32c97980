import Foundation
import HangarScheduler
import HangarShared
import Testing

@Suite("Tenants file and rate limits")
struct TenantDirectoryTests {
    @Test("a tenants file sets defaults and per-tenant overrides")
    func parse() throws {
        let directory = try TenantDirectory.parse(
            yaml: """
                defaults:
                  rate: 10
                  burst: 20
                  runtimes: [process]
                  limits:
                    timeout_ms: {default: 5000, max: 60000}
                tenants:
                  acme:
                    weight: 3
                    max_concurrent: 4
                    priority: {min: 2, max: 5}
                  beta: {}
                """
        )
        let acme = directory.policy(for: "acme")
        #expect(acme.weight == 3)
        #expect(acme.maxConcurrent == 4)
        #expect(acme.rate == 10)  // inherited from defaults
        #expect(acme.runtimes == ["process"])
        #expect(acme.priorities == 2...5)
        #expect(acme.limits.timeoutMilliseconds.defaultValue == 5000)
        #expect(directory.policy(for: "beta").weight == 1)
        #expect(directory.policy(for: "unlisted").rate == 10)
    }

    @Test("sandbox policy: safe defaults, and the tenants file sets them per tenant")
    func sandboxPolicy() throws {
        let builtIn = TenantPolicy()
        #expect(builtIn.maxLiveSandboxes == 20)
        #expect(builtIn.maxSandboxTimeout == .seconds(3600))
        #expect(builtIn.maxSandboxLifetime == .seconds(24 * 3600))
        let directory = try TenantDirectory.parse(
            yaml: """
                defaults:
                  max_live_sandboxes: 5
                tenants:
                  acme: {max_sandbox_timeout_ms: 60000, max_sandbox_lifetime_ms: 600000}
                """
        )
        let acme = directory.policy(for: "acme")
        #expect(acme.maxLiveSandboxes == 5)  // inherited from defaults
        #expect(acme.maxSandboxTimeout == .seconds(60))
        #expect(acme.maxSandboxLifetime == .seconds(600))
        #expect(throws: TenantConfigError.self) {
            try TenantDirectory.parse(yaml: "defaults: {max_sandbox_timeout_ms: 0}")
        }
    }

    @Test(
        "every mistake names the key",
        arguments: [
            ("defaults: {wieght: 2}", "defaults.wieght"),
            ("tenants: {acme: {rate: fast}}", "tenants.acme.rate"),
            ("tenants: {acme: {limits: {timeout_ms: {default: 9, max: 1}}}}", "tenants.acme.limits.timeout_ms"),
            ("tenants: {acme: {limits: {walltime: {max: 1}}}}", "tenants.acme.limits.walltime"),
            ("tenants: {'a.b': {}}", "tenants.a.b"),
            ("tenant: {}", "tenant"),
            ("tenants: {acme: {weight: 0}}", "tenants.acme.weight"),
        ]
    )
    func errors(yaml: String, key: String) {
        do {
            _ = try TenantDirectory.parse(yaml: yaml)
            Issue.record("expected an error for \(yaml)")
        } catch {
            #expect(error.description.contains(key), "\(error.description)")
        }
    }

    @Test("token bucket: burst at once, then the rate, with a retry-after")
    func tokenBucket() {
        let start = ContinuousClock.now
        var bucket = TokenBucket(burst: 3, now: start)
        for _ in 0..<3 { #expect(bucket.take(rate: 2, burst: 3, now: start) == nil) }
        let wait = bucket.take(rate: 2, burst: 3, now: start)
        #expect(wait == .milliseconds(500))
        #expect(bucket.take(rate: 2, burst: 3, now: start + .milliseconds(500)) == nil)
        #expect(bucket.take(rate: 2, burst: 3, now: start + .milliseconds(500)) != nil)
    }
}

@Suite("Inputs found by fuzzing")
struct FuzzFindingsTests {
    @Test("a '/' hidden in a combining character does not hide a '..' from the path checks")
    func combiningSlash() throws {
        var request = Hangar_V1_SubmitRequest()
        request.argv = ["/bin/true"]
        var file = Hangar_V1_FileIn()
        file.path = "../\u{301}x"
        request.files = [file]
        guard case .failure(let bad) = RequestValidator().validate(request, tenant: "acme") else {
            Issue.record("a '..' component was accepted")
            return
        }
        #expect(bad.rejected.field == "files[0].path")
        request.files = []
        request.cwd = "/tmp/../\u{301}\u{600}/.."
        guard case .failure(let badCwd) = RequestValidator().validate(request, tenant: "acme") else {
            Issue.record("a '..' in cwd was accepted")
            return
        }
        #expect(badCwd.rejected.field == "cwd")
    }

    @Test("subject tokens split on the byte '.', as NATS does")
    func subjectTokens() {
        #expect(Subjects.token("hangar.node.\u{301}n1.heartbeat", at: 2) == "\u{301}n1")
        #expect(Subjects.token("a.b", at: -1) == nil)
    }

    @Test("non-finite or absurd numbers in the tenants file are refused; a tiny rate does not trap")
    func numbers() {
        for yaml in [
            "defaults: {weight: .inf}", "defaults: {rate: .nan}", "defaults: {rate: -1}", "defaults: {burst: 1e300}",
        ] {
            #expect(throws: TenantConfigError.self) { try TenantDirectory.parse(yaml: yaml) }
        }
        let now = ContinuousClock.now
        var bucket = TokenBucket(burst: 1, now: now)
        #expect(bucket.take(rate: 1e-300, burst: 1, now: now) == nil)
        #expect(bucket.take(rate: 1e-300, burst: 1, now: now) == .seconds(3600))
    }
}
