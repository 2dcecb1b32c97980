import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

// Real bubblewrap, real processes, no mocks. Values such as `sleep 30.4711` are unique per test run
// so that parallel tests (and other users of the machine) never match each other's processes.

private let runtime = ProcessRuntime()

@Suite("Process runtime, real bubblewrap")
struct ProcessRuntimeTests {
    @Test("echo output comes back, stdout and stderr separately")
    func echo() async {
        let outcome = await runtime.run(job(["sh", "-c", "echo out; echo err >&2"]), jobID: "echo")
        #expect(outcome.status == .succeeded)
        #expect(outcome.exitCode == 0)
        #expect(text(outcome.stdout) == "out\n")
        #expect(text(outcome.stderr) == "err\n")
        #expect(outcome.stdoutBytes == 4)
        #expect(outcome.stderrBytes == 4)
        #expect(!outcome.stdoutTruncated && !outcome.stderrTruncated)
    }

    @Test("stdin reaches the program, also when larger than a pipe buffer")
    func stdin() async {
        let small = await runtime.run(job(["cat"]) { $0.stdin = Data("hello stdin".utf8) }, jobID: "stdin")
        #expect(small.status == .succeeded)
        #expect(text(small.stdout) == "hello stdin")

        let big = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        let large = await runtime.run(job(["cat"]) { $0.stdin = big }, jobID: "stdin-big")
        #expect(large.status == .succeeded)
        #expect(large.stdout == big)
    }

    @Test("a non-zero exit is FAILED with its code")
    func nonZeroExit() async {
        let outcome = await runtime.run(job(["sh", "-c", "echo bye >&2; exit 7"]), jobID: "exit")
        #expect(outcome.status == .failed)
        #expect(outcome.exitCode == 7)
        #expect(text(outcome.stderr) == "bye\n")
    }

    @Test("a missing program is FAILED, exit 127, with Hangar's message rather than bubblewrap's")
    func missingProgram() async {
        let outcome = await runtime.run(job(["/usr/bin/hangar-no-such-program"]), jobID: "missing")
        #expect(outcome.status == .failed)
        #expect(outcome.exitCode == 127)
        #expect(outcome.message == "hangar: command not found in the sandbox: /usr/bin/hangar-no-such-program")
    }

    @Test("timeout kills the whole sandbox, setsid daemons included")
    func timeoutKillsEverything() async throws {
        let tag = uniqueTag()
        let sleeps = ["30.\(tag)", "31.\(tag)", "32.\(tag)"]
        let script = "sleep \(sleeps[0]) & setsid sleep \(sleeps[1]) & sleep \(sleeps[2])"
        let began = ContinuousClock.now
        let running = Task {
            await runtime.run(job(["sh", "-c", script]) { $0.limits.timeoutMs = 3000 }, jobID: "timeout-\(tag)")
        }
        // All three must really have started, or the check below proves nothing. (Bounded by 10 s:
        // with the other sandbox suites on two cores, bubblewrap alone may take seconds to start.)
        var seen = Set<String>()
        var firstSeen: ContinuousClock.Instant?
        while seen.count < sleeps.count && ContinuousClock.now - began < .seconds(10) {
            for value in sleeps where !processes(withArgument: value).isEmpty {
                seen.insert(value)
                if firstSeen == nil { firstSeen = .now }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let outcome = await running.value
        #expect(seen == Set(sleeps))
        #expect(outcome.status == .timedOut)
        #expect(outcome.message.contains("wall-clock limit of 3000 ms"))
        // Killed about 3 s after its processes ran, not at the end of their 30 s sleeps. (3 s: on a
        // loaded machine the shell once started only one sleep within 1 s, and the end took 8 s.)
        if let firstSeen { #expect(ContinuousClock.now - firstSeen < .seconds(15)) }
        #expect(await survivors(of: sleeps) == [])
        #expect(leftoverCgroups(ofJob: "timeout-\(tag)") == [])
    }

    @Test("a daemon left behind by a finished job dies with its sandbox")
    func daemonOfFinishedJob() async {
        let tag = "37.\(uniqueTag())"
        let began = ContinuousClock.now
        let outcome = await runtime.run(
            // The job itself says the daemon still runs as it leaves, or "no survivors" proves nothing.
            job(["sh", "-c", "setsid sleep \(tag) & sleep 0.2; kill -0 $! && echo daemon alive; echo done"]),
            jobID: "daemon-\(tag)"
        )
        #expect(outcome.status == .succeeded)
        #expect(text(outcome.stdout) == "daemon alive\ndone\n")
        // Not waiting for the daemon (it sleeps 37 s, holding a copy of stdout); the margin is wide
        // because a loaded CI machine once took 2.5 s for this job.
        #expect(ContinuousClock.now - began < .seconds(15))
        #expect(await survivors(of: [tag]) == [])
        #expect(leftoverCgroups(ofJob: "daemon-\(tag)") == [])
    }

    @Test("output over the cap is OUTPUT_LIMIT with exactly the cap kept")
    func outputLimit() async {
        let tag = uniqueTag()
        let out = await runtime.run(job(["yes"]) { $0.limits.outputBytes = 1000 }, jobID: "yes-\(tag)")
        #expect(out.status == .outputLimit)
        #expect(out.stdoutTruncated)
        #expect(out.stdout.count == 1000)
        #expect(out.stdout == Data(String(repeating: "y\n", count: 500).utf8))
        #expect(out.stdoutBytes > 1000)
        #expect(!out.stderrTruncated)
        #expect(leftoverCgroups(ofJob: "yes-\(tag)") == [])

        let err = await runtime.run(job(["sh", "-c", "yes >&2"]) { $0.limits.outputBytes = 777 }, jobID: "yes-err")
        #expect(err.status == .outputLimit)
        #expect(err.stderrTruncated && !err.stdoutTruncated)
        #expect(err.stderr.count == 777)
        #expect(err.stdout.isEmpty)
    }

    @Test("output up to the cap exactly is not truncated")
    func outputAtCap() async {
        let outcome = await runtime.run(
            job(["head", "-c", "1000", "/dev/zero"]) { $0.limits.outputBytes = 1000 },
            jobID: "cap"
        )
        #expect(outcome.status == .succeeded)
        #expect(outcome.stdout.count == 1000)
        #expect(!outcome.stdoutTruncated)
    }

    @Test("the sandbox has no network interface but lo")
    func noNetwork() async {
        let outcome = await runtime.run(job(["cat", "/proc/net/dev"]), jobID: "net")
        #expect(outcome.status == .succeeded)
        let interfaces = text(outcome.stdout).split(separator: "\n").dropFirst(2).compactMap {
            $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces)
        }
        #expect(interfaces == ["lo"])
    }

    @Test("host directories are invisible and system directories read-only")
    func hostFilesystem() async {
        let tag = uniqueTag()
        #expect(FileManager.default.fileExists(atPath: "/work"))
        #expect(FileManager.default.fileExists(atPath: "/root"))
        let script = """
            for p in /root /work /home /var /old_root; do [ -e "$p" ] && echo "visible $p"; done
            touch /usr/hangar-probe 2>/dev/null && echo "wrote /usr"
            touch /etc/hangar-probe 2>/dev/null && echo "wrote /etc"
            touch /tmp/hangar-scratch-\(tag) && echo "tmp ok"
            echo "$(id -u):$(id -g) $(hostname)"
            """
        let outcome = await runtime.run(job(["sh", "-c", script]), jobID: "fs")
        #expect(outcome.status == .succeeded)
        #expect(text(outcome.stdout) == "tmp ok\n65534:65534 sandbox\n")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/hangar-scratch-\(tag)"))
    }

    @Test("/tmp is a tmpfs bounded by fileSizeBytes")
    func boundedScratch() async {
        let script = "dd if=/dev/zero of=/tmp/big bs=1M count=8 2>/dev/null; wc -c < /tmp/big"
        let outcome = await runtime.run(
            job(["sh", "-c", script]) { $0.limits.fileSizeBytes = 2 << 20 },
            jobID: "tmpfs"
        )
        let written = Int(text(outcome.stdout).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        #expect(written > 0 && written <= 2 << 20)
    }

    @Test("python runs")
    func python() async {
        let outcome = await runtime.run(job(["/usr/bin/python3", "-c", "print(6*7)"]), jobID: "python")
        #expect(outcome.status == .succeeded)
        #expect(text(outcome.stdout) == "42\n")
    }

    @Test("the environment is the job's plus default PATH and HOME, nothing from the node")
    func environment() async {
        let outcome = await runtime.run(job(["env"]) { $0.env = ["FOO": "bar baz"] }, jobID: "env")
        #expect(outcome.status == .succeeded)
        let lines = Set(text(outcome.stdout).split(separator: "\n").map(String.init))
        #expect(lines == ["FOO=bar baz", "HOME=/tmp", "PATH=/usr/local/bin:/usr/bin:/bin", "PWD=/tmp"])
    }

    @Test("files land in the working directory with their modes")
    func files() async {
        func file(_ path: String, _ content: String, _ mode: UInt32) -> Hangar_V1_FileIn {
            var file = Hangar_V1_FileIn()
            file.path = path
            file.content = Data(content.utf8)
            file.mode = mode
            return file
        }
        // bwrap reads the files (and the seccomp filter) from descriptors 3, 4…; none of them may
        // reach the job. The listing is the last command, without pipe or redirection, so the shell
        // holds no descriptors of its own while `ls` looks.
        let script = "cat hello.txt; ./bin/run.sh; stat -c %a hello.txt bin/run.sh; pwd; ls /proc/$$/fd"
        let spec = job(["sh", "-c", script]) {
            $0.cwd = "/tmp/work"
            $0.files = [file("hello.txt", "hi\n", 0), file("bin/run.sh", "#!/bin/sh\necho ran\n", 0o4755)]
        }
        let outcome = await runtime.run(spec, jobID: "files")
        #expect(outcome.status == .succeeded)
        #expect(text(outcome.stdout) == "hi\nran\n644\n755\n/tmp/work\n0\n1\n2\n")

        for bad in ["../escape", "/etc/passwd", "a//b", "./a", "", "a/../../b"] {
            let rejected = await runtime.run(job(["true"]) { $0.files = [file(bad, "x", 0)] }, jobID: "bad")
            #expect(rejected.status == .error, "path \"\(bad)\" was accepted")
        }
        let outside = await runtime.run(
            job(["true"]) {
                $0.cwd = "/usr"
                $0.files = [file("a", "x", 0)]
            },
            jobID: "cwd"
        )
        #expect(outside.status == .error)
    }

    @Test("cancelling the task kills the sandbox")
    func cancellation() async {
        let tag = "33.\(uniqueTag())"
        let running = Task { await runtime.run(job(["sleep", tag]), jobID: "cancel-\(tag)") }
        // The job's `sleep` must really run before the cancel, or the checks below prove nothing.
        let started = await eventually(within: .seconds(10)) { !processes(withArgument: tag).isEmpty }
        #expect(started, "the job's `sleep \(tag)` was not running within 10 s")
        let began = ContinuousClock.now
        running.cancel()
        let outcome = await running.value
        #expect(outcome.status == .cancelled)
        #expect(ContinuousClock.now - began < .seconds(3))
        #expect(await survivors(of: [tag]) == [])
        #expect(leftoverCgroups(ofJob: "cancel-\(tag)") == [])
    }

    @Test("unsupported requests are errors, not silent downgrades")
    func invalidSpecs() async {
        #expect(await runtime.run(job([]), jobID: "empty").status == .error)
        let allowlist = await runtime.run(job(["true"]) { $0.network.mode = .networkAllowlist }, jobID: "net")
        #expect(allowlist.status == .error)
        #expect(await runtime.run(job(["true"]) { $0.env = ["A=B": "c"] }, jobID: "env").status == .error)
    }

    @Test("probe finds bubblewrap, and reports a missing one")
    func probe() async {
        let probe = await runtime.probe()
        #expect(probe.available)
        #expect(probe.detail.hasPrefix("bubblewrap "))
        #expect(probe.detail.hasSuffix(", cgroup v1, seccomp") || probe.detail.hasSuffix(", cgroup v2, seccomp"))
        let missing = await ProcessRuntime(bubblewrapPath: "/nonexistent/bwrap").probe()
        #expect(!missing.available)
        #expect(missing.detail.contains("/nonexistent/bwrap"))
    }
}

@Suite("Null runtime")
struct NullRuntimeTests {
    @Test("returns SUCCEEDED at once with no output")
    func returnsAtOnce() async {
        let began = ContinuousClock.now
        let outcome = await NullRuntime().run(job(["sleep", "100"]), jobID: "null")
        #expect(ContinuousClock.now - began < .milliseconds(250))
        #expect(outcome.status == .succeeded)
        #expect(outcome.exitCode == 0)
        #expect(outcome.stdout.isEmpty && outcome.stderr.isEmpty)
        #expect(NullRuntime().name == "null")
        #expect(await NullRuntime().probe().available)
    }
}

@Suite("SandboxProcess without bubblewrap")
struct SandboxProcessTests {
    private func command(_ script: String, timeout: Duration = .seconds(10)) -> SandboxCommand {
        SandboxCommand(executable: "/bin/sh", arguments: ["sh", "-c", script], timeout: timeout, outputLimit: 1 << 20)
    }

    @Test("only fds 0, 1 and 2 reach the child, and it is reaped")
    func descriptorsAndReaping() async throws {
        let leaked = open("/dev/null", O_RDONLY)  // deliberately without O_CLOEXEC
        defer { close(leaked) }
        #expect(leaked > 2)
        let result = try await SandboxProcess.run(command("ls /proc/$$/fd"))
        #expect(result.termination == .exited(0))
        #expect(text(result.stdout).split(separator: "\n") == ["0", "1", "2"])
        var status: Int32 = 0
        #expect(waitpid(result.pid, &status, WNOHANG) == -1 && errno == ECHILD)
    }

    @Test("the child leads a new session with default signal handling")
    func sessionAndSignals() async throws {
        let session = try await SandboxProcess.run(
            SandboxCommand(
                executable: "/usr/bin/cut",
                arguments: ["cut", "-d", " ", "-f", "5,6", "/proc/self/stat"],
                timeout: .seconds(10),
                outputLimit: 4096
            )
        )
        #expect(text(session.stdout) == "\(session.pid) \(session.pid)\n")  // process group and session

        // The node ignoring SIGPIPE must not leak into the child, nor the monitor thread's blocked
        // SIGPIPE. (grep, unlike sh, does not reset its signal mask itself.)
        let previous = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, previous) }
        let status = try await SandboxProcess.run(
            SandboxCommand(
                executable: "/usr/bin/grep",
                arguments: ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
                timeout: .seconds(10),
                outputLimit: 4096
            )
        )
        let masks = text(status.stdout).split(separator: "\n").compactMap {
            $0.split(whereSeparator: \.isWhitespace).last.flatMap { UInt64($0, radix: 16) }
        }
        // Only the 31 classic signals: glibc never resets its reserved real-time signals 32 and 33.
        #expect(masks.map { $0 & 0x7fff_ffff } == [0, 0])
    }

    @Test("a timeout kills the process group and reports CPU time")
    func timeoutKillsGroup() async throws {
        let tag = uniqueTag()
        let sleeps = ["34.\(tag)", "35.\(tag)"]
        // The sleeps start first (the loop burns CPU until the timeout), so that both are in the group.
        let script =
            "sleep \(sleeps[0]) & sleep \(sleeps[1]) & i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done; wait"
        // 3 s: on a loaded machine the shell once started one of the two within 1 s.
        let command = command(script, timeout: .seconds(3))
        let running = Task { try await SandboxProcess.run(command) }
        // Both must really have started, or "no survivors" below proves nothing.
        var seen = Set<String>()
        let began = ContinuousClock.now
        while seen.count < sleeps.count && ContinuousClock.now - began < .seconds(10) {
            for value in sleeps where !processes(withArgument: value).isEmpty { seen.insert(value) }
            try await Task.sleep(for: .milliseconds(10))
        }
        let result = try await running.value
        #expect(seen == Set(sleeps))
        #expect(result.killReason == .timedOut)
        #expect(result.termination == .signaled(SIGKILL))
        #expect(result.cpuTimeMicroseconds > 0)
        #expect(await survivors(of: sleeps) == [])
    }

    @Test("a background child holding the pipes does not keep the caller waiting")
    func abandonedPipes() async throws {
        let tag = "36.\(uniqueTag())"
        let began = ContinuousClock.now
        let result = try await SandboxProcess.run(
            command("(sleep \(tag); echo late) & echo early", timeout: .seconds(20))
        )
        #expect(ContinuousClock.now - began < .seconds(6))
        #expect(result.termination == .exited(0))
        #expect(result.killReason == nil)
        #expect(text(result.stdout) == "early\n")
        #expect(await survivors(of: [tag]) == [])
    }

    /// A containment that kills one process, named by the pid a file holds: the relay's child.
    private struct KillsChild: SandboxContainment {
        let pidFile: String
        var checkInterval: Duration? { nil }
        func check() -> SandboxLimit? { nil }
        func killAll() {
            guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
                let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
            else { return }
            kill(pid, SIGKILL)
        }
    }

    @Test("a program that relays its sandbox's output (runc) may pass on what was written before a kill")
    func relayKeepsOutputWrittenBeforeTheKill() async throws {
        // The relay, like runc in the foreground, copies its child's stderr late: only after the
        // child died. The child writes "quiet" to stderr, then floods stdout past the limit.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("relay-\(uniqueTag())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let script = """
            (printf quiet >&2; while :; do printf '%01024d' 0; done) 2>\(folder)/err & echo $! >\(folder)/pid
            wait; cat \(folder)/err >&2
            """
        var relayed = command(script)
        relayed.outputLimit = 4096
        relayed.containment = KillsChild(pidFile: folder + "/pid")
        relayed.relaysOutput = true
        let result = try await SandboxProcess.run(relayed)
        #expect(result.killReason == .outputLimit)
        #expect(result.stdout.count == 4096 && result.stdoutTruncated)
        #expect(text(result.stderr) == "quiet", "the relay was killed before it passed stderr on")
        #expect(result.termination == .exited(0), "the relay exited by itself once its child was killed")
    }

    @Test("a missing executable is a spawn error")
    func spawnError() async throws {
        let missing = SandboxCommand(
            executable: "/nonexistent/program",
            arguments: ["x"],
            timeout: .seconds(1),
            outputLimit: 10
        )
        await #expect(throws: SandboxSpawnError.self) { try await SandboxProcess.run(missing) }
        // Nobody waits for a pid that will never come.
        let process = try SandboxProcess(missing)
        #expect(await process.spawned() == nil)
    }

    @Test("spawned() waits for the monitor thread to announce the pid: the process's own")
    func spawnedPID() async throws {
        // Asked straight after init, before the monitor thread may have spawned anything.
        let process = try SandboxProcess(command("echo $$; exec sleep 100"))
        let pid = try #require(await process.spawned())
        #expect(process.pid == pid)
        process.kill()
        let result = try await process.wait()
        #expect(result.pid == pid && text(result.stdout) == "\(pid)\n")
    }
}
