import HangarScheduler
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
