import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

/// Host path grants in stateful sandboxes, real bubblewrap (and runc where it is there) with the
/// real agent: a granted folder appears at the same path, read-only or read-write as granted, a
/// denied one inside it is empty, an ungranted one does not exist; a grant reaching the sandbox's
/// own places is refused by the host.
@Suite("Stateful sandboxes: host path grants", .enabled(if: geteuid() == 0), .serialized)
struct SandboxGrantMountsTests {
    /// A host folder tree for one test under `/var/tmp` (outside every sandbox's own places):
    /// `read/file`, `read/secret/key`, `write/` (writable by others: sandboxes run as host uids of
    /// their own), `other/file`. Removed by the caller.
    static func makeTree() throws -> String {
        let root = "/var/tmp/hangar-sbxgrants-\(uniqueTag())"
        let files = FileManager.default
        for directory in ["read/secret", "write", "other"] {
            try files.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        try "granted\n".write(toFile: root + "/read/file", atomically: false, encoding: .utf8)
        try "hidden\n".write(toFile: root + "/read/secret/key", atomically: false, encoding: .utf8)
        try "ungranted\n".write(toFile: root + "/other/file", atomically: false, encoding: .utf8)
        for path in [root, root + "/read", root + "/read/secret", root + "/other"] { chmod(path, 0o755) }
        for path in [root + "/read/file", root + "/read/secret/key", root + "/other/file"] { chmod(path, 0o644) }
        chmod(root + "/write", 0o777)
        return root
    }

    static func grants(_ root: String) -> Hangar_V1_Grants {
        var grants = Hangar_V1_Grants()
        grants.allowRead = [root + "/read"]
        grants.allowWrite = [root + "/write"]
        grants.denyRead = [root + "/read/secret"]
        return grants
    }

    /// The checks, in shell, of a sandbox given ``grants(_:)`` on `root`: one line per check.
    static func script(_ root: String) -> String {
        """
        cat \(root)/read/file
        find \(root)/read/secret -mindepth 1 | wc -l
        (echo x > \(root)/read/new) 2>/dev/null && echo read-writable || echo read-only
        echo written > \(root)/write/out && echo write-ok
        test -e \(root)/other && echo other-exists || echo other-absent
        """
    }

    static func check(_ output: String, root: String) {
        #expect(output == "granted\n0\nread-only\nwrite-ok\nother-absent\n", "\(output)")
        let written = try? String(contentsOfFile: root + "/write/out", encoding: .utf8)
        #expect(written == "written\n", "the write did not reach the host")
        #expect(!FileManager.default.fileExists(atPath: root + "/read/new"))
    }

    @Test("process sandbox: read-only, read-write, denied and ungranted paths")
    func process() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let root = try Self.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let sandbox = try await ProcessSandbox.start(
            id: "grants-\(uniqueTag())",
            grants: Self.grants(root),
            agentPath: agentPath
        )
        do {
            let result = try await run(sandbox, ["sh", "-c", Self.script(root)])
            #expect(result.exited?.exitCode == 0, "\(text(result.stderr))")
            Self.check(text(result.stdout), root: root)
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
    }

    @Test(
        "container sandbox: read-only, read-write, denied and ungranted paths",
        .enabled(if: access("/usr/sbin/runc", X_OK) == 0)
    )
    func container() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let root = try Self.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let sandbox = try await ContainerSandbox.start(
            id: "grants-\(uniqueTag())",
            grants: Self.grants(root),
            agentPath: agentPath,
            runtime: ContainerSandboxTests.runtime
        )
        do {
            let result = try await ContainerSandboxTests.run(sandbox, ["sh", "-c", Self.script(root)])
            #expect(result.exited?.exitCode == 0, "\(text(result.stderr))")
            Self.check(text(result.stdout), root: root)
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
    }

    @Test("the host refuses grants reaching a sandbox's own places, and unknown network modes")
    func refusals() async throws {
        for path in ["/home/user", "/home", "/tmp/x", "/root", "/", "/.hangar/agent"] {
            var grants = Hangar_V1_Grants()
            grants.allowRead = [path]
            let problem = ProcessSandboxHost.checkGrants(grants)
            #expect(problem?.contains("grants.allow_read[0]") == true, "\(path): \(problem ?? "accepted")")
        }
        var fine = Hangar_V1_Grants()
        fine.allowWrite = ["/srv/data", "/home/users"]
        #expect(ProcessSandboxHost.checkGrants(fine) == nil)

        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let host = ProcessSandboxHost(agentPath: agentPath)
        var start = Hangar_V1_SandboxStart()
        start.sandboxID = "refused-\(uniqueTag())"
        start.tenant = "acme"
        start.runtime = "process"
        start.network.mode = .UNRECOGNIZED(9)
        do {
            try await host.start(start) { _ in }
            Issue.record("an unknown network mode was not refused")
            await host.kill(start.sandboxID, reason: "test")
        } catch {
            #expect(error.message.contains("network mode 9"), "\(error.message)")
        }
        start.network = Hangar_V1_NetworkPolicy()
        start.grants.allowRead = ["/tmp"]
        do {
            try await host.start(start) { _ in }
            Issue.record("a grant of /tmp was not refused")
            await host.kill(start.sandboxID, reason: "test")
        } catch {
            #expect(error.message.contains("/tmp"), "\(error.message)")
        }
        #expect(host.sandboxIDs.isEmpty)
    }
}
