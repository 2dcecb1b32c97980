import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Stateful sandboxes of a directory template: a writable layer of each sandbox's own over the
/// template (real overlayfs, idmapped), through the node's sandbox host, on every runtime the
/// machine has.
@Suite("Stateful sandboxes on a directory template, real overlayfs", .enabled(if: geteuid() == 0), .serialized)
struct SandboxTemplateTests {
    /// The runtimes this machine makes stateful sandboxes with, microvm aside (it takes only `host`).
    static let runtimes =
        ["process"] + (access("/usr/sbin/runc", X_OK) == 0 ? ["container"] : [])
        + (access("/usr/bin/runsc", X_OK) == 0 ? ["gvisor"] : [])

    /// A busybox template with accounts of its own and a file deep in `/usr`.
    static func makeStore() throws -> (store: TemplateStore, rootfs: String) {
        let source = try TemplateFixture.busyboxRoot(marker: "original")
        for tool in ["id", "stat", "touch", "mkdir", "dd", "rm", "grep", "head", "wc", "tr"] {
            try FileManager.default.createSymbolicLink(atPath: source + "/bin/" + tool, withDestinationPath: "busybox")
        }
        try FileManager.default.createDirectory(atPath: source + "/usr/share", withIntermediateDirectories: true)
        try Data("template data\n".utf8).write(to: URL(fileURLWithPath: source + "/usr/share/data.txt"))
        try FileManager.default.createDirectory(atPath: source + "/etc", withIntermediateDirectories: true)
        // An account of the template's own, and one named `user` with another id, which the
        // sandbox's own `user` replaces.
        try Data(
            "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/:/bin/sh\nuser:x:1500:1500::/nowhere:/bin/sh\n".utf8
        )
        .write(to: URL(fileURLWithPath: source + "/etc/passwd"))
        let store = TemplateStore(stateDirectory: try TemplateFixture.stateDirectory())
        try store.importDirectory(source, name: "bb", env: ["GREETING": "from-template", "LANG": "C"])
        return (store, store.root + "/bb/rootfs")
    }

    /// Mount points of this host that mention `id`.
    static func mounts(mentioning id: String) -> [String] {
        let table = readProcFile("/proc/self/mountinfo")
        return table.split(separator: "\n").map(String.init).filter { $0.contains(id) }
    }

    @Test(
        "the sandbox owns the template's files and may change any; nothing reaches the template or another sandbox; the layer holds the disk limit and is gone after kill",
        arguments: runtimes
    )
    func writableLayer(runtime: String) async throws {
        let (store, rootfs) = try Self.makeStore()
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()), templates: store)
        let tag = uniqueTag()
        var start = Hangar_V1_SandboxStart()
        start.tenant = "acme"
        start.runtime = runtime
        start.template = "bb"
        start.env = ["LANG": "C.UTF-8"]
        start.limits.fileSizeBytes = 16 << 20
        start.limits.memoryBytes = 256 << 20
        var first = start
        first.sandboxID = "tpl-a-\(tag)"
        var second = start
        second.sandboxID = "tpl-b-\(tag)"
        try await host.start(first) { message in Issue.record("sandbox a died: \(message)") }
        do {
            try await host.start(second) { message in Issue.record("sandbox b died: \(message)") }
        } catch {
            await host.kill(first.sandboxID, reason: "test")
            throw error
        }
        let a = try #require(host.dataTarget(first.sandboxID, tenant: "acme"))
        let b = try #require(host.dataTarget(second.sandboxID, tenant: "acme"))
        struct Target: StatefulSandbox {
            let agent: SandboxAgentChannel
            func kill() async -> String? { nil }
        }
        func run(_ target: SandboxDataTarget, _ script: String, as user: String = "user") async throws -> Collector {
            try await execute(
                Target(agent: target.agent),
                ["/bin/sh", "-c", script],
                { $0.user = user },
                within: .seconds(30)
            )
        }
        do {
            // The template's environment under the start's own.
            #expect(a.environment["GREETING"] == "from-template" && a.environment["LANG"] == "C.UTF-8")
            // Accounts: the template's, with the sandbox's `user` (uid 1000, home /home/user).
            let passwd = try await run(
                a,
                "grep -c '^user:' /etc/passwd; grep '^user:' /etc/passwd; grep '^daemon:' /etc/passwd"
            )
            #expect(
                text(passwd.stdout) == "1\nuser:x:1000:1000:user:/home/user:/bin/sh\ndaemon:x:1:1:daemon:/:/bin/sh\n",
                "\(text(passwd.stderr))"
            )
            // The template's root owns its files: in the sandbox, root does; `user`, which is the
            // same host id seen through a nested namespace, sees them as its own.
            let identity = try await run(a, "id -un; echo $HOME; pwd; stat -c %u /bin/busybox /usr/share/data.txt")
            #expect(text(identity.stdout) == "user\n/home/user\n/home/user\n1000\n1000\n", "\(text(identity.stderr))")
            let owners = try await run(a, "stat -c %u /bin/busybox /usr/share/data.txt", as: "root")
            #expect(text(owners.stdout) == "0\n0\n", "\(text(owners.stderr))")
            let appended = try await run(a, "echo x > /home/user/mine && echo y >> /usr/share/data.txt; echo rc=$?")
            #expect(text(appended.stdout) == "rc=0\n", "\(text(appended.stderr))")
            // root changes the template's files, anywhere in it.
            let changed = try await run(
                a,
                "echo changed > /marker.txt && echo more >> /usr/share/data.txt && mkdir -p /usr/local/new "
                    + "&& touch /usr/local/new/file && rm /bin/echo && cat /marker.txt /usr/share/data.txt "
                    + "&& ls /usr/local/new && stat -c %u /usr/local/new/file",
                as: "root"
            )
            #expect(
                text(changed.stdout) == "changed\ntemplate data\ny\nmore\nfile\n0\n" && changed.exited?.exitCode == 0,
                "\(text(changed.stdout)) \(text(changed.stderr))"
            )
            // The other sandbox and the template itself are untouched.
            let other = try await run(b, "cat /marker.txt /usr/share/data.txt; ls /usr/local/new 2>&1; ls /bin/echo")
            #expect(
                text(other.stdout).hasPrefix("originaltemplate data\nls: ")
                    && text(other.stdout).hasSuffix("/bin/echo\n")
                    && !text(other.stdout).contains("file\n"),
                "\(text(other.stdout))"
            )
            #expect(try String(contentsOfFile: rootfs + "/marker.txt", encoding: .utf8) == "original")
            #expect(try String(contentsOfFile: rootfs + "/usr/share/data.txt", encoding: .utf8) == "template data\n")
            #expect(!FileManager.default.fileExists(atPath: rootfs + "/usr/local"))
            #expect(FileManager.default.fileExists(atPath: rootfs + "/bin/echo"))
            // The layer's size is the disk limit: 2 × 10 MiB in /usr do not fit in 16 MiB.
            let full = try await run(
                a,
                "dd if=/dev/zero of=/usr/one bs=1M count=10 2>/dev/null; echo one=$?; "
                    + "dd if=/dev/zero of=/usr/two bs=1M count=10 2>&1 | grep -c 'No space left'",
                as: "root"
            )
            #expect(text(full.stdout) == "one=0\n1\n", "\(text(full.stdout)) \(text(full.stderr))")
        } catch {
            await host.kill(first.sandboxID, reason: "test")
            await host.kill(second.sandboxID, reason: "test")
            throw error
        }
        await host.kill(first.sandboxID, reason: "test")
        await host.kill(second.sandboxID, reason: "test")
        #expect(Self.mounts(mentioning: tag).isEmpty, "\(Self.mounts(mentioning: tag))")
        #expect(host.sandboxIDs.isEmpty)
    }

    @Test(
        "warm sandboxes of a directory template: a create like the last is served by a ready sandbox of that template; one of another template starts cold"
    )
    func warm() async throws {
        let (store, _) = try Self.makeStore()
        let host = ProcessSandboxHost(
            agentPath: try #require(ProcessSandbox.locateAgent()),
            templates: store,
            warmSandboxes: 1
        )
        func start(_ template: String) async throws -> String {
            var start = Hangar_V1_SandboxStart()
            start.sandboxID = "tpl-warm-\(uniqueTag())"
            start.tenant = "acme"
            start.runtime = "process"
            start.template = template
            try await host.start(start) { _ in Issue.record("a sandbox died") }
            return start.sandboxID
        }
        var started: [String] = []
        do {
            started.append(try await start("bb"))
            #expect(host.warmCounts?.served == 0 && host.warmCounts?.missed == 1)
            let deadline = ContinuousClock.now + .seconds(30)
            var ready: ProcessSandbox?
            while ready == nil && ContinuousClock.now < deadline {
                ready = host.warm?.readySandboxes.first as? ProcessSandbox
                if ready == nil { try await Task.sleep(for: .milliseconds(20)) }
            }
            let warm = try #require(ready, "no warm sandbox of template bb within 30 s")
            started.append(try await start("bb"))
            #expect(host.warmCounts?.served == 1, "\(String(describing: host.warmCounts))")
            let target = try #require(host.dataTarget(started[1], tenant: "acme"))
            #expect(target.agent === warm.agent)
            #expect(target.environment["GREETING"] == "from-template")
            let layer = try await execute(
                warm,
                ["/bin/sh", "-c", "echo warm > /marker.txt; cat /marker.txt"],
                within: .seconds(20)
            )
            #expect(text(layer.stdout) == "warm\n", "\(text(layer.stderr))")
            // The host template is another profile: cold.
            started.append(try await start("host"))
            #expect(host.warmCounts?.served == 1 && host.dataTarget(started[2], tenant: "acme")?.agent !== warm.agent)
        } catch {
            for id in started { await host.kill(id, reason: "test") }
            await host.stop()
            throw error
        }
        for id in started { await host.kill(id, reason: "test") }
        await host.stop()
        #expect(host.sandboxIDs.isEmpty)
    }

    @Test("a template the node lacks, and a directory template on microvm, are refused naming them")
    func refusals() async throws {
        let (store, _) = try Self.makeStore()
        #expect(throws: TemplateError("template 'nope' is not on this node (no \(store.root)/nope/manifest.json)")) {
            _ = try ProcessSandboxHost.template(named: "nope", runtime: "process", in: store)
        }
        #expect(
            throws: TemplateError(
                "template 'bb' has no microvm sandboxes: a microVM runs its guest's own root filesystem; use 'host'"
            )
        ) {
            _ = try ProcessSandboxHost.template(named: "bb", runtime: "microvm", in: store)
        }
        #expect(
            try ProcessSandboxHost.template(named: "bb", runtime: "container", in: store).rootfs == store.root
                + "/bb/rootfs"
        )
        #expect(try ProcessSandboxHost.template(named: "", runtime: "microvm", in: nil) == .host)
    }

    @Test("accounts: the template's kept, any `user` or uid-1000 entry replaced, root added when missing")
    func accounts() {
        let merged = TemplateOverlay.accounts(
            template: "daemon:x:1:1::/:/bin/sh\nuser:x:5:5::/x:/bin/sh\nother:x:1000:1000::/y:/bin/sh\n",
            adding: "user:x:1000:1000:user:/home/user:/bin/bash",
            id: 1000,
            fallbackRoot: "root:x:0:0:root:/root:/bin/bash"
        )
        #expect(
            merged
                == "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/bash\n"
        )
    }
}
