import Foundation
import Synchronization
import Testing

@testable import HangarNode

/// ``JobCgroup/killAll()-swift.method`` waits for the freezer without holding a thread of Swift's
/// cooperative pool. The cgroup here is a directory of plain files shaped like a v2 cgroup without
/// `cgroup.kill`, whose freezer never reports frozen: every kill waits its whole
/// ``JobCgroup/freezeWait``.
@Suite("Cgroup kill waits off the cooperative pool")
struct CgroupKillWaitTests {
    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    private static func stuckFreezer() throws -> (cgroup: JobCgroup, directory: String) {
        let directory = NSTemporaryDirectory() + "hangar-stuck-freezer-\(uniqueTag())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, content) in [
            ("cgroup.freeze", "0\n"), ("cgroup.events", "populated 1\nfrozen 0\n"), ("cgroup.procs", ""),
        ] {
            try content.write(toFile: directory + "/" + name, atomically: false, encoding: .utf8)
        }
        return (JobCgroup(version: .v2, directories: ControllerDirectories { _ in directory }), directory)
    }

    @Test("an async kill waits for the freezer, then thaws the cgroup")
    func waitsThenThaws() async throws {
        let (cgroup, directory) = try Self.stuckFreezer()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let began = ContinuousClock.now
        await cgroup.killAll()
        #expect(ContinuousClock.now - began >= JobCgroup.freezeWait)
        #expect(CgroupFile.read(directory + "/cgroup.freeze")?.hasPrefix("0") == true)
    }

    @Test("kills waiting for a slow freezer leave the cooperative pool free for other tasks")
    func poolStaysFree() async throws {
        let (cgroup, directory) = try Self.stuckFreezer()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Several times as many kills as the pool has threads: were each to block its thread for
        // the freezer, a task queued after them would only run once most of them were done.
        let kills = 4 * ProcessInfo.processInfo.activeProcessorCount
        let finished = Counter()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<kills {
                group.addTask {
                    await cgroup.killAll()
                    finished.value.add(1, ordering: .sequentiallyConsistent)
                }
            }
            let seen = await Task { finished.value.load(ordering: .sequentiallyConsistent) }.value
            #expect(seen < kills / 2, "a task waited for \(seen) of \(kills) kills to finish first")
        }
        #expect(finished.value.load(ordering: .sequentiallyConsistent) == kills)
    }
}
