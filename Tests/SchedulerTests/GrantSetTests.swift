import HangarShared
import Testing

/// The grant model's rules, the precedence ones above all (Deno's CVE-2025-48888: allow and deny of
/// one path ended allowed). Every combination of two grants on a path and its parent, child or
/// sibling is checked against the rule stated in the table, and the mount plan is checked to give
/// exactly the declared access at every path, for random grant sets too.
@Suite("Grants: parsing, precedence, mount plans")
struct GrantSetTests {
    enum Kind: CaseIterable, CustomStringConvertible {
        case allowRead, allowWrite, denyRead, denyWrite
        var description: String { "\(self)" }
    }

    func grants(_ entries: [(Kind, String)], net: [String] = [], denyNet: [String] = []) throws -> GrantSet {
        var message = Hangar_V1_Grants()
        for (kind, path) in entries {
            switch kind {
            case .allowRead: message.allowRead.append(path)
            case .allowWrite: message.allowWrite.append(path)
            case .denyRead: message.denyRead.append(path)
            case .denyWrite: message.denyWrite.append(path)
            }
        }
        message.allowNet = net
        message.denyNet = denyNet
        return try GrantSet(message)
    }

    /// The declarative rule, written out independently of `GrantSet.access`: read needs an allow
    /// at or above and no deny_read at or above; write needs read, an allow_write at or above and no
    /// deny_write at or above.
    func expected(_ entries: [(Kind, String)], at path: String) -> GrantSet.Access {
        func covered(_ kind: Kind) -> Bool {
            entries.contains { $0.0 == kind && ($0.1 == "/" || path == $0.1 || path.hasPrefix($0.1 + "/")) }
        }
        let read = (covered(.allowRead) || covered(.allowWrite)) && !covered(.denyRead)
        guard read else { return .none }
        return covered(.allowWrite) && !covered(.denyWrite) ? .readWrite : .read
    }

    @Test("allow and deny of the same path: deny wins, for every pair")
    func sameStringPrecedence() throws {
        let table: [(Kind, Kind, GrantSet.Access)] = [
            (.allowRead, .denyRead, .none),  // the CVE-2025-48888 case
            (.allowWrite, .denyRead, .none),
            (.allowWrite, .denyWrite, .read),
            (.allowRead, .denyWrite, .read),
            (.allowRead, .allowWrite, .readWrite),
            (.denyRead, .denyWrite, .none),
        ]
        for (first, second, access) in table {
            for order in [[first, second], [second, first]] {
                let set = try grants(order.map { ($0, "/data") })
                #expect(set.access("/data") == access, "\(order) on /data")
                #expect(set.access("/data/x/y") == access, "\(order) below /data")
                #expect(set.access("/other") == .none)
            }
        }
    }

    @Test("every pair of grants on a path and its parent, child or sibling gives the declared access everywhere")
    func everyCombination() throws {
        let places = ["/data", "/data/sub", "/", "/datasub", "/data/sub/deep"]
        let probes = ["/", "/data", "/data/sub", "/data/sub/deep/file", "/data/other", "/datasub", "/elsewhere"]
        var checked = 0
        for firstKind in Kind.allCases {
            for secondKind in Kind.allCases {
                for firstPlace in places {
                    for secondPlace in places {
                        let entries = [(firstKind, firstPlace), (secondKind, secondPlace)]
                        let allowsRoot = entries.contains { ($0.0 == .allowRead || $0.0 == .allowWrite) && $0.1 == "/" }
                        if allowsRoot { continue }  // "/" reaches /proc: refused (tested below)
                        let set = try grants(entries)
                        for probe in probes {
                            #expect(set.access(probe) == expected(entries, at: probe), "\(entries) at \(probe)")
                            #expect(planned(set, at: probe) == set.access(probe), "\(entries): plan at \(probe)")
                            checked += 1
                        }
                    }
                }
            }
        }
        #expect(checked > 2000)
    }

    @Test("a deny above an allow wins; an allow above a deny leaves the deny's subtree out")
    func nesting() throws {
        let deniedAbove = try grants([(.denyRead, "/data"), (.allowRead, "/data/public")])
        #expect(deniedAbove.access("/data/public") == .none)
        #expect(deniedAbove.mountPlan().isEmpty)
        let carved = try grants([(.allowWrite, "/data"), (.denyWrite, "/data/logs"), (.denyRead, "/data/secret")])
        #expect(
            carved.mountPlan().map(\.description) == [
                "/data read-write", "/data/logs read-only", "/data/secret none",
            ]
        )
    }

    @Test("random grant sets: the mount plan gives exactly the declared access at every probed path")
    func randomPlans() throws {
        var random = SystemRandomNumberGenerator()
        let names = ["a", "b", "c"]
        for _ in 0..<500 {
            var entries: [(Kind, String)] = []
            for _ in 0..<Int.random(in: 1...6, using: &random) {
                let depth = Int.random(in: 1...3, using: &random)
                let path = "/" + (0..<depth).map { _ in names.randomElement(using: &random)! }.joined(separator: "/")
                entries.append((Kind.allCases.randomElement(using: &random)!, path))
            }
            let set = try grants(entries)
            for first in names {
                for second in names + [""] {
                    for third in names + [""] where !(second.isEmpty && !third.isEmpty) {
                        let probe = "/" + [first, second, third].filter { !$0.isEmpty }.joined(separator: "/")
                        #expect(set.access(probe) == expected(entries, at: probe), "\(entries) at \(probe)")
                        #expect(planned(set, at: probe) == set.access(probe), "\(entries): plan at \(probe)")
                    }
                }
            }
        }
    }

    /// The access the mount plan gives `path`: the deepest mount at or above it.
    func planned(_ set: GrantSet, at path: String) -> GrantSet.Access {
        set.mountPlan().last { $0.path == "/" || path == $0.path || path.hasPrefix($0.path + "/") }?.access ?? .none
    }

    @Test("paths are normalized; relative, dot-dot, NUL and /proc, /sys, /dev grants are refused with the entry named")
    func pathSyntax() throws {
        let set = try grants([(.allowRead, "//data///x/")])
        #expect(set.allowRead.map(\.path) == ["/data/x"])
        let refused: [(Kind, String, String)] = [
            (.allowRead, "data", "grants.allow_read[0]"),
            (.allowRead, "/data/../etc", "grants.allow_read[0]"),
            (.allowWrite, "/data/./x", "grants.allow_write[0]"),
            (.allowRead, "/da\u{0}ta", "grants.allow_read[0]"),
            (.allowRead, "/proc/1/root", "grants.allow_read[0]"),
            (.allowWrite, "/sys", "grants.allow_write[0]"),
            (.allowRead, "/", "grants.allow_read[0]"),
            (.denyRead, "relative", "grants.deny_read[0]"),
        ]
        for (kind, path, field) in refused {
            #expect(throws: GrantError.self, "\(kind) \(path)") { try grants([(kind, path)]) }
            do {
                _ = try grants([(kind, path)])
            } catch {
                #expect((error as? GrantError)?.field == field, "\(kind) \(path): \(error)")
            }
        }
        // A deny may name anything, /proc included: it only takes away.
        #expect(try grants([(.denyRead, "/proc")]).access("/proc") == .none)
        let many = Array(repeating: (Kind.allowRead, "/data"), count: GrantSet.maxEntries + 1)
        #expect(throws: GrantError.self) { try grants(many) }
    }

    @Test("network grants: hosts, *.domain, IPv4 networks, ports; deny wins")
    func network() throws {
        let set = try grants(
            [],
            net: ["API.example.com:443", "*.pypi.org", "203.0.113.0/24", "198.51.100.7:8080"],
            denyNet: ["evil.pypi.org", "203.0.113.99"]
        )
        #expect(
            set.allowNet.map(\.description) == [
                "api.example.com:443", "*.pypi.org", "203.0.113.0/24", "198.51.100.7:8080",
            ]
        )
        #expect(set.allowsNet(host: "api.example.com", address: nil, port: 443))
        #expect(!set.allowsNet(host: "api.example.com", address: nil, port: 80), "the port is part of the grant")
        #expect(set.allowsNet(host: "files.pypi.org", address: nil, port: 443))
        #expect(!set.allowsNet(host: "pypi.org", address: nil, port: 443), "*.domain is its subdomains only")
        #expect(!set.allowsNet(host: "evil.pypi.org", address: nil, port: 443), "deny wins over a wildcard")
        #expect(!set.allowsNet(host: "notpypi.org", address: nil, port: 443))
        #expect(set.allowsNet(host: nil, address: 0xCB00_7105, port: 22))  // 203.0.113.5
        #expect(!set.allowsNet(host: nil, address: 0xCB00_7163, port: 22), "deny wins inside an allowed network")
        #expect(set.allowsNet(host: nil, address: 0xC633_6407, port: 8080))
        #expect(!set.allowsNet(host: nil, address: 0xC633_6407, port: 8081))
        for bad in ["", "host:0", "host:70000", "-bad.com", "a..b", "1.2.3.4/33", "ex ample.com", "*.", "héllo.com"] {
            #expect(throws: GrantError.self, "\(bad)") { try grants([], net: [bad]) }
        }
        // Allow and deny of the same destination: denied.
        let same = try grants([], net: ["api.example.com"], denyNet: ["api.example.com"])
        #expect(!same.allowsNet(host: "api.example.com", address: nil, port: 443))
    }
}
