import Foundation
import HangarScheduler
import HangarShared

/// The tenants file: `TenantDirectory.parse(yaml:)` on the input read as UTF-8 (as
/// `TenantDirectory.load(path:)` reads the file), then what the scheduler does with a parsed
/// policy: rate limiting with `TokenBucket` and subject tokens for tenant names.
let tenantsTarget = FuzzTarget(
    name: "tenants",
    summary: "tenants file: TenantDirectory.parse(yaml:) + TokenBucket with the parsed rates",
    run: { data in
        guard let text = String(data: data, encoding: .utf8) else { return }
        let directory: TenantDirectory
        do throws(TenantConfigError) {
            directory = try TenantDirectory.parse(yaml: text)
        } catch {
            require(!error.description.isEmpty, "a parse error without a description")
            return
        }
        checkPolicy(directory.defaults, "defaults")
        for (name, policy) in directory.tenants {
            require(Subjects.isValidToken(name), "accepted tenant name \(show(name)), which is no subject token")
            checkPolicy(policy, "tenants.\(name)")
            require(directory.policy(for: name) == policy, "policy(for: \(name)) is not its entry")
        }
        if directory.tenants["zz-unlisted-tenant"] == nil {
            require(
                directory.policy(for: "zz-unlisted-tenant") == directory.defaults,
                "an unlisted tenant misses the defaults"
            )
        }
    },
    seeds: { TenantSeeds.all }
)

/// What a parsed policy must satisfy for the scheduler to use it.
private func checkPolicy(_ policy: TenantPolicy, _ path: String) {
    // Rate limiting as `Scheduler.admit` does it: a full bucket drained by submissions arriving at
    // once (up to 100), then the same bucket after a pause and a long wait; and a bucket that a burst
    // has emptied (tokens 0), which every tenant reaches after `burst` submissions.
    let start = ContinuousClock.now
    var bucket = TokenBucket(burst: policy.burst, now: start)
    for _ in 0..<100 {
        if bucket.take(rate: policy.rate, burst: policy.burst, now: start) != nil { break }
    }
    for offset in [1, 1_000, 3_600_000] {
        _ = bucket.take(rate: policy.rate, burst: policy.burst, now: start + .milliseconds(offset))
    }
    var emptied = TokenBucket(burst: 0, now: start)
    _ = emptied.take(rate: policy.rate, burst: policy.burst, now: start)
    _ = emptied.take(rate: policy.rate, burst: policy.burst, now: start + .milliseconds(1))

    require(policy.weight.isFinite && policy.weight > 0, "\(path).weight accepted as \(policy.weight)")
    require(policy.rate.isFinite && policy.rate >= 0, "\(path).rate accepted as \(policy.rate)")
    require(policy.burst.isFinite && policy.burst >= 1, "\(path).burst accepted as \(policy.burst)")
    require(policy.maxConcurrent >= 0 && policy.maxQueued >= 0, "\(path): a negative count")
    require(
        policy.priorities.lowerBound >= 0 && policy.priorities.upperBound <= 9,
        "\(path).priority accepted as \(policy.priorities)"
    )
    let limits = policy.limits
    require(limits.timeoutMilliseconds.defaultValue <= limits.timeoutMilliseconds.maximum, "\(path): timeout_ms")
    require(limits.cpuTimeMilliseconds.defaultValue <= limits.cpuTimeMilliseconds.maximum, "\(path): cpu_time_ms")
    require(limits.memoryBytes.defaultValue <= limits.memoryBytes.maximum, "\(path): memory_bytes")
    require(limits.pids.defaultValue <= limits.pids.maximum, "\(path): pids")
    require(limits.outputBytes.defaultValue <= limits.outputBytes.maximum, "\(path): output_bytes")
    require(limits.fileSizeBytes.defaultValue <= limits.fileSizeBytes.maximum, "\(path): file_size_bytes")
    require(limits.openFiles.defaultValue <= limits.openFiles.maximum, "\(path): open_files")
    require(limits.cpuMillis.defaultValue <= limits.cpuMillis.maximum, "\(path): cpu_millis")
}

enum TenantSeeds {
    static var all: [(name: String, bytes: Data)] {
        let texts: [(String, String)] = [
            ("empty", ""),
            ("documented", documented),
            ("defaults-only", "defaults:\n  weight: 2\n  rate: 10\n  burst: 20\n"),
            ("tenants-only", "tenants:\n  acme: {weight: 3, rate: 50, burst: 100}\n  beta:\n"),
            ("flow", "{defaults: {priority: {min: 1, max: 5}}, tenants: {a: {runtimes: [null]}, b-2: {}}}"),
            (
                "limits",
                "defaults:\n  limits:\n    memory_bytes: {default: 1048576, max: 1073741824}\n    pids: {max: 10}\n"
            ),
            ("anchors", "defaults: &d {weight: 2, max_queued: 5}\ntenants:\n  a: *d\n  b: {<<: *d, burst: 3}\n"),
            (
                "tags-and-numbers",
                "defaults:\n  weight: !!float 1.5\n  rate: 0x10\n  burst: 1e3\n  max_concurrent: 0o17\n"
            ),
            ("rejected-key", "defaults:\n  colour: blue\n"),
            ("rejected-type", "tenants: [a, b]\n"),
            ("rejected-name", "tenants:\n  'a.b': {}\n  '': {}\n"),
            ("rejected-priority", "defaults:\n  priority: {min: 5, max: 2}\n"),
            ("rejected-limits", "defaults:\n  limits:\n    pids: {default: 10, max: 5}\n"),
            ("not-yaml", "defaults: [unclosed\n  - : :\n\t\"bad"),
            ("document-markers", "--- \ndefaults: {}\n...\n---\ntenants: {}\n"),
            ("multiline", "tenants:\n  ? |\n    acme\n  : {weight: 1}\n"),
            ("nested-flow-900", String(repeating: "[", count: 900) + String(repeating: "]", count: 900)),
            ("nested-flow-1500", String(repeating: "[", count: 1500)),
            (
                "nested-block-100",
                (0..<100).map { String(repeating: " ", count: $0) + "k\($0):" }.joined(separator: "\n")
            ),
            ("many-tenants", "tenants:\n" + (0..<200).map { "  t\($0): {weight: \($0 + 1)}" }.joined(separator: "\n")),
            ("long-scalar", "defaults:\n  weight: " + String(repeating: "9", count: 2000) + "\n"),
            ("aliases-fanout", aliasFanout(levels: 4, width: 4)),
        ]
        return texts.map { ($0.0 + ".yaml", Data($0.1.utf8)) } + [
            ("invalid-utf8.yaml", Data("tenants:\n  a".utf8) + Data([0xC3, 0x28, 0xFF]) + Data(": {}\n".utf8)),
            ("nul.yaml", Data("defaults:\n  weight: 1\u{0}\n".utf8)),
        ]
    }

    /// The example in `TenantDirectory`'s documentation.
    static let documented = """
        defaults:                # every key optional; these are the built-in defaults
          weight: 1
          max_concurrent: 256
          max_cpu_millis: 1000000
          max_memory_bytes: 1099511627776
          rate: 1000             # submissions per second (token bucket)
          burst: 2000
          max_queued: 10000
          runtimes: [process, null]   # omit for all
          templates: [host]           # omit for all
          priority: {min: 0, max: 9}
          limits:                # per request: default and maximum
            timeout_ms: {default: 10000, max: 300000}
            cpu_time_ms: {default: 0, max: 600000}
            memory_bytes: {default: 268435456, max: 8589934592}
            pids: {default: 128, max: 4096}
            output_bytes: {default: 1048576, max: 4194304}
            file_size_bytes: {default: 67108864, max: 1073741824}
            open_files: {default: 256, max: 4096}
            cpu_millis: {default: 1000, max: 16000}
        tenants:
          acme: {weight: 3, rate: 50, burst: 100}
          beta_2:
            max_concurrent: 4
            runtimes: [null]

        """

    /// Anchors whose aliases multiply: `levels` levels of `width` aliases each (width^levels nodes
    /// once expanded; kept small so the seed runs fast).
    static func aliasFanout(levels: Int, width: Int) -> String {
        var lines = ["x0: &x0 [a, b]"]
        for level in 1...levels {
            let refs = Array(repeating: "*x\(level - 1)", count: width).joined(separator: ", ")
            lines.append("x\(level): &x\(level) [\(refs)]")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
