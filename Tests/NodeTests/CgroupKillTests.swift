import Foundation
import Glibc
import Testing

@testable import HangarNode

/// The one cgroup layer every runtime uses: a fork bomb in a cgroup placed where an OCI runtime
/// puts a container's is killed completely by a single ``JobCgroup/killAll()``, and the cgroup is
/// then removed from every hierarchy.
@Suite("Cgroup kill")
struct CgroupKillTests {
    @Test("a fork bomb in a container's cgroup leaves no survivor after one killAll")
    func forkBombKilledCompletely() async throws {
        guard geteuid() == 0, let version = JobCgroup.mountedVersion() else { return }
        let tag = "bomb\(UInt32.random(in: 100_000...999_999))"
        // A parent of its own: the node's sweeps of `hangar` in parallel tests must not kill the bomb.
        let cgroup = JobCgroup.placed(at: "\(Self.parent)/\(tag)", version: version)
        defer { Self.removeParent(version) }
        try cgroup.make(
            CgroupLimits(
                memoryBytes: 1 << 30,
                pids: 200,
                // A quarter core, so that the churn does not starve tests running in parallel.
                cpuQuotaMicroseconds: 25_000,
                cpuPeriodMicroseconds: CgroupLimits.defaultCPUPeriodMicroseconds
            )
        )
        // The shell joins the cgroup, then becomes a bomb whose every process keeps forking, retrying
        // at once when the pids limit refuses it: a freed slot is taken again at once.
        let join = cgroup.procsFiles.map { "echo $$ > \($0)" }.joined(separator: "; ")
        let loop = "import os, time\nwhile True:\n    try: os.fork()\n    except OSError: time.sleep(0.001)\n"
        let bomb = Process()
        bomb.executableURL = URL(fileURLWithPath: "/bin/sh")
        bomb.arguments = ["-c", "\(join); exec python3 -c \"$0\"", loop]
        bomb.standardError = FileHandle.nullDevice
        try bomb.run()

        let grown = ContinuousClock.now + .seconds(10)
        // Killed at the limit, every process still forking while the kill is under way.
        while cgroup.processes().count < 100 && ContinuousClock.now < grown {
            try await Task.sleep(for: .milliseconds(1))
        }
        #expect(cgroup.processes().count >= 100, "the bomb did not grow")

        await cgroup.killAll()
        let end = ContinuousClock.now + .seconds(2)
        while !cgroup.processes().isEmpty && ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(20))
        }
        let survivors = cgroup.processes()
        #expect(survivors.isEmpty, "\(survivors.count) processes survived the kill")

        try await cgroup.remove()
        #expect(!cgroup.exists)
        bomb.waitUntilExit()
    }

    static let parent = "hangar-cgroup-tests"

    /// Removes the parent directories once empty (another test may still use them: then they stay).
    static func removeParent(_ version: CgroupVersion) {
        for directory in JobCgroup.placed(at: parent, version: version).sweptDirectories() { rmdir(directory) }
    }

    @Test("removing a cgroup that is gone already succeeds at once")
    func removingGoneCgroup() async throws {
        guard let version = JobCgroup.mountedVersion() else { return }
        let cgroup = JobCgroup.placed(at: "\(Self.parent)/never-made-\(getpid())", version: version)
        let began = ContinuousClock.now
        try await cgroup.remove()
        #expect(ContinuousClock.now - began < .seconds(1))
        #expect(!cgroup.exists)
    }
}
