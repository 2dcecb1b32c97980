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
    ///
    /// Blocks its thread for up to ``freezeWait`` while the freezer takes effect: for threads that
    /// may block (the sandbox monitor's). Async code awaits ``killAll()-swift.method`` instead.
    func killAll() {
        guard let freezer = startKilling() else { return }
        let end = ContinuousClock.now + Self.freezeWait
        while !freezer.isFrozen && ContinuousClock.now < end { usleep(1000) }
        freezer.killAndThaw(processes())
    }

    /// ``killAll()`` for async code: the wait for the freezer is a timer, so it holds no thread of
    /// Swift's cooperative pool, and cancellation does not cut it short (the kill must land).
    func killAll() async {
        guard let freezer = startKilling() else { return }
        let end = ContinuousClock.now + Self.freezeWait
        while !freezer.isFrozen && ContinuousClock.now < end { await Self.pause(microseconds: 1000) }
        freezer.killAndThaw(processes())
    }

    /// How long a kill waits for the freezer (freezing is asynchronous) before it kills regardless.
    static let freezeWait = Duration.milliseconds(100)

    /// Kills everything at once through `cgroup.kill` where v2 has it (then nil: nothing is left to
    /// do), else starts freezing the cgroup.
    private func startKilling() -> Freezer? {
        let directory = directories.freezer
        if version == .v2, (try? CgroupFile.write("1", to: directory + "/cgroup.kill")) != nil { return nil }
        let control = directory + (version == .v1 ? "/freezer.state" : "/cgroup.freeze")
        let froze = (try? CgroupFile.write(version == .v1 ? "FROZEN" : "1", to: control)) != nil
        return Freezer(directory: directory, version: version, froze: froze)
    }

    /// The freezer of a cgroup being killed (v1 `freezer.state`, v2 `cgroup.freeze`).
    private struct Freezer {
        let control: String
        let state: String
        let frozenMark: String
        let version: CgroupVersion
        /// Whether freezing was asked for; when it could not be, the kill goes ahead unfrozen.
        let froze: Bool

        init(directory: String, version: CgroupVersion, froze: Bool) {
            self.version = version
            self.froze = froze
            control = directory + (version == .v1 ? "/freezer.state" : "/cgroup.freeze")
            state = directory + (version == .v1 ? "/freezer.state" : "/cgroup.events")
            frozenMark = version == .v1 ? "FROZEN" : "frozen 1"
        }

        /// Frozen, or there is nothing to wait for.
        var isFrozen: Bool { !froze || (CgroupFile.read(state) ?? "").contains(frozenMark) }

        func killAndThaw(_ pids: [pid_t]) {
            for pid in pids { Glibc.kill(pid, SIGKILL) }
            if froze { try? CgroupFile.write(version == .v1 ? "THAWED" : "0", to: control) }
        }
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
            if !processes().isEmpty { await killAll() }
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
