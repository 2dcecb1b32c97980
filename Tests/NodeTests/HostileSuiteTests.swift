import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

// The hostile suite: what a malicious tenant would try, run as a real job in every runtime (process:
// bubblewrap + cgroups + seccomp; container: runc; gvisor: runsc on ptrace). Each case asserts the
// defended outcome and then that the host is unharmed: no process of the job left, no cgroup,
// bundle or runtime state of it, and a trivial follow-up job in the same runtime still succeeds.
// Each case names the defence it relies on; without that defence its assertions fail.

private typealias H = Hostile

// Serialized: several cases burn CPU, memory or pids on purpose, gVisor on ptrace is CPU-hungry,
// and the machine may have only two cores. Cases for one runtime never overlap.
@Suite("HostileSuite: tenant attacks on every runtime", .serialized)
struct HostileSuiteTests {
    // MARK: 1–8: resources

    @Test("1. a fork bomb is held at the pids limit and ends at its timeout", arguments: HostileRuntime.allCases)
    func forkBomb(kind: HostileRuntime) async {
        let tag = H.tag()
        // `:(){ :|:& };:` in a subshell, so the main shell's only fork happens before the limit is
        // reached; the main shell then becomes a long sleep and only the wall clock ends the job.
        let script = "b() { b | b & }; (b) & exec sleep 60.\(tag)"
        // gVisor on ptrace forks slowly (a host stub per guest process), at half a core: on a loaded
        // machine (CI ran 2.5 s without reaching 64) it gets 5 s to get there.
        let timeout = kind.timeout(kind == .gvisor ? 4000 : 1500)
        let sampler = H.samplePids(of: tag)
        let run = await H.shell(kind, "forkbomb", script, tag: tag) {
            $0.limits.pids = 64
            $0.limits.cpuMillis = 500
            $0.limits.timeoutMs = timeout
        }
        sampler.cancel()
        let pids = await sampler.value
        if kind == .gvisor {
            // On ptrace every guest process has a host stub process, so the bomb exhausts the host
            // pids limit; the sentry then cannot start a thread and the whole sandbox stops (code 2).
            #expect(run.outcome.status == .timedOut || run.outcome.status == .failed, "\(run.summary)")
        } else {
            #expect(run.outcome.status == .timedOut, "\(run.summary)")
            #expect(run.outcome.message.contains("wall-clock limit of \(timeout) ms"), "\(run.summary)")
        }
        #expect(run.elapsed < .milliseconds(timeout) + kind.allowance)
        // Defence: the job's pids cgroup (gVisor's host tasks get an allowance for the sentry's own
        // threads on top). Without it, pids.max reads "max" and the bomb grows past 64.
        let limit = kind == .gvisor ? 64 + 256 : 64
        #expect(pids.limit == limit, "\(pids)")
        // The 10 ms sampler may see no process at all when the suites share two cores (CI: peak 0
        // with 752 refusals): the refusals below show the bomb ran; the peak only that no sample
        // saw more than the limit.
        #expect(pids.peak <= limit, "\(pids)")
        // The bomb really reached the limit: the kernel refused forks. On gVisor the first refused
        // thread stops the whole sandbox and its cgroup goes at once, so this 10 ms sampler can miss
        // the refusal (CI: peak 319 of 320, refused 0); the runtime's own reading of the same
        // pids.events, taken before the cgroup goes, is `pidsLimitHits`, checked below for every kind.
        if kind != .gvisor { #expect(pids.refused > 0, "\(pids)") }
        // Every runtime names the limit the same way: in the message and in the usage.
        #expect(run.outcome.message.contains("the pids limit of 64 was reached ("), "\(run.summary)")
        #expect(run.outcome.pidsLimitHits > 0, "\(run.summary)")
        if kind == .gvisor && run.outcome.status == .failed {
            #expect(run.outcome.message.contains("a sandbox that cannot start one stops with code 2"), "\(run.summary)")
        }
        await H.expectHostUnharmed(after: run)
    }

    @Test("2. a thread bomb stops below the pids limit", arguments: HostileRuntime.allCases)
    func threadBomb(kind: HostileRuntime) async {
        let script = """
            import threading
            event = threading.Event()
            started = 0
            try:
                while started < 10000:
                    threading.Thread(target=event.wait, daemon=True).start()
                    started += 1
                print('threads unlimited', started)
            except RuntimeError as error:
                print('threads', started, flush=True)
            event.set()
            """
        let run = await H.python(kind, "threadbomb", script) {
            $0.limits.pids = 64
            // What is tested is the pids limit, not speed: gVisor (ptrace) under CI's load once
            // took more than the default 10 s to start its threads.
            $0.limits.timeoutMs = 30_000
        }
        if kind == .gvisor && run.outcome.status == .oomKilled {
            // gVisor's guest threads cost the sandbox more memory than host threads do: the
            // memory cgroup stops the bomb before the pids limit (64 + the sentry's 256) does.
            #expect(run.outcome.message.contains("memory limit of"), "\(run.summary)")
            await H.expectHostUnharmed(after: run)
            return
        }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: threads are tasks, counted by the pids cgroup (bubblewrap and the interpreter's
        // main thread take a few of the 64; gVisor's sentry gets 256 more).
        let started = run.field("threads").flatMap { $0.first.flatMap { Int($0) } }
        #expect(started.map { $0 < (kind == .gvisor ? 64 + 256 : 64) } == true, "\(run.summary)")
        // Threads do start (gVisor: only since clone3 is let through to the sentry, which answers
        // ENOSYS so that glibc falls back to clone; with EPERM no thread could start).
        #expect(started.map { $0 > 0 } == true, "no thread started: \(run.summary)")
        await H.expectHostUnharmed(after: run)
    }

    @Test("3a. touching more memory than the limit is OOM_KILLED", arguments: HostileRuntime.allCases)
    func memoryBomb(kind: HostileRuntime) async {
        // b'\x01' * n writes every page of the 1 GiB.
        let script = "data = b'\\x01' * (1 << 30)\nprint('allocated', len(data))"
        let run = await H.python(kind, "oom", script) { $0.limits.memoryBytes = 64 << 20 }
        // Defence: the memory cgroup (no swap). Without it the job prints "allocated".
        #expect(run.outcome.status == .oomKilled, "\(run.summary)")
        #expect(run.outcome.message.contains("memory limit of 64 MiB reached; the kernel killed"), "\(run.summary)")
        #expect(!run.stdout.contains("allocated"), "\(run.summary)")
        // cgroup v1's high-water mark may pass the limit by a page charged while the kernel reclaims
        // (seen once for gVisor's sandbox: 64 MiB + 4096); without the limit it would be ~1 GiB.
        #expect(run.outcome.peakMemoryBytes <= (64 << 20) + 4096, "\(run.outcome.peakMemoryBytes)")
        #expect(run.elapsed < kind.allowance + .seconds(5))
        await H.expectHostUnharmed(after: run)
    }

    @Test(
        "3b. a huge untouched mmap harms nothing; filling /tmp stops at the scratch size",
        arguments: HostileRuntime.allCases
    )
    func hugeMappingAndScratchFill(kind: HostileRuntime) async {
        let script = """
            import ctypes, errno
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            size = 64 << 30
            # PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
            address = libc.mmap(None, size, 3, 0x22 | 0x4000, -1, 0)
            if address in (None, (1 << 64) - 1):
                print('mmap refused', errno.errorcode.get(ctypes.get_errno()), flush=True)
            else:
                for offset in range(0, size, 1 << 30):
                    ctypes.c_char.from_address(address + offset).value = b'x'
                print('mmap mapped', size, flush=True)
            total, chunk, index = 0, b'x' * (1 << 20), 0
            try:
                while total < (1 << 30):
                    with open('/tmp/fill%d' % index, 'wb') as file:
                        file.write(chunk)
                    total, index = total + len(chunk), index + 1
                print('tmpfill unlimited', total)
            except OSError as error:
                print('tmpfill', total, errno.errorcode.get(error.errno), flush=True)
            """
        let scratch: UInt64 = 16 << 20
        let run = await H.python(kind, "scratch", script) {
            $0.limits.memoryBytes = 128 << 20
            $0.limits.fileSizeBytes = scratch
        }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: pages are only charged when touched (64 touched pages of 64 GiB), and the memory
        // cgroup bounds what is. Refusing the mapping outright is fine too.
        let mapping = run.field("mmap") ?? []
        #expect(mapping == ["mapped", String(64 << 30)] || mapping == ["refused", "ENOMEM"], "\(run.summary)")
        // Defence: the /tmp tmpfs is mounted with size=fileSizeBytes (and is charged to the job's
        // memory). Without the size the fill goes on to "tmpfill unlimited" or an OOM kill.
        let fill = run.field("tmpfill") ?? []
        let filled = fill.first.flatMap { UInt64($0) } ?? 0
        #expect(fill.last == "ENOSPC", "\(run.summary)")
        #expect(filled >= scratch - (1 << 20) && filled <= scratch, "\(run.summary)")
        #expect(run.outcome.peakMemoryBytes <= 128 << 20)
        await H.expectHostUnharmed(after: run)
    }

    @Test("4. filling the disk with one big or many small files stops at the limit", arguments: HostileRuntime.allCases)
    func diskFill(kind: HostileRuntime) async {
        let script = """
            import errno, os
            count = 0
            try:
                while count < 100000:
                    with open('/tmp/small%d' % count, 'wb') as file:
                        file.write(b'y' * 512)
                    count += 1
                print('small unlimited', count)
            except OSError as error:
                print('small', count, errno.errorcode.get(error.errno), flush=True)
            for index in range(count):
                os.unlink('/tmp/small%d' % index)
            try:
                with open('/tmp/big', 'wb') as file:
                    while os.path.getsize('/tmp/big') < (1 << 30):
                        file.write(b'z' * (1 << 20))
                        file.flush()
                print('big unlimited')
            except OSError as error:
                print('big', os.path.getsize('/tmp/big'), errno.errorcode.get(error.errno), flush=True)
            print('result delivered')
            """
        let scratch: UInt64 = 4 << 20
        let run = await H.python(kind, "diskfill", script) { $0.limits.fileSizeBytes = scratch }
        // Defence: the tmpfs size bounds all files together, RLIMIT_FSIZE (and the size) one file.
        // Either way the program sees an error, carries on and the job ends with a result.
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        #expect(run.lines.last == "result delivered", "\(run.summary)")
        let small = run.field("small") ?? []
        let files = small.first.flatMap { UInt64($0) } ?? 0
        #expect(small.last == "ENOSPC", "\(run.summary)")
        #expect(files >= 256 && files <= scratch / 512, "\(run.summary)")
        let big = run.field("big") ?? []
        let size = big.first.flatMap { UInt64($0) } ?? .max
        #expect(big.last == "EFBIG" || big.last == "ENOSPC", "\(run.summary)")
        #expect(size <= scratch && size >= scratch - (1 << 20), "\(run.summary)")
        #expect(run.elapsed < kind.allowance + .seconds(8))
        await H.expectHostUnharmed(after: run)
    }

    @Test(
        "4b. open files stop at EMFILE; a write past the file size limit: death by SIGXFSZ is FAILED naming the limit",
        arguments: HostileRuntime.allCases
    )
    func openFilesAndFileSize(kind: HostileRuntime) async {
        // One job for two limits: python opens files until EMFILE (the program's own business:
        // nothing in the result), then dd, the job's top process, writes sparsely 3 MiB in, so that
        // RLIMIT_FSIZE (2 MiB) acts before the tmpfs could be full; dd does not ignore SIGXFSZ.
        let run = await H.shell(
            kind,
            "fsize",
            "python3 -c \"$1\"; exec dd if=/dev/zero of=/tmp/f bs=1 count=1 seek=3145728",
            arguments: [H.openUntilEMFILE]
        ) {
            $0.limits.fileSizeBytes = 2 << 20
            $0.limits.openFiles = 40
        }
        let files = run.field("files") ?? []
        #expect(files.last == "EMFILE" && (files.first.flatMap { Int($0) } ?? 99) < 40, "\(run.summary)")
        #expect(run.outcome.status == .failed, "\(run.summary)")
        if kind == .container {
            // runc makes the program the container's pid 1, which the kernel never kills with a
            // signal it does not handle: the write fails with EFBIG and the program decides.
            #expect(run.outcome.message == "exited with code 1", "\(run.summary)")
            // Any other process of the job (not pid 1) would die of SIGXFSZ, and its parent see 153.
            #expect(run.stderr.contains("File too large"), "\(run.summary)")
        } else {
            #expect(
                run.outcome.message.contains("the file size limit of 2 MiB was reached (SIGXFSZ)"),
                "\(run.summary)"
            )
        }
        // The sandbox itself is fine: no follow-up job needed (4 checks the same limits with one).
    }

    @Test(
        "5. an output flood without newlines is OUTPUT_LIMIT with exactly the cap kept",
        arguments: HostileRuntime.allCases
    )
    func outputFlood(kind: HostileRuntime) async {
        // One job floods stdout while stderr says one word, the other the reverse.
        let cap = 4096
        for (flooded, quiet) in [(1, 2), (2, 1)] {
            let script = """
                import os
                os.write(\(quiet), b'quiet')
                block = b'\(flooded == 1 ? "o" : "e")' * 65536
                while True:
                    os.write(\(flooded), block)
                """
            let run = await H.python(kind, "flood\(flooded)", script) { $0.limits.outputBytes = UInt64(cap) }
            // Defence: the monitor caps each stream and kills the sandbox at the first byte over;
            // nothing of the flood is buffered beyond the cap.
            #expect(run.outcome.status == .outputLimit, "\(run.summary)")
            #expect(run.outcome.message.contains("went over the \(cap)-byte limit"), "\(run.summary)")
            let floodedData = flooded == 1 ? run.outcome.stdout : run.outcome.stderr
            let quietData = flooded == 1 ? run.outcome.stderr : run.outcome.stdout
            #expect(floodedData == Data(repeating: flooded == 1 ? UInt8(ascii: "o") : UInt8(ascii: "e"), count: cap))
            #expect(quietData == Data("quiet".utf8))
            #expect(flooded == 1 ? run.outcome.stdoutTruncated : run.outcome.stderrTruncated)
            #expect(flooded == 1 ? !run.outcome.stderrTruncated : !run.outcome.stdoutTruncated)
            #expect((flooded == 1 ? run.outcome.stdoutBytes : run.outcome.stderrBytes) > UInt64(cap))
            #expect(run.elapsed < kind.allowance + .seconds(2))
            await H.expectHostUnharmed(after: run)
        }
    }

    @Test(
        "6. a CPU loop past cpuTimeMs is TIMED_OUT for CPU time, also spread over many processes",
        arguments: HostileRuntime.allCases
    )
    func cpuLoop(kind: HostileRuntime) async {
        // One busy process, then a loop of short-lived busy processes, each below the limit: what
        // counts is the CPU time of the whole job.
        let loops = [
            "exec /usr/bin/python3 -c 'while True: pass'",
            "while :; do timeout 0.2 sh -c 'while :; do :; done'; done",
        ]
        for (index, script) in loops.enumerated() {
            let timeout: UInt32 = 8000
            let run = await H.shell(kind, "cpu\(index)", script) {
                $0.limits.cpuTimeMs = 500
                $0.limits.timeoutMs = timeout
            }
            #expect(run.outcome.status == .timedOut, "\(run.summary)")
            // Defence: the node polls the CPU time of the job's cgroup and kills the job at the
            // limit; without it only the wall clock (8 s) would end the loop.
            #expect(run.outcome.message.contains("CPU time limit of 500 ms reached"), "\(run.summary)")
            #expect(run.outcome.cpuTimeMicroseconds >= 500_000, "\(run.summary)")
            #expect(run.elapsed < kind.allowance + .seconds(2), "\(run.summary)")
            await H.expectHostUnharmed(after: run)
        }
    }

    @Test("7. sleeping past the wall-clock limit is TIMED_OUT", arguments: HostileRuntime.allCases)
    func sleepPastLimit(kind: HostileRuntime) async {
        let tag = H.tag()
        let timeout = kind.timeout(1000)
        let run = await H.shell(kind, "sleep", "exec sleep 30.\(tag)", tag: tag) { $0.limits.timeoutMs = timeout }
        // Defence: the monitor's deadline, then SIGKILL of the sandbox.
        #expect(run.outcome.status == .timedOut, "\(run.summary)")
        #expect(run.outcome.message.contains("wall-clock limit of \(timeout) ms"), "\(run.summary)")
        #expect(run.elapsed >= .milliseconds(timeout))
        #expect(run.elapsed < .milliseconds(timeout) + kind.allowance)
        await H.expectHostUnharmed(after: run)
    }

    @Test(
        "8. a daemon that ignores SIGTERM and leaves the session does not outlive its job",
        arguments: HostileRuntime.allCases
    )
    func daemonOutlivesJob(kind: HostileRuntime) async throws {
        let tag = H.tag()
        let daemons = ["31.\(tag)", "32.\(tag)"]
        let script = """
            trap '' TERM HUP INT
            setsid sh -c 'trap "" TERM HUP INT; exec sleep \(daemons[0])' </dev/null >/dev/null 2>&1 &
            daemon=$!
            ( trap '' TERM HUP; exec setsid nohup sleep \(daemons[1]) ) </dev/null >/dev/null 2>&1 &
            sleep 0.5
            kill -0 $daemon && echo daemon alive
            kill -TERM $daemon; sleep 0.1
            kill -0 $daemon && echo daemon ignores TERM
            echo leaving
            """
        let running = Task { await H.shell(kind, "daemon", script, tag: tag) }
        // Under runc and bubblewrap the daemons are host processes: they must really have started.
        var seen = Set<String>()
        let began = ContinuousClock.now
        while kind != .gvisor && seen.count < daemons.count && ContinuousClock.now - began < .seconds(3) {
            for daemon in daemons where !OCITest.processes(withArgument: daemon).isEmpty { seen.insert(daemon) }
            try await Task.sleep(for: .milliseconds(20))
        }
        let run = await running.value
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        #expect(run.lines == ["daemon alive", "daemon ignores TERM", "leaving"], "\(run.summary)")
        if kind != .gvisor { #expect(seen == Set(daemons)) }
        // Defence: the job's pid namespace dies with its first process, and the node kills whatever
        // is left in the job's cgroup (process runtime) or container (runc, runsc) with SIGKILL.
        #expect(await H.survivors(of: tag) == [])
        await H.expectHostUnharmed(after: run)
    }

    // MARK: 9–12: escaping to the host

    @Test(
        "9. network exfiltration fails at once: no route, no host loopback, no DNS",
        arguments: HostileRuntime.allCases
    )
    func networkExfiltration(kind: HostileRuntime) async throws {
        let tag = H.tag()
        let listener = try #require(H.loopbackListener())
        let abstract = try #require(H.abstractListener("hangar-hostile-\(tag)"))
        defer {
            close(listener.fd)
            close(abstract)
        }
        let script = """
            import errno, socket, sys, time
            port, abstract = int(sys.argv[2]), sys.argv[3]
            def attempt(name, action):
                began = time.monotonic()
                try:
                    action()
                    result = 'CONNECTED'
                except socket.gaierror:
                    result = 'gaierror'
                except OSError as error:
                    result = errno.errorcode.get(error.errno, str(error.errno))
                print(name, result, '%.3f' % (time.monotonic() - began), flush=True)
            def tcp(host, port):
                def connect():
                    connection = socket.socket()
                    connection.settimeout(5)
                    connection.connect((host, port))
                return connect
            def udp():
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))
            def unix():
                socket.socket(socket.AF_UNIX).connect('\\0' + abstract)
            attempt('outside', tcp('1.1.1.1', 53))
            attempt('hostloopback', tcp('127.0.0.1', port))
            attempt('metadata', tcp('169.254.169.254', 80))
            attempt('udp', udp)
            attempt('dns', lambda: socket.getaddrinfo('hangar-exfiltration.example.com', 443))
            attempt('abstract', unix)
            print('interfaces', ','.join(sorted(name for _, name in socket.if_nameindex())))
            """
        let run = await H.python(
            kind,
            "network",
            script,
            arguments: [String(listener.port), "hangar-hostile-\(tag)"],
            tag: tag
        )
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: a network namespace of its own with only `lo` (gVisor: its netstack with
        // --network=none). Outside addresses have no route, the host's loopback and abstract
        // sockets are another namespace's, and there is no resolver to ask.
        let unreachable: Set<String> = ["ENETUNREACH", "EHOSTUNREACH"]
        let expected: [(String, Set<String>)] = [
            ("outside", unreachable), ("hostloopback", ["ECONNREFUSED"]), ("metadata", unreachable),
            ("udp", unreachable), ("dns", ["gaierror"]), ("abstract", ["ECONNREFUSED"]),
        ]
        for (name, results) in expected {
            let fields = run.field(name) ?? []
            #expect(fields.count == 2 && results.contains(fields[0]), "\(name): \(run.summary)")
            #expect((fields.last.flatMap { Double($0) } ?? 99) < 1.0, "\(name) took long: \(run.summary)")
        }
        #expect(run.field("interfaces") == ["lo"], "\(run.summary)")
        #expect(!H.somebodyConnected(to: listener.fd), "the job reached the host's 127.0.0.1:\(listener.port)")
        #expect(!H.somebodyConnected(to: abstract), "the job reached the host's abstract socket")
        await H.expectHostUnharmed(after: run)
    }

    @Test(
        "10. host secrets, host processes, cgroups and node state are out of reach",
        arguments: HostileRuntime.allCases
    )
    func hostSecrets(kind: HostileRuntime) async throws {
        let cwd = FileManager.default.currentDirectoryPath
        let hostOnly = ["/var/lib/hangar", "/run/hangar", "/root", "/home", "/work", OCIKind.root, cwd].filter {
            FileManager.default.fileExists(atPath: $0)
        }
        try #require(hostOnly.count >= 3, "too few host-only paths to look for: \(hostOnly)")
        let script = """
            import ctypes, errno, os, sys
            def outcome(action):
                try:
                    action()
                    return 'ALLOWED'
                except OSError as error:
                    return errno.errorcode.get(error.errno, str(error.errno))
            def read(path):
                with open(path, 'rb') as file:
                    file.read(1)
            def open_for_writing(path):
                os.close(os.open(path, os.O_WRONLY))
            def open_nonblocking(path):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            print('shadow', outcome(lambda: read('/etc/shadow')))
            print('sslprivate', outcome(lambda: os.listdir('/etc/ssl/private')))
            for path in sys.argv[2:]:
                print('hostpath', path, 'visible' if os.path.lexists(path) else 'hidden')
            print('root', ','.join(sorted(os.listdir('/'))))
            print('proc1root', outcome(lambda: print('proc1rootlist', ','.join(sorted(os.listdir('/proc/1/root'))))))
            for path in ('/proc/1/environ', '/proc/self/environ'):
                try:
                    print('environ', path, open(path, 'rb').read().hex() or '-')
                except OSError as error:
                    print('environ', path, '-')
            # Opening is the permission check; nothing is written.
            for path in ('/proc/sys/kernel/core_pattern', '/proc/sys/vm/drop_caches', '/proc/sysrq-trigger'):
                print('procwrite', path, outcome(lambda: open_for_writing(path)))
            for path in ('/proc/kpageflags', '/proc/slabinfo', '/proc/vmallocinfo', '/proc/kmsg'):
                print('procread', path, outcome(lambda: open_nonblocking(path)))
            allowed, attempts = 0, 0
            for directory, _, files in os.walk('/sys/fs/cgroup'):
                for name in files:
                    if name in ('cgroup.procs', 'tasks', 'release_agent', 'notify_on_release', 'pids.max',
                                'memory.limit_in_bytes', 'memory.max', 'cgroup.subtree_control'):
                        attempts += 1
                        allowed += outcome(lambda: open_for_writing(os.path.join(directory, name))) == 'ALLOWED'
            for path in ('/sys/fs/cgroup/hostile', '/sys/fs/cgroup/memory/hostile', '/sys/fs/cgroup/pids/hostile'):
                attempts += 1
                if outcome(lambda: os.mkdir(path)) == 'ALLOWED':
                    allowed += 1
                    os.rmdir(path)
            print('cgroupwrites', allowed, attempts)
            libc = ctypes.CDLL(None, use_errno=True)
            os.makedirs('/tmp/cg', exist_ok=True)
            mounted = libc.mount(b'cgroup', b'/tmp/cg', b'cgroup', 0, b'memory')
            print('mountcgroup', 'ALLOWED' if mounted == 0 else errno.errorcode.get(ctypes.get_errno()))
            """
        let run = await H.python(kind, "secrets", script, arguments: hostOnly)
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: the sandbox's root is a fresh tmpfs (bubblewrap) or bundle rootfs (OCI) with only
        // /usr and a few /etc files bound in, read-only; jobs run as an unprivileged, unmapped-to-root
        // uid without capabilities, in their own pid and mount namespaces.
        #expect(run.field("shadow").map { $0 != ["ALLOWED"] } == true, "\(run.summary)")
        #expect(run.field("sslprivate").map { $0 != ["ALLOWED"] } == true, "\(run.summary)")
        for path in hostOnly {
            #expect(run.lines.contains("hostpath \(path) hidden"), "\(path): \(run.summary)")
        }
        // /proc/1/root is the sandbox's own root, or not reachable at all; never the host's.
        let root = run.field("root")?.first ?? ""
        let hostRoot = ((try? FileManager.default.contentsOfDirectory(atPath: "/")) ?? []).sorted().joined(
            separator: ","
        )
        #expect(!root.isEmpty && root != hostRoot, "\(run.summary)")
        if run.field("proc1root") == ["ALLOWED"] {
            #expect(run.field("proc1rootlist")?.first == root, "\(run.summary)")
        }
        // No environment of the node: none of its variables, not even its working directory.
        let node = Set(ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" })
        for line in run.lines where line.hasPrefix("environ ") {
            let hex = line.split(separator: " ").last.map(String.init) ?? "-"
            let bytes = stride(from: 0, to: hex.count - 1, by: 2).compactMap { offset -> UInt8? in
                let start = hex.index(hex.startIndex, offsetBy: offset)
                return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)
            }
            let entries = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            #expect(entries.filter(node.contains) == [], "\(line.prefix(40)): \(entries)")
            #expect(!entries.contains { $0.contains(cwd) && cwd.count > 1 }, "node cwd in \(entries)")
        }
        // Host-wide kernel settings and root-only kernel files (a writable core_pattern is a host
        // root shell: the kernel runs its pipe helper as root in the host's namespaces).
        for line in run.lines where line.hasPrefix("procwrite ") || line.hasPrefix("procread ") {
            #expect(!line.hasSuffix(" ALLOWED"), "\(line)")
        }
        #expect(run.lines.filter { $0.hasPrefix("procwrite ") || $0.hasPrefix("procread ") }.count == 7)
        #expect(run.field("cgroupwrites")?.first == "0", "\(run.summary)")
        #expect(run.field("mountcgroup").map { $0 != ["ALLOWED"] } == true, "\(run.summary)")
        await H.expectHostUnharmed(after: run)
    }

    @Test("11. /proc/self/exe and the host's binaries cannot be overwritten", arguments: HostileRuntime.allCases)
    func overwriteExecutable(kind: HostileRuntime) async {
        let binaries = ["/usr/bin/python3.11", "/usr/bin/dash", "/usr/bin/bwrap", "/usr/sbin/runc", "/usr/bin/runsc"]
            .filter { FileManager.default.fileExists(atPath: $0) }
        let before = binaries.map(H.fingerprint)
        let script = """
            import errno, os
            targets = ['/proc/self/exe', '/proc/1/exe', os.path.realpath('/proc/self/exe'), '/bin/sh',
                       '/usr/bin/bwrap', '/usr/sbin/runc', '/usr/bin/runsc']
            # Opening for writing is the attack; nothing is written even where it succeeds.
            for path in targets:
                for name, flags in (('write', os.O_WRONLY), ('readwrite', os.O_RDWR), ('append', os.O_WRONLY | os.O_APPEND)):
                    try:
                        os.close(os.open(path, flags))
                        print('exe', name, path, 'OPENED')
                    except OSError as error:
                        print('exe', name, path, errno.errorcode.get(error.errno))
            # CVE-2019-5736 style: an O_PATH handle on our own binary, reopened for writing.
            handle = os.open('/proc/self/exe', os.O_PATH)
            try:
                os.close(os.open('/proc/self/fd/%d' % handle, os.O_WRONLY))
                print('exe reopen OPENED')
            except OSError as error:
                print('exe reopen', errno.errorcode.get(error.errno))
            """
        let run = await H.python(kind, "exe", script)
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: the binaries sit on read-only mounts (EROFS), are busy (ETXTBSY), or are owned by
        // a uid the job is not (EACCES; root is not mapped into the sandbox).
        let attempts = run.lines.filter { $0.hasPrefix("exe ") }
        #expect(attempts.count == 22, "\(run.summary)")
        #expect(!attempts.contains { $0.hasSuffix(" OPENED") }, "\(run.summary)")
        let own = attempts.filter { $0.contains(" /proc/self/exe ") || $0.hasPrefix("exe reopen") }
        #expect(own.count == 4 && !own.contains { $0.hasSuffix(" ENOENT") }, "\(own)")
        #expect(binaries.map(H.fingerprint) == before)
        await H.expectHostUnharmed(after: run)
    }

    @Test("12. descriptors of the node do not leak into the job", arguments: HostileRuntime.allCases)
    func leakedDescriptors(kind: HostileRuntime) async throws {
        let tag = H.tag()
        // A secret file and the host's root directory, opened without O_CLOEXEC as a careless node
        // might (a leaked directory descriptor is an escape: openat(fd, "etc/shadow")).
        let secret = "/tmp/hangar-hostile-secret-\(tag)"
        try Data("secret-\(tag)".utf8).write(to: URL(fileURLWithPath: secret))
        let file = open(secret, O_RDONLY)
        let root = open("/", O_RDONLY | O_DIRECTORY)
        defer {
            close(file)
            close(root)
            unlink(secret)
        }
        #expect(file > 2 && root > 2)
        let script = """
            import os
            listed = sorted(int(name) for name in os.listdir('/proc/self/fd'))
            def is_open(fd):
                try:
                    os.fstat(fd)
                    return True
                except OSError:
                    return False
            print('own', ','.join(str(fd) for fd in listed if is_open(fd)))
            print('probed', ','.join(str(fd) for fd in range(3, 4096) if is_open(fd)) or '-')
            others = []
            for pid in sorted(name for name in os.listdir('/proc') if name.isdigit() and int(name) != os.getpid()):
                try:
                    for fd in sorted(os.listdir('/proc/%s/fd' % pid), key=int):
                        if int(fd) > 2:
                            others.append('%s:%s:%s' % (pid, fd, os.readlink('/proc/%s/fd/%s' % (pid, fd))))
                except OSError:
                    pass
            print('others', ' '.join(others) or '-')
            """
        let run = await H.python(kind, "fds", script, tag: tag)
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: the node spawns with closefrom(3) after placing 0, 1, 2 (and bubblewrap's own
        // inputs, which it closes); runc and runsc pass on only the container's stdio.
        #expect(run.field("own") == ["0,1,2"], "\(run.summary)")
        #expect(run.field("probed") == ["-"], "\(run.summary)")
        // Other processes of the sandbox (bubblewrap's pid 1) hold no file or directory of the host.
        let others = (run.field("others") ?? []).filter { $0 != "-" }
        #expect(!others.contains { $0.split(separator: ":", maxSplits: 2).last?.hasPrefix("/") == true }, "\(others)")
        #expect(!run.stdout.contains("secret"), "\(run.summary)")
        await H.expectHostUnharmed(after: run)
    }

    // MARK: 13–16: other jobs, privileges, the kernel, the job's files

    @Test(
        "13. a second job cannot see the first one's /tmp, /dev/shm or SysV memory, nor be starved by it",
        arguments: HostileRuntime.allCases
    )
    func jobsAreIsolated(kind: HostileRuntime) async throws {
        let tag = H.tag()
        let key = String(Int(tag)! % 0x7fff_0000 + 1)
        let linger = kind == .gvisor ? 2.0 : 1.0
        let first = """
            import ctypes, os, socket, sys, time
            key, secret = int(sys.argv[2]), sys.argv[3]
            for path in ('/tmp/' + secret, '/dev/shm/' + secret):
                with open(path, 'w') as file:
                    file.write(secret)
            libc = ctypes.CDLL(None, use_errno=True)
            print('shmget', libc.shmget(key, 4096, 0o1666))  # IPC_CREAT | 0666
            listener = socket.socket(socket.AF_UNIX)
            listener.bind('\\0' + secret)
            listener.listen(1)
            # Every inotify instance it can get: the kernel counts them per user, per user namespace
            # and for the user that created the namespace, up to fs.inotify.max_user_instances.
            hog = [libc.inotify_init() for _ in range(int(sys.argv[5]))]
            print('inotify', sum(fd >= 0 for fd in hog))
            print('created %.3f' % time.time(), flush=True)
            time.sleep(\(linger))
            print('leaving %.3f' % time.time())
            """
        let probe = """
            import ctypes, errno, os, socket, sys, time
            key, secret = int(sys.argv[2]), sys.argv[3]
            seen = [path for path in ('/tmp/' + secret, '/dev/shm/' + secret) if os.path.lexists(path)]
            seen += [name for directory in ('/tmp', '/dev/shm') for name in os.listdir(directory) if 'secret' in name]
            print('files', ','.join(seen) or '-')
            libc = ctypes.CDLL(None, use_errno=True)
            found = libc.shmget(key, 0, 0)
            print('shmget', 'FOUND' if found >= 0 else errno.errorcode.get(ctypes.get_errno()))
            try:
                socket.socket(socket.AF_UNIX).connect('\\0' + secret)
                print('abstract CONNECTED')
            except OSError as error:
                print('abstract', errno.errorcode.get(error.errno))
            # The first job's marker, passed reversed so that this job's own argv does not carry it.
            marker = sys.argv[4][::-1]
            theirs = [pid for pid in os.listdir('/proc') if pid.isdigit() and marker in open('/proc/%s/cmdline' % pid).read()]
            print('processes', len(theirs))
            print('inotify', 'ok' if libc.inotify_init() >= 0 else errno.errorcode.get(ctypes.get_errno()))
            print('checked %.3f' % time.time())
            """
        let secret = "secret-\(tag)"
        // More instances than the host allows one user, so the first job exhausts its user's budget.
        let maxInstances = H.number("/proc/sys/fs/inotify/max_user_instances") ?? 128
        let hog = maxInstances + 16
        let arguments = [key, secret, String("hostile-\(tag)".reversed()), String(hog)]
        let running = Task {
            await H.python(kind, "isolation1", first, arguments: arguments, tag: tag) {
                $0.limits.openFiles = UInt32(hog + 64)
            }
        }
        try await Task.sleep(for: kind == .gvisor ? .milliseconds(1000) : .milliseconds(400))
        // While the first job runs, and again after it ended.
        let during = await H.python(kind, "isolation2", probe, arguments: arguments)
        let hostInotify = inotify_init1(Int32(IN_CLOEXEC))
        let hostError = errno
        let hostChecked = Date().timeIntervalSince1970
        if hostInotify >= 0 { close(hostInotify) }
        let owner = await running.value
        let after = await H.python(kind, "isolation3", probe, arguments: arguments)
        #expect(owner.outcome.status == .succeeded, "\(owner.summary)")
        #expect(owner.field("shmget").map { $0 != ["-1"] } == true, "\(owner.summary)")
        let created = owner.field("created")?.first.flatMap(Double.init) ?? .infinity
        let leaving = owner.field("leaving")?.first.flatMap(Double.init) ?? 0
        let checked = during.field("checked")?.first.flatMap(Double.init) ?? 0
        #expect(created < checked && checked < leaving, "the second job did not run while the first held its files")
        #expect(hostChecked < leaving, "the host looked after the first job ended")
        // Defence: each job has its own /tmp and /dev/shm (tmpfs of its mount namespace), its own
        // IPC and network namespaces, and its own pid namespace.
        for probe in [during, after] {
            #expect(probe.outcome.status == .succeeded, "\(probe.summary)")
            #expect(probe.field("files") == ["-"], "\(probe.summary)")
            #expect(probe.field("shmget") == ["ENOENT"], "\(probe.summary)")
            #expect(probe.field("abstract") == ["ECONNREFUSED"], "\(probe.summary)")
            #expect(probe.field("processes") == ["0"], "\(probe.summary)")
        }
        let held = owner.field("inotify")?.first.flatMap { Int($0) } ?? 0
        #expect(kind == .gvisor ? held == hog : held > 0 && held <= maxInstances, "\(owner.summary)")
        #expect(after.field("inotify") == ["ok"], "\(after.summary)")
        // gVisor's inotify lives in its own kernel. Elsewhere the kernel counts a job's instances
        // against the host user owning its user namespace: a uid of the job's own (SandboxUsers),
        // never root (runc joins a namespace the node made, OwnedUserNamespace) and never a uid
        // another job shares — so neither the host nor the second job is starved.
        #expect(hostInotify >= 0, "host root's inotify_init: \(String(cString: strerror(hostError)))")
        #expect(during.field("inotify") == ["ok"], "\(during.summary)")
        await H.expectHostUnharmed(after: owner)
        #expect(H.residue(of: during.tag) + H.residue(of: after.tag) == [])
    }

    @Test("14. setuid binaries and setuid() grant nothing", arguments: HostileRuntime.allCases)
    func setuidGrantsNothing(kind: HostileRuntime) async throws {
        let tag = H.tag()
        let script = """
            import errno, os, subprocess, time
            def field(status, name):
                return [line.split(':', 1)[1].split() for line in status.splitlines() if line.startswith(name + ':')][0]
            for program, arguments in (('/usr/bin/su', ['-c', 'id', 'root']), ('/usr/bin/passwd', []),
                                        ('/usr/bin/gpasswd', []), ('/usr/bin/mount', [])):
                bit = 'setuid' if os.stat(program).st_mode & 0o4000 else 'plain'
                child = subprocess.Popen([program] + arguments, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                # Not reaped until read: once exec'd, even a zombie shows the credentials it ran with.
                observed = None
                for _ in range(5000):
                    status = open('/proc/%d/status' % child.pid).read()
                    if field(status, 'Name')[0] == os.path.basename(program):
                        observed = status
                        break
                    time.sleep(0.001)
                child.wait()
                if observed is None:
                    print('program', program, bit, 'unobserved')
                else:
                    print('program', program, bit, 'euid', field(observed, 'Uid')[1], 'capeff', field(observed, 'CapEff')[0])
            for name, call in (('setuid', lambda: os.setuid(0)), ('setresuid', lambda: os.setresuid(0, 0, 0)),
                               ('setgroups', lambda: os.setgroups([0]))):
                try:
                    call()
                    print('call', name, 'ALLOWED')
                except OSError as error:
                    print('call', name, errno.errorcode.get(error.errno))
            status = open('/proc/self/status').read()
            print('ids', os.getuid(), os.geteuid(), os.getgid(), os.getegid())
            print('caps', *(field(status, name)[0] for name in ('CapPrm', 'CapEff', 'CapBnd')))
            time.sleep(0.3)  # for the host to look at this process
            """
        // Meanwhile, how the host sees the job's processes (runc and bubblewrap run them on the host).
        let running = Task { await H.python(kind, "setuid", script, tag: tag) }
        var hostUIDs = Set<String>()
        let began = ContinuousClock.now
        while kind != .gvisor && hostUIDs.isEmpty && ContinuousClock.now - began < .seconds(4) {
            for pid in OCITest.processes(withArgument: "hostile-\(tag)")
            where H.commandLine(of: pid).hasPrefix("/usr/bin/python3") {
                let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                for line in status.split(separator: "\n") where line.hasPrefix("Uid:") {
                    hostUIDs.formUnion(line.split(whereSeparator: \.isWhitespace).dropFirst().map(String.init))
                }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let run = await running.value
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: no_new_privs and nosuid mounts (bubblewrap and runc; gVisor's own kernel applies
        // both), and outside gVisor root is not mapped into the job's user namespace at all, so a
        // setuid-root file cannot make the job root.
        let programs = run.lines.filter { $0.hasPrefix("program ") }
        #expect(programs.count == 4, "\(run.summary)")
        for line in programs {
            let fields = line.split(separator: " ").map(String.init)
            #expect(fields.count == 7 && fields[2] == "setuid", "\(line)")
            #expect(fields.count == 7 && fields[4] == "65534" && fields[6] == "0000000000000000", "\(line)")
        }
        for call in ["setuid", "setresuid", "setgroups"] {
            let result = run.lines.first { $0.hasPrefix("call \(call) ") } ?? ""
            #expect(result.hasSuffix(" EPERM") || result.hasSuffix(" EINVAL"), "\(run.summary)")
        }
        #expect(run.field("ids") == ["65534", "65534", "65534", "65534"], "\(run.summary)")
        #expect(run.field("caps") == ["0000000000000000", "0000000000000000", "0000000000000000"], "\(run.summary)")
        if kind != .gvisor {
            // Not root on the host either, where a job process with uid 0 could write the host's
            // sysctls and read root-only files (see case 10).
            #expect(!hostUIDs.isEmpty && !hostUIDs.contains("0"), "host uids \(hostUIDs)")
        }
        await H.expectHostUnharmed(after: run)
    }

    @Test("15. ptrace of a sibling, bpf, io_uring and TIOCSTI are refused", arguments: HostileRuntime.allCases)
    func kernelAttackSurface(kind: HostileRuntime) async {
        let script = """
            import ctypes, errno, fcntl, os, termios, time
            libc = ctypes.CDLL(None, use_errno=True)
            def call(number, *arguments):
                result = libc.syscall(number, *arguments)
                return 'ALLOWED' if result >= 0 else errno.errorcode.get(ctypes.get_errno(), '?')
            sibling = os.fork()
            if sibling == 0:
                time.sleep(10)
                os._exit(0)
            buffer = ctypes.create_string_buffer(8)
            vector = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 8)
            print('ptrace_attach', call(101, 16, sibling, 0, 0))
            print('ptrace_seize', call(101, 0x4206, sibling, 0, 0))
            print('process_vm_readv', call(310, sibling, vector, 1, vector, 1, 0))
            print('bpf', call(321, 0, ctypes.create_string_buffer(72), 72))
            print('io_uring_setup', call(425, 8, ctypes.create_string_buffer(120)))
            print('perf_event_open', call(298, ctypes.create_string_buffer(128), 0, -1, -1, 0))
            for fd in (0, 1, 2):
                try:
                    fcntl.ioctl(fd, termios.TIOCSTI, b'x')
                    print('tiocsti%d ALLOWED' % fd)
                except OSError as error:
                    print('tiocsti%d' % fd, errno.errorcode.get(error.errno))
            print('ttys', ''.join('1' if os.isatty(fd) else '0' for fd in (0, 1, 2)))
            try:
                os.close(os.open('/dev/tty', os.O_RDWR))
                print('devtty OPENED')
            except OSError as error:
                print('devtty', errno.errorcode.get(error.errno))
            os.kill(sibling, 9)
            os.waitpid(sibling, 0)
            """
        let run = await H.python(kind, "syscalls", script)
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: the seccomp filter (process: Hangar's own BPF program; runc and runsc: the OCI
        // profile). Without it ptrace of one's own child and io_uring work on this kernel.
        for call in ["ptrace_attach", "ptrace_seize", "process_vm_readv", "bpf", "io_uring_setup", "perf_event_open"] {
            #expect(run.field(call) == ["EPERM"], "\(call): \(run.summary)")
        }
        // TIOCSTI pushes input into a terminal. The process runtime's filter refuses it outright;
        // the OCI runtimes allow ioctl (like Docker) but give the job no terminal at all: stdio
        // are pipes and there is no controlling tty.
        for fd in 0...2 {
            let result = run.field("tiocsti\(fd)") ?? []
            if kind == .process {
                #expect(result == ["EPERM"], "\(run.summary)")
            } else {
                #expect(result.count == 1 && result != ["ALLOWED"], "\(run.summary)")
            }
        }
        #expect(run.field("ttys") == ["000"], "\(run.summary)")
        #expect(run.field("devtty").map { $0 != ["OPENED"] } == true, "\(run.summary)")
        await H.expectHostUnharmed(after: run)
    }

    @Test("16. job files with .., absolute paths or symlink tricks are refused", arguments: HostileRuntime.allCases)
    func hostileFilePaths(kind: HostileRuntime) async {
        let tag = H.tag()
        func file(_ path: String, _ content: String = "x", mode: UInt32 = 0) -> Hangar_V1_FileIn {
            var file = Hangar_V1_FileIn()
            file.path = path
            file.content = Data(content.utf8)
            file.mode = mode
            return file
        }
        let hostTargets = ["/etc/hostile-\(tag)", "/tmp/hostile-escape-\(tag)", "/hostile-\(tag)"]
        let badPaths = [
            "../hostile-escape-\(tag)", "../../../../../../../etc/hostile-\(tag)", "a/../../hostile-escape-\(tag)",
            "/tmp/hostile-escape-\(tag)", "/etc/hostile-\(tag)", "//hostile-\(tag)", "./x", "a/./b", "a//b", "a/",
            "..", ".", "", "x\u{0}y",
        ]
        let badDirectories = ["/tmp/../etc", "/tmp/work/../../etc", "/etc", "/proc/self/root/tmp", "/proc/1/cwd"]
        var runs: [HostileRun] = []
        for path in badPaths {
            runs.append(
                await H.run(kind, "badpath", H.spec(["/bin/true"]) { $0.files = [file(path)] }, tag: H.tag())
            )
        }
        for directory in badDirectories {
            let spec = H.spec(["/bin/true"]) {
                $0.cwd = directory
                $0.files = [file("x")]
            }
            runs.append(await H.run(kind, "badcwd", spec, tag: H.tag()))
        }
        // Defence: paths must be relative, of plain components, and land below a working directory
        // under /tmp (cwd without ".."); gVisor refuses job files altogether (runsc has no
        // tmpcopyup). All are refused before anything is written.
        for run in runs {
            #expect(run.outcome.status == .error, "\(run.summary)")
            #expect(H.residue(of: run.tag) == [])
            #expect(await H.survivors(of: run.tag, within: .zero) == [])
        }
        for target in hostTargets { #expect(!FileManager.default.fileExists(atPath: target), "\(target)") }

        // A file whose mode asks for a symlink (S_IFLNK) and setuid, with a host path as content,
        // lands as a plain file: the mode keeps only its permission bits.
        let trick = H.spec(["/bin/sh", "-c", "test -L link && echo symlink; stat -c '%F %a' link; cat link"]) {
            $0.cwd = "/tmp/work"
            $0.files = [file("link", "/etc/shadow", mode: 0o124_777)]
        }
        let run = await H.run(kind, "symlink", trick, tag: tag)
        if kind == .gvisor {
            #expect(run.outcome.status == .error && run.outcome.message.contains("tmpcopyup"), "\(run.summary)")
        } else {
            #expect(run.outcome.status == .succeeded, "\(run.summary)")
            #expect(run.stdout == "regular file 777\n/etc/shadow", "\(run.summary)")
        }
        await H.expectHostUnharmed(after: run)
    }

    @Test(
        "17. files_out returns only regular files of the scratch, never a host file through a planted link",
        arguments: HostileRuntime.allCases
    )
    func filesOut(kind: HostileRuntime) async {
        let tag = H.tag()
        let script = """
            mkdir -p out/deep && echo result > out/answer.txt && echo deep > out/deep/x.txt
            echo secret-of-the-job > notwanted.txt
            head -c 3000 /dev/zero | tr '\\0' y > out/zbig.txt
            ln -s /etc/shadow out/shadow.txt; ln -s /etc out/etcdir
            ln /etc/passwd out/hard.txt 2>/dev/null || echo nohardlink
            mkfifo out/fifo.txt 2>/dev/null || echo nofifo
            echo done
            """
        let run = await H.run(
            kind,
            "filesout",
            H.spec(["/bin/sh", "-c", script]) {
                $0.cwd = "/tmp/work"
                $0.filesOut = ["out/*.txt", "out/etcdir/*", "out/**.txt"]
                $0.limits.outputBytes = 2048
            },
            tag: tag
        )
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        let files = Dictionary(uniqueKeysWithValues: run.outcome.filesOut.map { ($0.path, $0) })
        // Defence: the walk opens every component with O_NOFOLLOW and reads regular files of the
        // scratch's own filesystem only; the hard link fails across filesystems.
        #expect(files["out/answer.txt"].map { String(decoding: $0.content, as: UTF8.self) } == "result\n")
        #expect(files["out/deep/x.txt"].map { String(decoding: $0.content, as: UTF8.self) } == "deep\n")
        #expect(files["out/shadow.txt"] == nil, "\(files.keys.sorted())")
        #expect(files["out/hard.txt"] == nil, "\(files.keys.sorted())")
        #expect(files["out/fifo.txt"] == nil, "\(files.keys.sorted())")
        #expect(
            files.keys.allSatisfy { !$0.hasPrefix("out/etcdir") && $0 != "notwanted.txt" },
            "\(files.keys.sorted())"
        )
        #expect(run.outcome.message.contains("out/shadow.txt: not a regular file"), "\(run.summary)")
        // The 2048-byte cap (output_bytes) cuts the big file, read last (the walk goes in name order).
        let total = run.outcome.filesOut.reduce(0) { $0 + $1.content.count }
        #expect(total <= 2048)
        #expect(files["out/zbig.txt"]?.truncated == true)
        await H.expectHostUnharmed(after: run)
    }
}
