import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

// Host path grants in real qemu microVMs (TCG here: a boot takes seconds): the granted paths shared
// by a real virtiofsd and mounted by the guest agent. The runtime has uids and a grant view root of
// its own, so nothing here depends on state outside the test.

private let viewRoot = "/run/hangar-grant-views-test-\(getpid())"
private let grantVM = MicroVMRuntime(
    resources: NodeResources(users: SandboxUsers(first: 3_800_000, count: 4), grantViewRoot: viewRoot)
)

/// Lines `key value` of a job's stdout, as key → values.
private func field(_ stdout: Data, _ key: String) -> [String] {
    text(stdout).split(separator: "\n").compactMap { line in
        line.hasPrefix(key + " ") ? String(line.dropFirst(key.count + 1)) : nil
    }
}

/// virtiofsd processes serving a view under this suite's root.
private func shareDaemons() -> [String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.filter { $0.allSatisfy(\.isNumber) }.filter { pid in
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: raw, as: UTF8.self).contains("source=" + viewRoot)
    }
}

extension MicroVMSuites {
    @Suite("MicroVM host path grants, real qemu and virtiofsd", .serialized)
    struct MicroVMGrantTests {
        private func requireShares() async throws {
            switch await grantVM.host() {
            case .failure(let error):
                Issue.record("the microvm runtime cannot run here: \(error.description)")
                throw error
            case .success(let host):
                try #require(host.canShare, "the guest image has no virtiofs: \(host.contents)")
            }
        }

        private func vmShell(
            _ script: String,
            _ base: String,
            _ configure: (inout Hangar_V1_JobSpec) -> Void
        ) async -> RunOutcome {
            let spec = job(["/bin/sh", "-c", script, "sh", base]) {
                $0.runtime = "microvm"
                $0.limits.timeoutMs = 30_000
                $0.limits.memoryBytes = 64 << 20
                configure(&$0)
            }
            return await grantVM.run(spec, jobID: "vm-grants")
        }

        @Test("granted paths appear read-only or read-write, ungranted ones do not exist, denies win")
        func enforced() async throws {
            try await requireShares()
            let folder = try GrantEnforcementTests.HostFolder()
            let base = folder.base
            let script =
                GrantEnforcementTests.checks + """

                    echo "share $(test -e /run/hangar-share && echo EXISTS || echo ABSENT)"
                    echo "mounts $(grep -c virtiofs /proc/mounts)"
                    """
            let outcome = await vmShell(script, base) {
                $0.grants.allowRead = ["\(base)/ro"]
                $0.grants.allowWrite = ["\(base)/rw"]
                $0.grants.denyRead = ["\(base)/ro/secret"]
                $0.grants.denyWrite = ["\(base)/rw/locked"]
            }
            let summary =
                "\(outcome.status) \(outcome.message) stdout: \(text(outcome.stdout)) stderr: \(text(outcome.stderr))"
            #expect(outcome.status == .succeeded, "\(summary)")
            #expect(field(outcome.stdout, "read") == ["readable"], "\(summary)")
            #expect(field(outcome.stdout, "ro-write") == ["DENIED"], "\(summary)")
            #expect(field(outcome.stdout, "rw-write") == ["WROTE"], "\(summary)")
            #expect(field(outcome.stdout, "locked-read") == ["locked"], "\(summary)")
            #expect(field(outcome.stdout, "locked-write") == ["DENIED"], "\(summary)")
            #expect(field(outcome.stdout, "secret") == ["DENIED"], "\(summary)")
            #expect(field(outcome.stdout, "other") == ["ABSENT"], "\(summary)")
            #expect(field(outcome.stdout, "host-etc") == ["ABSENT"], "\(summary)")
            // The share itself is detached: only the granted paths' binds of it are left.
            #expect(field(outcome.stdout, "share") == ["ABSENT"], "\(summary)")
            #expect(field(outcome.stdout, "mounts") == ["3"], "\(summary)")
            // The write reached the host folder, and nothing else changed there.
            #expect((try? String(contentsOfFile: "\(base)/rw/new", encoding: .utf8)) == "written\n")
            // The job's uid 65534 is host uid 165534 (virtiofsd's user namespace), as in a container.
            var status = stat()
            #expect(lstat("\(base)/rw/new", &status) == 0 && status.st_uid == MicroVMShare.mapping.hostID + 65534)
            #expect(!FileManager.default.fileExists(atPath: "\(base)/ro/new"))
            #expect((try? String(contentsOfFile: "\(base)/rw/locked/file", encoding: .utf8)) == "locked\n")
            // Nothing of the share is left on the host: no daemon, no socket, no view.
            #expect(shareDaemons().isEmpty)
            #expect(qemuChildProcesses().isEmpty)
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: MicroVMShare.socketRoot)) ?? []).isEmpty)
            #expect(grantVM.resources.grantViews.count == 0)
            #expect(rmdir(viewRoot) == 0, "the view root still holds something")
        }

        @Test("a read grant over a write grant: the nested path stays writable, a deny inside hides")
        func nested() async throws {
            try await requireShares()
            let folder = try GrantEnforcementTests.HostFolder()
            let base = folder.base
            let script = """
                b=$1
                echo "ro-write $( (echo x > $b/ro/new) 2>/dev/null && echo WROTE || echo DENIED)"
                echo "rw-write $( (echo nested > $b/rw/new) 2>/dev/null && echo WROTE || echo DENIED)"
                echo "other $(ls $b/other | wc -l)"
                echo "other-write $( (echo x > $b/other/new) 2>/dev/null && echo WROTE || echo DENIED)"
                """
            let outcome = await vmShell(script, base) {
                $0.grants.allowRead = [base]
                $0.grants.allowWrite = ["\(base)/rw"]
                $0.grants.denyRead = ["\(base)/other"]
            }
            let summary =
                "\(outcome.status) \(outcome.message) stdout: \(text(outcome.stdout)) stderr: \(text(outcome.stderr))"
            #expect(outcome.status == .succeeded, "\(summary)")
            #expect(field(outcome.stdout, "ro-write") == ["DENIED"], "\(summary)")
            #expect(field(outcome.stdout, "rw-write") == ["WROTE"], "\(summary)")
            #expect(field(outcome.stdout, "other") == ["0"], "\(summary)")
            #expect(field(outcome.stdout, "other-write") == ["DENIED"], "\(summary)")
            #expect((try? String(contentsOfFile: "\(base)/rw/new", encoding: .utf8)) == "nested\n")
            #expect(rmdir(viewRoot) == 0, "the view root still holds something")
        }

        @Test("a granted path that is a symlink on the node is refused, naming it, and no VM starts")
        func symlinkRefused() async throws {
            try await requireShares()
            let folder = try GrantEnforcementTests.HostFolder()
            let link = "\(folder.base)/link"
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "/etc")
            let outcome = await vmShell("cat $1/link/hostname", folder.base) {
                $0.grants.allowRead = [link]
            }
            #expect(outcome.status == .error, "\(outcome.message)")
            #expect(outcome.message.contains("\(link) is a symlink"), "\(outcome.message)")
            #expect(shareDaemons().isEmpty)
        }

        @Test("a stateful sandbox gets its grants too; what its commands write is host uid 100000's")
        func sandbox() async throws {
            try await requireShares()
            let folder = try GrantEnforcementTests.HostFolder()
            let base = folder.base
            var grants = Hangar_V1_Grants()
            grants.allowRead = ["\(base)/ro"]
            grants.allowWrite = ["\(base)/rw"]
            grants.denyRead = ["\(base)/ro/secret"]
            let sandbox = try await MicroVMSandbox.start(
                id: "vm-grants-\(uniqueTag())",
                grants: grants,
                runtime: grantVM
            )
            let script = """
                b=$1
                echo "read $(cat $b/ro/file 2>/dev/null || echo DENIED)"
                echo "ro-write $( (echo x > $b/ro/new) 2>/dev/null && echo WROTE || echo DENIED)"
                echo "rw-write $( (echo from-sandbox > $b/rw/new) 2>/dev/null && echo WROTE || echo DENIED)"
                echo "secret $(cat $b/ro/secret/key 2>/dev/null || echo DENIED)"
                echo "other $(test -e $b/other && echo EXISTS || echo ABSENT)"
                """
            do {
                for user in ["user", "root"] {
                    let run = try await execute(
                        sandbox,
                        ["sh", "-c", script, "sh", base],
                        { $0.user = user },
                        within: .seconds(60)
                    )
                    let summary = "as \(user): \(text(run.stdout)) \(text(run.stderr))"
                    #expect(run.exited?.exitCode == 0, "\(summary)")
                    #expect(field(run.stdout, "read") == ["readable"], "\(summary)")
                    #expect(field(run.stdout, "ro-write") == ["DENIED"], "\(summary)")
                    #expect(field(run.stdout, "rw-write") == ["WROTE"], "\(summary)")
                    #expect(field(run.stdout, "secret") == ["DENIED"], "\(summary)")
                    #expect(field(run.stdout, "other") == ["ABSENT"], "\(summary)")
                    // The guest's root is no host root: the file is the mapped uid's.
                    var status = stat()
                    #expect(lstat("\(base)/rw/new", &status) == 0)
                    #expect(status.st_uid == MicroVMShare.mapping.hostID, "\(summary)")
                    unlink("\(base)/rw/new")
                }
            } catch {
                await sandbox.kill()
                throw error
            }
            #expect(await sandbox.kill() == nil)
            #expect(shareDaemons().isEmpty)
            #expect(qemuChildProcesses().isEmpty)
            #expect(grantVM.resources.grantViews.count == 0)
            #expect(rmdir(viewRoot) == 0, "the view root still holds something")
        }

        @Test(
            "a sandbox with grants outlives its node: hung up on, its share serves on; adopt() takes both over; its kill leaves nothing"
        )
        func sandboxReadopted() async throws {
            try await requireShares()
            let folder = try GrantEnforcementTests.HostFolder()
            let base = folder.base
            var grants = Hangar_V1_Grants()
            grants.allowRead = ["\(base)/ro"]
            grants.allowWrite = ["\(base)/rw"]
            let original = try await MicroVMSandbox.start(
                id: "vm-grants-adopt-\(uniqueTag())",
                grants: grants,
                runtime: grantVM
            )
            let saved = try #require(original.saved, "a microvm sandbox with grants can be re-adopted")
            let share = try #require(saved.share)
            original.agent.close()  // the node goes away
            #expect(SandboxLedger.startTime(of: share.daemonPID) == share.daemonStart, "virtiofsd serves on")

            // Another node process: its own uid pool (the same range) and views on the same root.
            let resources = NodeResources(users: SandboxUsers(first: 3_800_000, count: 4), grantViewRoot: viewRoot)
            let adopted = try await MicroVMSandbox.adopt(saved, resources: resources, logger: .init(label: "test"))
                .get()
            #expect(!resources.users.claim(share.owner), "the adopter holds the share's uid")
            let run = try await execute(
                adopted,
                ["sh", "-c", "cat $1/ro/file; echo again > $1/rw/after", "sh", base],
                within: .seconds(60)
            )
            #expect(text(run.stdout) == "readable\n" && run.exited?.exitCode == 0, "\(text(run.stderr))")
            #expect((try? String(contentsOfFile: "\(base)/rw/after", encoding: .utf8)) == "again\n")

            #expect(await adopted.kill() == nil)
            #expect(shareDaemons().isEmpty)
            #expect(resources.users.inUse == 0, "the share's and qemu's uids went back to the adopter's pool")
            #expect(!FileManager.default.fileExists(atPath: share.view), "its view is taken down")
            #expect(!FileManager.default.fileExists(atPath: share.directory))
            let again = await original.kill()
            #expect(again == nil, "\(again ?? "")")
            #expect(qemuChildProcesses().isEmpty)
            #expect(grantVM.resources.grantViews.count == 0)
            #expect(rmdir(viewRoot) == 0, "the view root still holds something")
        }

        @Test("what a dead node's share left is swept: its daemon killed, its socket, directory and view gone")
        func sweptAfterACrash() async throws {
            try await requireShares()
            let folder = try GrantEnforcementTests.HostFolder()
            let directory = try LeftoverSweepTests.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            let ledger = SandboxLedger(directory: directory.path)
            try ledger.open(identity: try LeftoverSweepTests.exitedProcess())
            let root = viewRoot + "-swept"
            var grants = Hangar_V1_Grants()
            grants.allowRead = ["\(folder.base)/ro"]
            let share = try await MicroVMShare.start(
                try GrantMounts(grants),
                virtiofsd: grantVM.configuration.virtiofsdPath,
                views: GrantViews(root: root, ledger: ledger),
                users: SandboxUsers(first: 3_800_100, count: 2),
                ledger: ledger,
                lifetime: .seconds(120)
            )
            let started = ContinuousClock.now + .seconds(10)
            while shareDaemons().isEmpty && ContinuousClock.now < started {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(!shareDaemons().isEmpty, "virtiofsd did not start")
            // The node is gone (its ledger's process exited): the next one sweeps.
            let report = await SandboxLedger.sweep(directory: directory.path)
            #expect(report.problems == [], "\(report.problems)")
            let end = ContinuousClock.now + .seconds(10)
            while !shareDaemons().isEmpty && ContinuousClock.now < end { try await Task.sleep(for: .milliseconds(20)) }
            #expect(shareDaemons().isEmpty, "virtiofsd survived the sweep")
            #expect(access(share.socketPath, F_OK) != 0, "the socket is left")
            #expect(access((share.socketPath as NSString).deletingLastPathComponent, F_OK) != 0)
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).isEmpty, "a view is left")
            _ = await share.stop()
            rmdir(root)
        }

        @Test("a VM with a share gets the vhost-user device, modern virtio and the kernel's hint")
        func qemuArguments() async throws {
            try await requireShares()
            guard case .success(let host) = await grantVM.host() else { return }
            let plain = host.arguments(memoryBytes: 128 << 20, vcpus: 1, user: nil)
            let shared = host.arguments(memoryBytes: 128 << 20, vcpus: 1, user: nil, share: "/run/x/fs.sock")
            #expect(!plain.joined(separator: " ").contains("vhost-user-fs"))
            #expect(!plain.joined(separator: " ").contains("hangar.share"))
            let line = shared.joined(separator: " ")
            // Every VM's RAM is a shared memory file, which vhost-user needs.
            for arguments in [plain, shared] {
                let words = arguments.joined(separator: " ")
                #expect(words.contains("-M microvm,memory-backend=ram"))
                #expect(words.contains("memory-backend-memfd,id=ram,size=128M,share=on"))
            }
            #expect(line.contains("-global virtio-mmio.force-legacy=false"))
            #expect(line.contains("socket,id=share,path=/run/x/fs.sock"))
            #expect(line.contains("vhost-user-fs-device,chardev=share,tag=hangar-grants"))
            #expect(line.contains("hangar.share=hangar-grants"))
        }
    }
}

@Suite("MicroVM grant manifest")
struct MicroVMGrantManifestTests {
    @Test("the manifest lists each mount in plan order: access, kind, path, NUL")
    func manifest() {
        let mounts = GrantMounts(mounts: [
            .init(path: "/srv/data", access: .read, isDirectory: true),
            .init(path: "/srv/data/out", access: .readWrite, isDirectory: true),
            .init(path: "/srv/data/key", access: .none, isDirectory: false),
        ])
        #expect(mounts.manifest == Data("rd/srv/data\0wd/srv/data/out\0nf/srv/data/key\0".utf8))
    }

}
