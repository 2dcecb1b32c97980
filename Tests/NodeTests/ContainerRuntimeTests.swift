import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

// Real runc and real runsc (gVisor, ptrace platform), no mocks. Every run also checks that it left
// no bundle, runtime state or cgroup behind. Values such as `sleep 30.4711` are unique per run so
// that parallel tests never match each other's processes.

private typealias T = OCITest

// Serialized: gVisor on ptrace is CPU-hungry, and dozens of sandboxes booting at once on a 2-core
// machine would stretch start-up past the time bounds the tests check.
@Suite("OCI runtimes, real runc and runsc", .serialized)
struct ContainerRuntimeTests {
    @Test("echo output comes back, stdout and stderr apart", arguments: OCIKind.allCases)
    func echo(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["sh", "-c", "echo out; echo err >&2"]), name: "echo")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(outcome.exitCode == 0)
        #expect(T.text(outcome.stdout) == "out\n")
        #expect(T.text(outcome.stderr) == "err\n")
        #expect(outcome.stdoutBytes == 4 && outcome.stderrBytes == 4)
        #expect(residue == [])
    }

    @Test("stdin reaches the program, also when larger than a pipe buffer", arguments: OCIKind.allCases)
    func stdin(kind: OCIKind) async {
        let small = await T.run(kind, T.job(["cat"]) { $0.stdin = Data("hello stdin".utf8) }, name: "stdin")
        #expect(small.outcome.status == .succeeded)
        #expect(T.text(small.outcome.stdout) == "hello stdin")
        let big = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        let large = await T.run(kind, T.job(["cat"]) { $0.stdin = big }, name: "stdin-big")
        #expect(large.outcome.status == .succeeded)
        #expect(large.outcome.stdout == big)
        #expect(small.residue + large.residue == [])
    }

    @Test("a non-zero exit is FAILED with its code", arguments: OCIKind.allCases)
    func nonZeroExit(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["sh", "-c", "echo bye >&2; exit 7"]), name: "exit")
        #expect(outcome.status == .failed)
        #expect(outcome.exitCode == 7)
        #expect(T.text(outcome.stderr) == "bye\n")
        #expect(residue == [])
    }

    @Test("a missing program is FAILED, exit 127, with Hangar's message", arguments: OCIKind.allCases)
    func missingProgram(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["/usr/bin/hangar-no-such-program"]), name: "missing")
        #expect(outcome.status == .failed)
        #expect(outcome.exitCode == 127)
        #expect(outcome.message == "hangar: command not found in the sandbox: /usr/bin/hangar-no-such-program")
        #expect(residue == [])
    }

    @Test("python3 runs", arguments: OCIKind.allCases)
    func python(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["/usr/bin/python3", "-c", "print(6*7)"]), name: "python")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(T.text(outcome.stdout) == "42\n")
        #expect(outcome.cpuTimeMicroseconds > 0)
        #expect(outcome.peakMemoryBytes > 1 << 20)
        #expect(residue == [])
    }

    @Test("threads start (glibc falls back from clone3 to clone)", arguments: OCIKind.allCases)
    func threads(kind: OCIKind) async {
        let script = """
            import threading
            done = []
            threads = [threading.Thread(target=lambda: done.append(1)) for _ in range(20)]
            for t in threads: t.start()
            for t in threads: t.join()
            print('threads', len(done))
            """
        let (outcome, residue) = await T.run(kind, T.job(["/usr/bin/python3", "-c", script]), name: "threads")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(T.text(outcome.stdout) == "threads 20\n")
        #expect(residue == [])
    }

    @Test("runs as uid/gid 65534 with no capabilities and no_new_privs", arguments: OCIKind.allCases)
    func identity(kind: OCIKind) async {
        let script = "id -u; id -g; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status"
        let (outcome, residue) = await T.run(kind, T.job(["sh", "-c", script]), name: "identity")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        let lines = T.text(outcome.stdout).split(separator: "\n").map { $0.replacingOccurrences(of: "\t", with: " ") }
        #expect(Array(lines.prefix(2)) == ["65534", "65534"])
        // gVisor 20221219 has no CapAmb line; every set that is shown must be empty.
        let sets =
            kind == .runc
            ? ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] : ["CapInh", "CapPrm", "CapEff", "CapBnd"]
        for set in sets {
            #expect(lines.contains("\(set): 0000000000000000"), "\(set) in \(lines)")
        }
        #expect(lines.filter { $0.hasPrefix("Cap") }.allSatisfy { $0.hasSuffix(" 0000000000000000") })
        if kind == .runc { #expect(lines.contains("NoNewPrivs: 1")) }
        #expect(residue == [])
    }

    @Test("runc jobs run in a user namespace: uid 65534 is not the host's 65534")
    func userNamespace() async {
        let (outcome, residue) = await T.run(.runc, T.job(["cat", "/proc/self/uid_map"]), name: "userns")
        #expect(outcome.status == .succeeded)
        let fields = T.text(outcome.stdout).split(whereSeparator: \.isWhitespace)
        #expect(fields == ["0", "100000", "65536"])
        #expect(residue == [])
    }

    @Test("runc: Docker's masked and read-only /proc paths")
    func maskedPaths() async {
        // Only what this kernel has: masked files read as empty, masked directories list as empty,
        // the read-only paths are read-only mounts.
        func exists(_ path: String, directory: Bool) -> Bool {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
                && isDirectory.boolValue == directory
        }
        let files = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"].filter {
            exists($0, directory: false)
        }
        let directories = ["/proc/acpi", "/proc/scsi", "/sys/firmware"].filter { exists($0, directory: true) }
        let readOnly = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].filter {
            FileManager.default.fileExists(atPath: $0)
        }
        #expect(!files.isEmpty && !directories.isEmpty && !readOnly.isEmpty)
        let script = """
            for p in \(files.joined(separator: " ")); do echo "$p $(wc -c < $p)"; done
            for p in \(directories.joined(separator: " ")); do echo "$p $(ls -A $p | wc -l)"; done
            awk '{print $2, substr($4, 1, 2)}' /proc/self/mounts
            """
        let (outcome, residue) = await T.run(.runc, T.job(["sh", "-c", script]), name: "masked")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        let lines = T.text(outcome.stdout).split(separator: "\n").map(String.init)
        for path in files + directories {
            #expect(lines.contains("\(path) 0"), "\(path) in \(lines)")
        }
        for path in readOnly {
            #expect(lines.contains("\(path) ro"), "\(path) in \(lines)")
        }
        #expect(residue == [])
    }

    @Test("the root filesystem is read-only, /tmp writable and private", arguments: OCIKind.allCases)
    func filesystem(kind: OCIKind) async {
        let tag = UInt32.random(in: 100_000...999_999)
        let script = """
            for p in /root /work /home /var; do [ -e "$p" ] && echo "visible $p"; done
            for p in /usr/hangar-$1 /etc/hangar-$1 /hangar-$1; do echo x 2>/dev/null > $p && echo "wrote $p"; done
            echo x > /tmp/hangar-$1 && cat /tmp/hangar-$1
            grep -E '^[^ ]+ /(usr)? ' /proc/self/mounts | awk '{print $2, substr($4, 1, 2)}'
            """
        let (outcome, residue) = await T.run(kind, T.job(["sh", "-c", script, "sh", "\(tag)"]), name: "fs")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        let lines = T.text(outcome.stdout).split(separator: "\n").map(String.init)
        #expect(lines.first == "x", "\(lines)")
        #expect(lines.contains("/ ro") && lines.contains("/usr ro"), "\(lines)")
        #expect(!lines.contains { $0.hasPrefix("visible") || $0.hasPrefix("wrote") }, "\(lines)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/hangar-\(tag)"))
        #expect(residue == [])

        // A second job sees a fresh /tmp.
        let again = await T.run(kind, T.job(["sh", "-c", "ls -a /tmp 2>&1; echo /tmp/*"]), name: "fs2")
        #expect(T.text(again.outcome.stdout).hasSuffix("/tmp/*\n"), "\(T.text(again.outcome.stdout))")
        #expect(again.residue == [])
    }

    @Test("/tmp is a tmpfs bounded by fileSizeBytes, and so is each file", arguments: OCIKind.allCases)
    func boundedScratch(kind: OCIKind) async {
        // Four 1 MiB files, each under RLIMIT_FSIZE, do not fit in a 2 MiB tmpfs; one 3 MiB file is
        // cut at RLIMIT_FSIZE.
        let script = """
            for i in 1 2 3 4; do dd if=/dev/zero of=/tmp/f$i bs=1M count=1 2>/dev/null; done
            cat /tmp/f* | wc -c; rm /tmp/f*
            dd if=/dev/zero of=/tmp/big bs=1M count=3 2>/dev/null; wc -c < /tmp/big
            """
        let (outcome, residue) = await T.run(
            kind,
            T.job(["sh", "-c", script]) { $0.limits.fileSizeBytes = 2 << 20 },
            name: "tmpfs"
        )
        let sizes = T.text(outcome.stdout).split(separator: "\n").compactMap {
            Int($0.trimmingCharacters(in: .whitespaces))
        }
        #expect(sizes.count == 2, "\(T.text(outcome.stdout)) \(T.text(outcome.stderr))")
        if sizes.count == 2 {
            #expect(sizes[0] > 0 && sizes[0] <= 2 << 20, "all files together: \(sizes[0]) bytes")
            #expect(sizes[1] == 2 << 20, "one file: \(sizes[1]) bytes")
        }
        #expect(residue == [])
    }

    @Test("the network namespace holds only lo", arguments: OCIKind.allCases)
    func loopbackOnly(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["cat", "/proc/net/dev"]), name: "net")
        #expect(outcome.status == .succeeded)
        let interfaces = T.text(outcome.stdout).split(separator: "\n").dropFirst(2).compactMap {
            $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces)
        }
        #expect(interfaces == ["lo"])
        #expect(residue == [])
    }

    @Test("only descriptors 0, 1 and 2 reach the program", arguments: OCIKind.allCases)
    func descriptors(kind: OCIKind) async {
        // Listing /proc/self/fd opens one more descriptor; keep those still open afterwards.
        let script = """
            import os
            listed = sorted(int(n) for n in os.listdir('/proc/self/fd'))
            def is_open(fd):
                try:
                    os.fstat(fd)
                    return True
                except OSError:
                    return False
            print([fd for fd in listed if is_open(fd)])
            """
        let (outcome, residue) = await T.run(kind, T.job(["/usr/bin/python3", "-c", script]), name: "fds")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(T.text(outcome.stdout) == "[0, 1, 2]\n")
        #expect(residue == [])
    }

    @Test("rlimits come from the job's limits", arguments: OCIKind.allCases)
    func rlimits(kind: OCIKind) async {
        let script = """
            import resource as r
            print(r.getrlimit(r.RLIMIT_NOFILE), r.getrlimit(r.RLIMIT_FSIZE), r.getrlimit(r.RLIMIT_CORE))
            """
        let spec = T.job(["/usr/bin/python3", "-c", script]) {
            $0.limits.openFiles = 77
            $0.limits.fileSizeBytes = 3 << 20
        }
        let (outcome, residue) = await T.run(kind, spec, name: "rlimits")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(T.text(outcome.stdout) == "(77, 77) (3145728, 3145728) (0, 0)\n")
        #expect(residue == [])
    }

    @Test("a wall-clock timeout kills the whole container, setsid daemons included", arguments: OCIKind.allCases)
    func timeoutKillsEverything(kind: OCIKind) async throws {
        let tag = String(UInt32.random(in: 100_000...999_999))
        let sleeps = ["30.\(tag)", "31.\(tag)", "32.\(tag)"]
        // The daemon also ignores SIGTERM and SIGHUP: only SIGKILL gets it.
        let script =
            "echo started; sleep \(sleeps[0]) & (trap '' TERM HUP; exec setsid sleep \(sleeps[1])) & sleep \(sleeps[2])"
        let id = T.jobID("timeout")
        let began = ContinuousClock.now
        // The deadline covers the sandbox's start-up, which for gVisor can take over a second when the
        // machine is busy (as when all tests run at once).
        let timeout: UInt32 = kind == .runc ? 1000 : 3000
        let running = Task {
            await kind.runtime.run(T.job(["sh", "-c", script]) { $0.limits.timeoutMs = timeout }, jobID: id)
        }
        // Under runc the sleeps are host processes: all three must really have started, or the check
        // below proves nothing. Under gVisor they live in the sandbox's own kernel; its host
        // processes carry the container id, which carries the job id.
        var seen = Set<String>()
        if kind == .runc {
            while seen.count < sleeps.count && ContinuousClock.now - began < .seconds(3) {
                for value in sleeps where !T.processes(withArgument: value).isEmpty { seen.insert(value) }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(seen == Set(sleeps))
        } else {
            while seen.isEmpty && ContinuousClock.now - began < .seconds(3) {
                if !T.processes(withArgument: id, containing: true).isEmpty { seen.insert(id) }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(seen == [id])
        }
        let outcome = await running.value
        let elapsed = ContinuousClock.now - began
        #expect(outcome.status == .timedOut)
        #expect(outcome.message.contains("\(timeout) ms"))
        #expect(T.text(outcome.stdout) == "started\n")
        #expect(elapsed >= .milliseconds(Int64(timeout)))
        #expect(elapsed < .milliseconds(Int64(timeout)) + kind.startAllowance)
        #expect(await T.survivors(of: sleeps + [id], containing: true) == [])
        #expect(T.residue(of: id, kind: kind) == [])
    }

    @Test("a daemon left behind by a finished job dies with its container", arguments: OCIKind.allCases)
    func daemonOfFinishedJob(kind: OCIKind) async {
        let tag = "37.\(UInt32.random(in: 100_000...999_999))"
        let began = ContinuousClock.now
        let (outcome, residue) = await T.run(
            kind,
            // The job itself says the daemon still runs as it leaves, or "no survivors" proves nothing.
            T.job(["sh", "-c", "setsid sleep \(tag) & sleep 0.2; kill -0 $! && echo daemon alive; echo done"]),
            name: "daemon"
        )
        #expect(outcome.status == .succeeded)
        #expect(T.text(outcome.stdout) == "daemon alive\ndone\n")
        #expect(ContinuousClock.now - began < kind.startAllowance)
        #expect(await T.survivors(of: [tag]) == [])
        #expect(residue == [])
    }

    @Test("output over the cap is OUTPUT_LIMIT with exactly the cap kept", arguments: OCIKind.allCases)
    func outputLimit(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["yes"]) { $0.limits.outputBytes = 1000 }, name: "yes")
        #expect(outcome.status == .outputLimit)
        #expect(outcome.stdoutTruncated)
        #expect(outcome.stdout.count == 1000)
        #expect(outcome.stdoutBytes > 1000)
        #expect(residue == [])
    }

    @Test("touching more memory than the limit is OOM_KILLED", arguments: OCIKind.allCases)
    func memoryBomb(kind: OCIKind) async {
        let script = "b = bytearray(512 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')"
        let spec = T.job(["/usr/bin/python3", "-c", script]) { $0.limits.memoryBytes = 64 << 20 }
        let (outcome, residue) = await T.run(kind, spec, name: "oom")
        #expect(outcome.status == .oomKilled, "\(outcome.status) \(outcome.message) \(T.text(outcome.stderr))")
        #expect(outcome.signal == SIGKILL)
        #expect(!T.text(outcome.stdout).contains("survived"))
        // cgroup v1's usage counters are charged in per-CPU batches (64 pages each), so the recorded
        // peak may pass the limit by up to a batch per CPU: a CI run saw it under gVisor.
        #expect(outcome.peakMemoryBytes >= 60 << 20 && outcome.peakMemoryBytes <= (64 << 20) + (1 << 20))
        #expect(residue == [])
    }

    @Test("system calls outside the seccomp allowlist fail with EPERM", arguments: OCIKind.allCases)
    func seccomp(kind: OCIKind) async {
        let script = """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            def attempt(number, *args):
                result = libc.syscall(number, *args)
                return 'ok' if result >= 0 else os.strerror(ctypes.get_errno())
            print('ptrace', attempt(101, 0, 0, 0, 0))
            print('unshare', attempt(272, 0x10000000))
            print('keyctl', attempt(250, 0, 0, 0, 0))
            print('getpid', attempt(39))
            """
        let (outcome, residue) = await T.run(kind, T.job(["/usr/bin/python3", "-c", script]), name: "seccomp")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        let denied = "Operation not permitted"
        #expect(T.text(outcome.stdout) == "ptrace \(denied)\nunshare \(denied)\nkeyctl \(denied)\ngetpid ok\n")
        #expect(residue == [])
    }

    @Test("32-bit system calls (int 0x80) are refused", arguments: OCIKind.allCases)
    func compatSyscalls(kind: OCIKind) async {
        // i386 getpid through int 0x80 from executable memory; outside a sandbox it prints the pid.
        let script = """
            import ctypes, mmap
            code = bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3])  # mov eax, 20; int 0x80; ret
            memory = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            memory.write(code)
            address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
            print('before', flush=True)
            print(ctypes.CFUNCTYPE(ctypes.c_int)(address)(), flush=True)
            """
        let (outcome, residue) = await T.run(kind, T.job(["/usr/bin/python3", "-c", script]), name: "int80")
        let lines = T.text(outcome.stdout).split(separator: "\n")
        #expect(lines.first == "before", "\(outcome.message) \(T.text(outcome.stderr))")
        // Either the call failed (a negative errno) or the filter killed the program.
        let result = lines.dropFirst().first.flatMap { Int($0) }
        #expect(result.map { $0 < 0 } ?? (outcome.status == .failed), "\(lines) \(outcome.status)")
        #expect(residue == [])
    }

    @Test("runc: the CPU-time limit kills a busy loop and reads TIMED_OUT")
    func cpuTime() async {
        let spec = T.job(["/usr/bin/python3", "-c", "while True: pass"]) { $0.limits.cpuTimeMs = 500 }
        let began = ContinuousClock.now
        let (outcome, residue) = await T.run(.runc, spec, name: "cputime")
        #expect(outcome.status == .timedOut, "\(outcome.status) \(outcome.message)")
        #expect(outcome.message.contains("CPU time limit of 500 ms"))
        #expect(outcome.cpuTimeMicroseconds >= 500_000)
        #expect(ContinuousClock.now - began < .seconds(8))  // far below the 20 s wall-clock limit
        #expect(residue == [])
    }

    @Test("runc: the pids limit stops a fork loop")
    func pidsLimit() async {
        let script = "for i in $(seq 1 40); do sleep 5 & done; exit 3"
        let (outcome, residue) = await T.run(.runc, T.job(["sh", "-c", script]) { $0.limits.pids = 16 }, name: "pids")
        #expect(outcome.status == .failed)
        #expect(T.text(outcome.stderr).contains("Cannot fork"), "\(T.text(outcome.stderr))")
        #expect(residue == [])
    }

    @Test("gvisor: a small pids limit still leaves room for the sandbox's own threads")
    func gVisorPids() async {
        let (outcome, residue) = await T.run(
            .gvisor,
            T.job(["sh", "-c", "echo ok"]) { $0.limits.pids = 8 },
            name: "gpids"
        )
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(T.text(outcome.stdout) == "ok\n")
        #expect(residue == [])
    }

    @Test("the environment is the job's plus PATH and HOME, nothing from the node", arguments: OCIKind.allCases)
    func environment(kind: OCIKind) async {
        let (outcome, residue) = await T.run(kind, T.job(["env"]) { $0.env = ["FOO": "bar baz"] }, name: "env")
        #expect(outcome.status == .succeeded)
        let lines = Set(T.text(outcome.stdout).split(separator: "\n").map(String.init))
        #expect(lines == ["FOO=bar baz", "HOME=/tmp", "PATH=/usr/local/bin:/usr/bin:/bin"])
        #expect(residue == [])
    }

    @Test("cancelling the task kills the container", arguments: OCIKind.allCases)
    func cancellation(kind: OCIKind) async {
        let tag = "33.\(UInt32.random(in: 100_000...999_999))"
        let id = T.jobID("cancel")
        let running = Task { await kind.runtime.run(T.job(["sleep", tag]), jobID: id) }
        // The job's `sleep` must really run before the cancel, or the checks below prove nothing.
        let started = await eventually(within: .seconds(15)) {
            T.runs(kind, jobID: id, argument: tag, command: "sleep")
        }
        #expect(started, "the job's `sleep \(tag)` was not running within 15 s")
        let began = ContinuousClock.now
        running.cancel()
        let outcome = await running.value
        #expect(outcome.status == .cancelled)
        #expect(ContinuousClock.now - began < .seconds(3))
        #expect(await T.survivors(of: [tag, id], containing: true) == [])
        #expect(T.residue(of: id, kind: kind) == [])
    }

    @Test("runc: open_files or file_size_bytes too small for runc itself are refused with the minimum")
    func runcLauncherMinimums() async {
        // runc starts under the job's own rlimits (the container inherits them, see OwnedUserNamespace).
        let files = await T.run(.runc, T.job(["true"]) { $0.limits.openFiles = 8 }, name: "minfiles")
        #expect(files.outcome.status == .error)
        #expect(files.outcome.message.contains("open_files of at least 32"), "\(files.outcome.message)")
        let size = await T.run(.runc, T.job(["true"]) { $0.limits.fileSizeBytes = 4096 }, name: "minsize")
        #expect(size.outcome.status == .error)
        #expect(size.outcome.message.contains("file_size_bytes of at least 1048576"), "\(size.outcome.message)")
        #expect(files.residue + size.residue == [])
    }

    @Test("unsupported requests are errors, not silent downgrades", arguments: OCIKind.allCases)
    func invalidSpecs(kind: OCIKind) async {
        let empty = await T.run(kind, T.job([]), name: "empty")
        #expect(empty.outcome.status == .error)
        let allowlist = await T.run(kind, T.job(["true"]) { $0.network.mode = .networkAllowlist }, name: "allow")
        #expect(allowlist.outcome.status == .error)
        let env = await T.run(kind, T.job(["true"]) { $0.env = ["A=B": "c"] }, name: "badenv")
        #expect(env.outcome.status == .error)
        let cwd = await T.run(kind, T.job(["true"]) { $0.cwd = "/nonexistent" }, name: "badcwd")
        #expect(cwd.outcome.status == .error)
        #expect(cwd.outcome.message.contains("/nonexistent"))
        let usr = await T.run(kind, T.job(["pwd"]) { $0.cwd = "/usr/bin" }, name: "usrcwd")
        #expect(T.text(usr.outcome.stdout) == "/usr/bin\n")
        #expect(empty.residue + allowlist.residue + env.residue + cwd.residue + usr.residue == [])
    }

    @Test("runc: files land in the working directory with their modes")
    func files() async {
        func file(_ path: String, _ content: String, _ mode: UInt32) -> Hangar_V1_FileIn {
            var file = Hangar_V1_FileIn()
            file.path = path
            file.content = Data(content.utf8)
            file.mode = mode
            return file
        }
        let script = "cat hello.txt; ./bin/run.sh; stat -c %a hello.txt bin/run.sh; pwd; echo new > made && cat made"
        let spec = T.job(["sh", "-c", script]) {
            $0.cwd = "/tmp/work"
            $0.files = [file("hello.txt", "hi\n", 0), file("bin/run.sh", "#!/bin/sh\necho ran\n", 0o4755)]
        }
        let (outcome, residue) = await T.run(.runc, spec, name: "files")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(T.text(outcome.stderr))")
        #expect(T.text(outcome.stdout) == "hi\nran\n644\n755\n/tmp/work\nnew\n")
        #expect(residue == [])

        for bad in ["../escape", "/etc/passwd", "a//b", "./a", "", "a/../../b"] {
            let rejected = await T.run(.runc, T.job(["true"]) { $0.files = [file(bad, "x", 0)] }, name: "bad")
            #expect(rejected.outcome.status == .error, "path \"\(bad)\" was accepted")
        }
        let gvisor = await T.run(.gvisor, spec, name: "gfiles")
        #expect(gvisor.outcome.status == .error)
        #expect(gvisor.outcome.message.contains("tmpcopyup"))
        #expect(gvisor.residue == [])
    }

    @Test("probe reports the tool and version, and a missing binary", arguments: OCIKind.allCases)
    func probe(kind: OCIKind) async {
        let probe = await kind.runtime.probe()
        #expect(probe.available, "\(probe.detail)")
        switch kind {
        case .runc:
            #expect(probe.detail.hasPrefix("runc 1."))
            let missing = await ContainerRuntime(runcPath: "/nonexistent/runc", directories: kind.directories).probe()
            #expect(!missing.available && missing.detail.contains("/nonexistent/runc"))
        case .gvisor:
            #expect(probe.detail.hasPrefix("runsc ") && probe.detail.hasSuffix(", platform ptrace"))
            let missing = await GVisorRuntime(runscPath: "/nonexistent/runsc", directories: kind.directories).probe()
            #expect(!missing.available && missing.detail.contains("/nonexistent/runsc"))
        }
    }
}
