import Foundation
import Glibc
import HangarShared
import Logging
import Testing

@testable import HangarNode

/// Grant views (``GrantViews``): the prepared mount trees that give a `process` job its grants with
/// one bind, on a real host (root) with real bubblewrap sandboxes.
@Suite("Grant views: a grant set's mounts prepared once, shared, taken down", .serialized)
struct GrantViewsTests {
    /// `base/ro/file`, `base/ro/secret/key`, `base/rw/`, readable and (rw/) writable by anyone.
    final class Folder: Sendable {
        let base = "/var/tmp/hangar-views-\(UUID().uuidString.prefix(8))"

        init() throws {
            for directory in ["ro/secret", "rw"] {
                try FileManager.default.createDirectory(
                    atPath: "\(base)/\(directory)",
                    withIntermediateDirectories: true
                )
            }
            try "readable\n".write(toFile: "\(base)/ro/file", atomically: true, encoding: .utf8)
            try "hidden\n".write(toFile: "\(base)/ro/secret/key", atomically: true, encoding: .utf8)
            for path in ["", "/ro", "/ro/secret"] { chmod(base + path, 0o755) }
            chmod(base + "/rw", 0o777)
        }

        deinit { try? FileManager.default.removeItem(atPath: base) }

        var grants: Hangar_V1_Grants {
            .with {
                $0.allowRead = ["\(base)/ro"]
                $0.allowWrite = ["\(base)/rw"]
                $0.denyRead = ["\(base)/ro/secret"]
            }
        }
    }

    /// Whether `path` is a mount point: another file system than its parent folder's.
    static func isMounted(_ path: String) -> Bool {
        var status = stat()
        var parent = stat()
        return lstat(path, &status) == 0 && lstat((path as NSString).deletingLastPathComponent, &parent) == 0
            && status.st_dev != parent.st_dev
    }

    @Test("while the node runs, jobs with one grant set share one view, which lingers and goes at the stop")
    func sharedAndDrained() async throws {
        let folder = try Folder()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-ledger-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ledger = SandboxLedger(directory: directory)
        try ledger.open()
        let resources = NodeResources(users: SandboxUsers(first: 3_700_000, count: 16), ledger: ledger)
        let runtime = ProcessRuntime(resources: resources)
        let script = """
            b=$1; echo "$(cat $b/ro/file) $(cat $b/ro/secret/key 2>/dev/null || echo DENIED) \
            $( (echo x > $b/ro/new) 2>/dev/null && echo WROTE || echo DENIED) \
            $( (echo $2 > $b/rw/$2) 2>/dev/null && echo WROTE || echo DENIED) $(ls / | tr '\\n' ' ')"
            """
        for round in 0..<2 {
            var spec = Hostile.spec(["/bin/sh", "-c", script, "sh", folder.base, "n\(round)"])
            spec.grants = folder.grants
            let outcome = await runtime.run(spec, jobID: "views-\(round)-\(uniqueTag())")
            let stdout = String(decoding: outcome.stdout, as: UTF8.self)
            #expect(
                outcome.status == .succeeded,
                "\(outcome.message) \(String(decoding: outcome.stderr, as: UTF8.self))"
            )
            #expect(stdout.hasPrefix("readable DENIED DENIED WROTE "), "\(stdout)")
            // The view's top-level folder is there; nothing of the host's other folders is.
            #expect(stdout.contains(" var ") && !stdout.contains(" home ") && !stdout.contains(" root "), "\(stdout)")
            #expect(resources.grantViews.count == 1, "one view for both jobs")
        }
        #expect(FileManager.default.fileExists(atPath: "\(folder.base)/rw/n1"))
        #expect(!FileManager.default.fileExists(atPath: "\(folder.base)/ro/new"))

        // Two leases of one grant set are one view; it lingers unused while the ledger is open.
        let mounts = try GrantMounts(folder.grants)
        let first = try #require(resources.grantViews.acquire(mounts))
        let second = try #require(resources.grantViews.acquire(mounts))
        #expect(first.path == second.path && Self.isMounted(first.path))
        #expect(first.bubblewrapArguments == ["--bind", first.path + "/var", "/var"])
        resources.grantViews.release(first)
        resources.grantViews.release(second)
        #expect(Self.isMounted(first.path), "an unused view lingers while the node runs")

        // A granted folder replaced since the view was made: the next job gets a new view.
        try FileManager.default.removeItem(atPath: "\(folder.base)/rw")
        try FileManager.default.createDirectory(atPath: "\(folder.base)/rw", withIntermediateDirectories: false)
        let renewed = try #require(resources.grantViews.acquire(mounts))
        #expect(renewed.path != first.path && !Self.isMounted(first.path))
        resources.grantViews.release(renewed)

        // The node's stop takes it down, with everything in it, and marks it gone in the ledger.
        await NodeAgent.releaseSandboxResources(resources, logger: Logger(label: "test"))
        #expect(!Self.isMounted(renewed.path) && !FileManager.default.fileExists(atPath: renewed.path))
        #expect(resources.grantViews.count == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty, "the ledger lists nothing")
    }

    @Test("without a running node a view goes with its last job; grants under the sandbox's own folders get binds")
    func notLingeringAndIneligible() async throws {
        let folder = try Folder()
        let views = GrantViews(ledger: SandboxLedger(directory: "/nonexistent-hangar-ledger"))
        let lease = try #require(views.acquire(try GrantMounts(folder.grants)))
        #expect(Self.isMounted(lease.path))
        views.release(lease)
        #expect(!Self.isMounted(lease.path) && views.count == 0)

        let underEtc = try GrantMounts(Hangar_V1_Grants.with { $0.allowRead = ["/etc/hostname"] })
        #expect(!GrantViews.eligible(underEtc, template: nil))
        #expect(GrantViews.eligible(try GrantMounts(folder.grants), template: nil))
        #expect(!GrantViews.eligible(.none, template: nil))
    }
}
