import Dispatch
import Foundation
import Glibc

extension JobCgroup {
    /// The pids in the job's cgroup, from every one of its directories (every process joins all of
    /// them; an OCI runtime may leave one out, such as gVisor on a hierarchy it does not know). Pid 0
    /// (a process outside this pid namespace) and 1 are never listed: killing them would hit the node.
    func processes() -> [pid_t] {
        var seen = Set<pid_t>()
        for directory in allDirectories {
            for pid in CgroupFile.pids(directory + "/cgroup.procs") where pid > 1 { seen.insert(pid) }
        }
        return seen.sorted()
    }

    /// SIGKILLs every process in the cgroup without letting any of them fork meanwhile: v2 writes
    /// `cgroup.kill` where the kernel has it (5.14+); otherwise the cgroup is frozen, every process
    /// in it killed, and thawed so the kills land. Safe to call any number of times, from any thread.
    func killAll() {
        let directory = directories.freezer
        if version == .v2, (try? CgroupFile.write("1", to: directory + "/cgroup.kill")) != nil { return }
        let control = directory + (version == .v1 ? "/freezer.state" : "/cgroup.freeze")
        let froze = (try? CgroupFile.write(version == .v1 ? "FROZEN" : "1", to: control)) != nil
        if froze {
            // Freezing is asynchronous; wait briefly for it, then kill regardless.
            let state = directory + (version == .v1 ? "/freezer.state" : "/cgroup.events")
            let frozen = version == .v1 ? "FROZEN" : "frozen 1"
            let end = ContinuousClock.now + .milliseconds(100)
            while !(CgroupFile.read(state) ?? "").contains(frozen) && ContinuousClock.now < end { usleep(1000) }
        }
        for pid in processes() { Glibc.kill(pid, SIGKILL) }
        if froze { try? CgroupFile.write(version == .v1 ? "THAWED" : "0", to: control) }
    }

    /// Whether any directory of the cgroup is left, in any hierarchy.
    var exists: Bool { sweptDirectories().contains { CgroupFile.exists($0) } }

    /// Kills what is left, waits for the cgroup to empty and removes its directories (for a cgroup
    /// an OCI runtime joined, in every hierarchy), retrying `rmdir` while the kernel still counts
    /// exiting processes (EBUSY), for at most `timeout`. The waits between tries are timers, off
    /// Swift's cooperative pool, and are not cut short by cancellation: the cgroup is removed
    /// either way.
    func remove(within timeout: Duration = .seconds(3)) async throws(CgroupError) {
        let end = ContinuousClock.now + timeout
        var remaining = sweptDirectories()
        var lastError: CgroupError?
        // The job's last processes are usually still exiting when it ends: retry soon, then less
        // often (a fixed 5 ms wait was a fifth of a short job's whole time through the node).
        var pause = 200
        while true {
            if !processes().isEmpty { killAll() }
            remaining = remaining.filter { directory in
                if rmdir(directory) == 0 || errno == ENOENT {
                    SandboxLedger.current.gone(.cgroup(directory: directory))
                    return false
                }
                lastError = .system("remove cgroup", directory)
                return true
            }
            if remaining.isEmpty { return }
            guard ContinuousClock.now < end else {
                throw lastError ?? CgroupError("cannot remove \(remaining.joined(separator: ", "))")
            }
            await Self.pause(microseconds: pause)
            pause = min(pause * 2, 5000)
        }
    }

    /// The directories removal covers: ``allDirectories`` and, for a cgroup placed by path, the same
    /// path in every other hierarchy (the runtimes create it in those the node does not limit).
    func sweptDirectories() -> [String] {
        guard let relativePath, version == .v1 else { return allDirectories }
        let hierarchies = (try? FileManager.default.contentsOfDirectory(atPath: Self.mountPoint)) ?? []
        let others = hierarchies.sorted().map { Self.mountPoint + "/" + $0 + "/" + relativePath }
        return allDirectories + others.filter { !allDirectories.contains($0) }
    }

    /// Waits on a timer, without holding a thread of the cooperative pool and without ending early
    /// on cancellation.
    private static func pause(microseconds: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().asyncAfter(deadline: .now() + .microseconds(microseconds)) {
                continuation.resume()
            }
        }
    }
}
