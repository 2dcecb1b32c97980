import Foundation
import HangarNode
import HangarShared
import Testing

private typealias H = Hostile

/// Path grants enforced by each runtime with real sandboxes (bubblewrap, runc, runsc): a granted
/// host path appears at the same path, read-only or read-write; an ungranted one does not exist; a
/// deny inside a grant wins (hidden or read-only); a symlinked grant is refused. Each run gets its
/// own host folder, removed afterwards.
@Suite("Grants: host paths on every runtime, real sandboxes", .serialized)
struct GrantEnforcementTests {
    /// `base/ro/file`, `base/ro/secret/key`, `base/rw/`, `base/rw/locked/file`, `base/other/file`.
    final class HostFolder: Sendable {
        let base: String

        init() throws {
            base = "/var/tmp/hangar-grants-\(UUID().uuidString.prefix(8))"
            let files = FileManager.default
            for directory in ["ro/secret", "rw/locked", "other"] {
                try files.createDirectory(atPath: "\(base)/\(directory)", withIntermediateDirectories: true)
            }
            try "readable\n".write(toFile: "\(base)/ro/file", atomically: true, encoding: .utf8)
            try "hidden\n".write(toFile: "\(base)/ro/secret/key", atomically: true, encoding: .utf8)
            try "locked\n".write(toFile: "\(base)/rw/locked/file", atomically: true, encoding: .utf8)
            try "other\n".write(toFile: "\(base)/other/file", atomically: true, encoding: .utf8)
            // The sandbox's host uid is not ours: everything readable, rw/ writable by anyone.
            for path in ["", "/ro", "/ro/secret", "/rw", "/rw/locked", "/other"] { chmod(base + path, 0o755) }
            chmod(base + "/rw", 0o777)
            chmod(base + "/rw/locked", 0o777)
        }

        deinit { try? FileManager.default.removeItem(atPath: base) }
    }

    /// What a job with ``HostFolder``'s grants tries (`$1` is the folder), a `NAME RESULT` line each.
    static let checks = """
        b=$1
        echo "read $(cat $b/ro/file 2>/dev/null || echo DENIED)"
        echo "ro-write $( (echo x > $b/ro/new) 2>/dev/null && echo WROTE || echo DENIED)"
        echo "rw-write $( (echo written > $b/rw/new) 2>/dev/null && echo WROTE || echo DENIED)"
        echo "locked-read $(cat $b/rw/locked/file 2>/dev/null || echo DENIED)"
        echo "locked-write $( (echo x > $b/rw/locked/file) 2>/dev/null && echo WROTE || echo DENIED)"
        echo "secret $(cat $b/ro/secret/key 2>/dev/null || echo DENIED)"
        echo "other $(test -e $b/other && echo EXISTS || echo ABSENT)"
        echo "host-etc $(test -e /etc/shadow && echo EXISTS || echo ABSENT)"
        """

    @Test(
        "granted paths appear read-only or read-write, ungranted ones do not exist, denies win",
        arguments: HostileRuntime.allCases
    )
    func enforced(kind: HostileRuntime) async throws {
        let folder = try HostFolder()
        let base = folder.base
        let run = await H.shell(kind, "grants", Self.checks, arguments: [base]) {
            $0.limits.timeoutMs = kind.timeout(10_000)
            $0.grants.allowRead = ["\(base)/ro"]
            $0.grants.allowWrite = ["\(base)/rw"]
            $0.grants.denyRead = ["\(base)/ro/secret"]
            $0.grants.denyWrite = ["\(base)/rw/locked"]
        }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        #expect(run.field("read") == ["readable"], "\(run.summary)")
        #expect(run.field("ro-write") == ["DENIED"], "\(run.summary)")
        #expect(run.field("rw-write") == ["WROTE"], "\(run.summary)")
        #expect(run.field("locked-read") == ["locked"], "\(run.summary)")
        #expect(run.field("locked-write") == ["DENIED"], "\(run.summary)")
        #expect(run.field("secret") == ["DENIED"], "\(run.summary)")
        #expect(run.field("other") == ["ABSENT"], "\(run.summary)")
        #expect(run.field("host-etc") == ["ABSENT"], "\(run.summary)")
        // The write went to the host folder, and nothing else changed there.
        #expect((try? String(contentsOfFile: "\(base)/rw/new", encoding: .utf8)) == "written\n")
        #expect(!FileManager.default.fileExists(atPath: "\(base)/ro/new"))
        #expect((try? String(contentsOfFile: "\(base)/rw/locked/file", encoding: .utf8)) == "locked\n")
    }

    @Test("without grants the host folder does not exist in the sandbox", arguments: HostileRuntime.allCases)
    func absentWithoutGrants(kind: HostileRuntime) async throws {
        let folder = try HostFolder()
        let run = await H.shell(
            kind,
            "nogrants",
            "test -e $1/ro/file && echo EXISTS || echo ABSENT",
            arguments: [folder.base]
        ) {
            $0.limits.timeoutMs = kind.timeout(10_000)
        }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        #expect(run.stdout == "ABSENT\n", "\(run.summary)")
    }

    @Test("a granted path that is a symlink on the node is refused, naming it", arguments: HostileRuntime.allCases)
    func symlinkRefused(kind: HostileRuntime) async throws {
        let folder = try HostFolder()
        let link = "\(folder.base)/link"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "/etc")
        let run = await H.shell(kind, "grantlink", "cat $1/link/hostname", arguments: [folder.base]) {
            $0.limits.timeoutMs = kind.timeout(10_000)
            $0.grants.allowRead = [link]
        }
        #expect(run.outcome.status == .error, "\(run.summary)")
        #expect(run.outcome.message.contains("\(link) is a symlink"), "\(run.summary)")
    }
}
