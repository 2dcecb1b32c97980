import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// A node killed with `kill -9` leaves what its sandboxes used on the host; the next node to start
/// takes it down from the dead process's ledger. Here the job runs in a runtime whose resources
/// hold a ledger named for a process that has exited, so sweeping it is exactly what a restarted
/// node does after a crash — with the sandbox still running, as it would be (runc containers
/// outlive `runc run`).
@Suite("SandboxLedger: a restarted node takes down what a crashed one left", .serialized)
struct LeftoverSweepTests {
    enum Kind: String, CaseIterable, CustomStringConvertible, Sendable {
        case process, container
        var description: String { rawValue }
        /// Sandbox users of its own, so that no other suite's sandbox runs as one of them.
        var users: SandboxUsers {
            switch self {
            case .process: SandboxUsers(first: 3_200_000, count: 16)
            case .container: SandboxUsers(first: 3_200_100, count: 16)
            }
        }
        func runtime(_ resources: NodeResources) -> any Runtime {
            switch self {
            case .process: ProcessRuntime(resources: resources)
            case .container: ContainerRuntime(directories: OCIKind.runc.directories, resources: resources)
            }
        }
    }

    @Test("a running job's sandbox, cgroups, scratch and network namespace are taken down", arguments: Kind.allCases)
    func sweepsALiveSandbox(kind: Kind) async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let dead = try Self.exitedProcess()
        let ledger = SandboxLedger(directory: directory.path)
        try ledger.open(identity: dead)
        let file = directory.path + "/\(dead.pid).\(dead.start).ledger"
        let resources = NodeResources(users: kind.users, ledger: ledger)

        let marker = "100.\(UInt32.random(in: 100_000...999_999))"
        var spec = Hangar_V1_JobSpec()
        spec.argv = ["/bin/sleep", marker]
        spec.limits.timeoutMs = 60_000
        spec.filesOut = ["*.txt"]  // a host scratch tmpfs
        spec.network.mode = .networkAllowlist  // a network namespace and veth pair
        spec.network.allow = ["10.99.0.0/24"]
        let runtime = kind.runtime(resources)
        let job = Task { await runtime.run(spec, jobID: "leftover-\(marker)") }
        // Wait (bounded) until the program runs.
        let end = ContinuousClock.now + .seconds(30)
        while OCITest.processes(withArgument: marker).isEmpty && ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(50))
        }
        guard !OCITest.processes(withArgument: marker).isEmpty else {
            // Say how the job ended instead (it should run for 100 s).
            job.cancel()
            let outcome = await job.value
            Issue.record("the job is not running: \(outcome.status) \(outcome.message)")
            return
        }
        let listed = SandboxLedger.outstandingResources(in: file)
        let scratch = listed.compactMap { if case .scratch(let path) = $0 { path } else { nil } }
        let networks = listed.compactMap { if case .network(let name, _) = $0 { name } else { nil } }
        let cgroups = listed.compactMap { if case .cgroup(let path) = $0 { path } else { nil } }
        let containers = listed.filter { if case .container = $0 { true } else { false } }
        // A container's bundle root is a tmpfs of its own, listed as a scratch mount too.
        let bundleRoots = scratch.filter { $0.hasSuffix("/rootfs") }
        #expect(bundleRoots.count == (kind == .container ? 1 : 0), "\(listed)")
        #expect(scratch.count - bundleRoots.count == 1 && networks.count == 1 && !cgroups.isEmpty, "\(listed)")
        #expect(containers.count == (kind == .container ? 1 : 0), "\(listed)")

        let report = await SandboxLedger.sweep(directory: directory.path)
        #expect(report.processes == [dead.pid])
        #expect(report.problems == [])
        #expect(
            await OCITest.survivors(of: [marker], within: .seconds(10)) == [],
            "the job's program outlived the sweep"
        )
        let outcome = await job.value
        #expect(outcome.status != .succeeded)
        #expect(!FileManager.default.fileExists(atPath: file), "the swept ledger is still there")
        for path in cgroups { #expect(access(path, F_OK) != 0, "cgroup \(path) is left") }
        for path in scratch {
            #expect(access(path, F_OK) != 0, "scratch \(path) is left")
            let mounts = readProcFile("/proc/self/mountinfo")
            #expect(!mounts.contains(path), "scratch \(path) is still mounted")
        }
        for name in networks { #expect(access("/run/netns/" + name, F_OK) != 0, "network namespace \(name) is left") }
        if kind == .container {
            #expect(OCITest.residue(of: "leftover-\(marker)", kind: .runc) == [])
        }
        // The user namespaces the container runtime keeps in stock end with the test.
        await resources.namespaces.drain()
    }

    @Test("a detached runc container of a dead node is killed and deleted, its bundle removed")
    func sweepsADetachedContainer() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let state = directory.path + "/state"
        let bundle = directory.path + "/bundle"
        try FileManager.default.createDirectory(atPath: bundle + "/rootfs/bin", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: bundle + "/rootfs/bin/busybox")
        #expect(try Self.runc(["spec", "--bundle", bundle]) == 0)
        let marker = "100.\(UInt32.random(in: 100_000...999_999))"
        let configPath = bundle + "/config.json"
        var config = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as? [String: Any]
        )
        var process = try #require(config["process"] as? [String: Any])
        process["terminal"] = false
        process["args"] = ["/bin/busybox", "sleep", marker]
        config["process"] = process
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
        let id = "hangar-ledger-\(UInt32.random(in: 0...UInt32.max))"
        #expect(try Self.runc(["--root", state, "run", "--detach", "--bundle", bundle, id]) == 0)
        // runc returns once the container is started; its init execs the program just after.
        let end = ContinuousClock.now + .seconds(10)
        while OCITest.processes(withArgument: marker).isEmpty && ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(!OCITest.processes(withArgument: marker).isEmpty, "the container did not start")

        let dead = try Self.exitedProcess()
        let ledger = SandboxLedger(directory: directory.path + "/ledger")
        try ledger.open(identity: dead)
        ledger.made(.container(tool: "/usr/sbin/runc", globalArguments: ["--root", state], id: id, bundle: bundle))
        let report = await SandboxLedger.sweep(directory: directory.path + "/ledger")
        #expect(report.problems == [])
        #expect(report.removed.count == 1)
        #expect(await OCITest.survivors(of: [marker], within: .seconds(10)) == [], "the container outlived the sweep")
        #expect(!FileManager.default.fileExists(atPath: state + "/" + id), "runc still knows the container")
        #expect(!FileManager.default.fileExists(atPath: bundle), "the bundle is left")
    }

    static func runc(_ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/runc")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    @Test("a process a dead node spawned is killed with its whole process group")
    func sweepsSpawnedProcesses() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let ledger = SandboxLedger(directory: directory.path)
        try ledger.open(identity: try Self.exitedProcess())
        let marker = "100.\(UInt32.random(in: 100_000...999_999))"
        let process = try SandboxProcess(
            SandboxCommand(
                executable: "/bin/sh",
                arguments: ["sh", "-c", "sleep \(marker) & sleep \(marker); wait"],
                timeout: .seconds(60),
                outputLimit: 1024,
                ledger: ledger
            )
        )
        let end = ContinuousClock.now + .seconds(10)
        while OCITest.processes(withArgument: marker).count < 2 && ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(OCITest.processes(withArgument: marker).count == 2)
        let report = await SandboxLedger.sweep(directory: directory.path)
        #expect(report.removed.count == 1 && report.problems == [])
        #expect(await OCITest.survivors(of: [marker], within: .seconds(10)) == [], "a process of the group survived")
        let result = try await process.wait()
        #expect(result.termination == .signaled(SIGKILL), "\(result.termination)")
    }

    @Test("a long-running node's ledger stays short: it is rewritten with what is outstanding")
    func compacts() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let ledger = SandboxLedger(directory: directory.path)
        let identity = try Self.exitedProcess()
        try ledger.open(identity: identity)
        let kept = SandboxLedger.Resource.scratch(path: "/run/hangar-scratch/kept")
        ledger.made(kept)
        for job in 0..<20_000 {
            let resource = SandboxLedger.Resource.cgroup(directory: "/sys/fs/cgroup/pids/hangar/job-\(job)")
            ledger.made(resource)
            ledger.gone(resource)
        }
        let file = directory.path + "/\(identity.pid).\(identity.start).ledger"
        let size = (try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? .max
        #expect(size <= SandboxLedger.compactionThreshold, "the ledger grew to \(size) bytes")
        #expect(ledger.writtenBytes == size)
        #expect(SandboxLedger.outstandingResources(in: file) == [kept])
    }

    @Test(
        "what a node re-adopted is dropped from the dead ledger, what may yet be re-adopted stays listed, the rest is taken down"
    )
    func sparesAndForgets() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let dead = try Self.exitedProcess()
        let ledger = SandboxLedger(directory: directory.path)
        try ledger.open(identity: dead)
        // Three agents' sockets, each in a directory of its own, as a process sandbox's.
        var sockets: [String] = []
        for name in ["readopted", "running", "dead"] {
            let folder = directory.path + "/" + name
            try #require(mkdir(folder, 0o700) == 0)
            let path = folder + "/agent.sock"
            close(try UnixSocket.listen(at: path).get())
            sockets.append(path)
            ledger.made(.socket(path: path))
        }
        ledger.close()
        let file = directory.path + "/\(dead.pid).\(dead.start).ledger"
        let report = await SandboxLedger.sweep(
            directory: directory.path,
            sparing: [.socket(path: sockets[1])],
            forgetting: [.socket(path: sockets[0])]
        )
        #expect(report.problems == [] && report.removed == [.socket(path: sockets[2])], "\(report)")
        #expect(
            FileManager.default.fileExists(atPath: sockets[0]) && FileManager.default.fileExists(atPath: sockets[1])
        )
        #expect(!FileManager.default.fileExists(atPath: sockets[2]))
        #expect(SandboxLedger.outstandingResources(in: file) == [.socket(path: sockets[1])])
        // Once it is not spared any more (it ended, or was re-adopted elsewhere), the next sweep
        // takes it down and deletes the file.
        _ = await SandboxLedger.sweep(directory: directory.path)
        #expect(!FileManager.default.fileExists(atPath: sockets[1]) && !FileManager.default.fileExists(atPath: file))
    }

    @Test(
        "any sweep spares a registered sandbox that still runs (whichever node sweeps), and takes it down once it has ended"
    )
    func sparesRegisteredSandboxes() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let dead = try Self.exitedProcess()
        let ledger = SandboxLedger(directory: directory.path)
        try ledger.open(identity: dead)
        let folder = directory.path + "/agent"
        try #require(mkdir(folder, 0o700) == 0)
        let socket = folder + "/agent.sock"
        close(try UnixSocket.listen(at: socket).get())
        ledger.made(.socket(path: socket))
        ledger.close()
        // Its registry entry: its node process is gone (`dead`), its leader runs (this process
        // stands in for bubblewrap).
        let me = (pid: getpid(), start: try #require(SandboxLedger.startTime(of: getpid())))
        let registry = SandboxRegistry(ledger: ledger)
        var entry = SandboxRegistry.Entry(
            sandboxID: "registered",
            nodeID: "elsewhere",
            tenant: "t",
            environment: [:],
            ownerPID: dead.pid,
            ownerStart: dead.start,
            deadlineUnixMs: nil,
            sandbox: ProcessSandbox.Saved(
                name: "registered",
                socket: socket,
                leaderPID: me.pid,
                leaderStart: me.start,
                cgroupVersion: .v1,
                cgroup: ControllerDirectories { _ in directory.path + "/no-cgroup" },
                scratch: directory.path + "/no-scratch",
                overlay: nil,
                hostUser: nil,
                network: nil
            ),
            container: nil
        )
        #expect(registry.save(entry) == nil)
        // A sweep that is told nothing (as a node without a sandbox host sweeps) spares it.
        let file = directory.path + "/\(dead.pid).\(dead.start).ledger"
        let spared = await SandboxLedger.sweep(directory: directory.path)
        #expect(spared.removed == [] && FileManager.default.fileExists(atPath: socket), "\(spared)")
        #expect(SandboxLedger.outstandingResources(in: file) == [.socket(path: socket)])
        // Its leader ended: the next sweep takes it down, and its registry entry goes.
        entry.sandbox?.leaderStart += 1
        #expect(registry.save(entry) == nil)
        let swept = await SandboxLedger.sweep(directory: directory.path)
        #expect(swept.removed == [.socket(path: socket)], "\(swept)")
        #expect(!FileManager.default.fileExists(atPath: socket) && !FileManager.default.fileExists(atPath: file))
        #expect(!FileManager.default.fileExists(atPath: registry.directory + "/registered.json"))
    }

    @Test("a live node's ledger is left alone")
    func leavesLiveProcessesAlone() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let ledger = SandboxLedger(directory: directory.path)
        try ledger.open()  // this very process: alive
        let cgroup = "/sys/fs/cgroup/pids/hangar-ledger-test-\(UInt32.random(in: 0...UInt32.max))"
        try #require(mkdir(cgroup, 0o755) == 0)
        defer { rmdir(cgroup) }
        ledger.made(.cgroup(directory: cgroup))
        let report = await SandboxLedger.sweep(directory: directory.path)
        #expect(report.processes == [])
        #expect(access(cgroup, F_OK) == 0, "a live node's cgroup was removed")
    }

    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-ledger-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// The pid and start time of a process that has exited.
    static func exitedProcess() throws -> (pid: Int32, start: UInt64) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sleep")
        process.arguments = ["0.2"]
        try process.run()
        let pid = process.processIdentifier
        let start = SandboxLedger.startTime(of: pid)
        process.waitUntilExit()
        return (pid, try #require(start))
    }
}
