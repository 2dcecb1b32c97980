import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

// The hostile suite (HostileSuiteTests.swift) against the wasm runtime: the attacks a tenant can
// make from a WASI preview-1 module, each a C program compiled here to wasm32-wasi (as in
// WasmRuntimeTests), run by the real worker in the real sandbox. Each case asserts the defended
// outcome, then that the host is unharmed: no process of the job left (the worker and bubblewrap
// carry the job's tag in their argv), no cgroup or scratch of it, and a trivial follow-up module
// still succeeds.
//
// Which hostile cases apply to a WASI module, and which do not:
// - 1 (fork bomb), 2 (thread bomb), 8 (daemon outliving the job), 14 (setuid): WASI preview 1 can
//   start no process and no thread (the worker links no wasi-threads: a module importing
//   `wasi.thread-spawn` is refused, see "malformed modules" below) and has no uids.
// - 3a (memory): the linear-memory cap is in WasmRuntimeTests (malloc until NULL); here a module
//   whose *declared* memory is beyond the limit, `memory.grow` past it, and tables, which are
//   engine memory outside the linear-memory cap.
// - 3b (huge untouched mmap): WASI has no mmap; the /tmp-fill half is case 4.
// - 4, 4b (disk fill, open files), 5 (output flood, both streams), 7 (sleeping past the wall
//   clock in poll_oneoff): apply, here.
// - 6 (CPU loop): a plain loop running out of fuel is WasmRuntimeTests' `fuel`; here what fuel does
//   not meter (host calls: random_get of 1 MiB in a loop) and a loop with fuel off, both of which
//   must still end at the CPU-time limit.
// - 9 (network): WASI preview 1 opens no socket (WasmRuntimeTests' `ungranted`: sock_accept is
//   ENOSYS); here a job asking for a network is refused.
// - 10, 11 (host secrets, host binaries): a module sees only its preopens, so these become: host
//   paths (absolute, `..`, raw path_open on each preopen bypassing wasi-libc), the worker binary and
//   bubblewrap opened for writing, the node's environment. Symlinks out of the preopens are
//   WasmRuntimeTests' `symlinkEscape`.
// - 12 (leaked descriptors): the module's descriptor table holds stdio and its preopens only.
// - 13 (jobs isolated): two modules at once cannot see each other's /tmp. /dev/shm, SysV memory,
//   abstract sockets and inotify do not exist in WASI.
// - 15 (ptrace, bpf, io_uring, TIOCSTI): a module makes no system call; the worker runs under the
//   process runtime's seccomp filter, which case 15 checks for process jobs.
// - 16 (job files with `..`, cwd tricks), 17 (files_out through planted links): apply, here, with
//   the module's own argv[0] as one more path.
// And the engine's own surface, which has no counterpart for processes: malformed modules,
// unknown imports, a module without `_start`, unbounded recursion, proc_exit with codes the worker
// uses itself or that do not fit an exit status, a module forging the worker's ending line on its
// stderr, and a module that closes its stdio before the engine ends it.

/// One hostile module after it ran.
private struct WasmHostileRun: Sendable {
    /// Unique to this run: in the job id (its cgroup, scratch) and the module's last argv element
    /// (the worker's and bubblewrap's command lines).
    let tag: String
    let outcome: RunOutcome
    /// From the call to `run` until it returned.
    let elapsed: Duration

    var stdout: String { String(decoding: outcome.stdout, as: UTF8.self) }
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }

    /// The words after `key` on the first stdout line that starts with `key `, or nil.
    func field(_ key: String) -> [String]? {
        lines.first { $0.hasPrefix(key + " ") }.map { $0.split(separator: " ").dropFirst().map(String.init) }
    }

    var summary: String {
        "\(outcome.status) exit \(outcome.exitCode) signal \(outcome.signal) “\(outcome.message)” stdout: "
            + "\(stdout.prefix(1500)) stderr: \(String(decoding: outcome.stderr.suffix(600), as: UTF8.self))"
    }
}

@Suite("Wasm hostile suite: tenant attacks as C modules", .serialized)
struct WasmHostileTests {
    /// The hostile module: `argv[1]` picks the attack. Its last argv element is the run's tag.
    static let source = #"""
        #include <dirent.h>
        #include <errno.h>
        #include <fcntl.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/stat.h>
        #include <time.h>
        #include <unistd.h>
        #include <wasi/api.h>

        extern char **environ;

        static const char *name(int error) {
            switch (error) {
            case 0: return "OK";
            case ENOSPC: return "ENOSPC";
            case EFBIG: return "EFBIG";
            case EMFILE: return "EMFILE";
            case ENFILE: return "ENFILE";
            case ENOENT: return "ENOENT";
            case EACCES: return "EACCES";
            case EPERM: return "EPERM";
            case ENOTCAPABLE: return "ENOTCAPABLE";
            case EROFS: return "EROFS";
            case EBADF: return "EBADF";
            case EXDEV: return "EXDEV";
            case ELOOP: return "ELOOP";
            case ENOTDIR: return "ENOTDIR";
            case EISDIR: return "EISDIR";
            default: return "OTHER";
            }
        }

        static double now(void) {
            struct timespec t;
            clock_gettime(CLOCK_REALTIME, &t);
            return t.tv_sec + t.tv_nsec / 1e9;
        }

        static int depth(int n) {
            volatile char pad[64];
            pad[0] = (char)n;
            return depth(n + 1) + pad[0];
        }

        int main(int argc, char **argv) {
            const char *mode = argc > 1 ? argv[1] : "hello";
            if (!strcmp(mode, "hello")) { printf("hello wasm\n"); return 0; }
            if (!strcmp(mode, "sleep")) {
                struct timespec t = {30, 0};
                nanosleep(&t, NULL);
                printf("slept\n");
                return 0;
            }
            if (!strcmp(mode, "random")) {
                static unsigned char buffer[1 << 20];
                for (;;) (void)__wasi_random_get(buffer, sizeof buffer);
            }
            if (!strcmp(mode, "loop")) { volatile unsigned long n = 0; for (;;) n++; }
            if (!strcmp(mode, "grow")) {
                printf("grow %ld\n", (long)__builtin_wasm_memory_grow(0, 65535));
                return 0;
            }
            if (!strcmp(mode, "disk")) {
                char path[64], block[512];
                memset(block, 'y', sizeof block);
                int count = 0, error = 0;
                while (count < 100000) {
                    snprintf(path, sizeof path, "/tmp/small%d", count);
                    FILE *f = fopen(path, "w");
                    if (!f) { error = errno; break; }
                    size_t written = fwrite(block, 1, sizeof block, f);
                    if (fclose(f) != 0 || written != sizeof block) { error = errno; unlink(path); break; }
                    count++;
                }
                printf("small %d %s\n", count, name(error));
                for (int i = 0; i < count; i++) {
                    snprintf(path, sizeof path, "/tmp/small%d", i);
                    unlink(path);
                }
                static char chunk[1 << 20];
                memset(chunk, 'z', sizeof chunk);
                int fd = open("/tmp/big", O_WRONLY | O_CREAT | O_TRUNC, 0644);
                long total = 0;
                error = 0;
                while (total < (1L << 30)) {
                    ssize_t n = write(fd, chunk, sizeof chunk);
                    if (n < 0) { error = errno; break; }
                    total += n;
                }
                close(fd);
                printf("big %ld %s\n", total, name(error));
                printf("result delivered\n");
                return 0;
            }
            if (!strcmp(mode, "seekwrite")) {
                /* One byte at argv[2] bytes into a new file: past RLIMIT_FSIZE, within the tmpfs. */
                int fd = open("/tmp/sparse", O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int error = 0;
                if (lseek(fd, atol(argv[2]), SEEK_SET) < 0 || write(fd, "x", 1) != 1) error = errno;
                close(fd);
                printf("seekwrite %s\n", name(error));
                printf("result delivered\n");
                return 0;
            }
            if (!strcmp(mode, "files")) {
                FILE *f = fopen("/tmp/target", "w");
                if (f) fclose(f);
                int count = 0, error = 0;
                while (count < 100000) {
                    int fd = open("/tmp/target", O_RDONLY);
                    if (fd < 0) { error = errno; break; }
                    count++;
                }
                printf("files %d %s\n", count, name(error));
                return 0;
            }
            if (!strcmp(mode, "flood")) {
                int flooded = atoi(argv[2]), quiet = flooded == 1 ? 2 : 1;
                (void)write(quiet, "quiet", 5);
                static char block[65536];
                memset(block, flooded == 1 ? 'o' : 'e', sizeof block);
                for (;;) (void)write(flooded, block, sizeof block);
            }
            if (!strcmp(mode, "open")) {
                for (int i = 2; i < argc - 1; i++) {
                    int r = open(argv[i], O_RDONLY), readError = r < 0 ? errno : 0;
                    if (r >= 0) close(r);
                    int w = open(argv[i], O_WRONLY), writeError = w < 0 ? errno : 0;
                    if (w >= 0) close(w);
                    printf("open %s %s %s\n", argv[i], name(readError), name(writeError));
                }
                int count = 0;
                for (char **entry = environ; *entry; entry++) { printf("env %s\n", *entry); count++; }
                printf("environ %d\n", count);
                return 0;
            }
            if (!strcmp(mode, "raw")) {
                const char *paths[] = {"..", "../etc/passwd", "../../../../etc/passwd", "/etc/passwd", "./../..",
                                       "a/../../etc", "../proc/self/environ"};
                for (__wasi_fd_t fd = 3; fd <= 4; fd++) {
                    for (unsigned i = 0; i < sizeof paths / sizeof *paths; i++) {
                        __wasi_fd_t opened;
                        __wasi_errno_t err = __wasi_path_open(fd, 0, paths[i], 0,
                            __WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_READDIR, __WASI_RIGHTS_FD_READ, 0, &opened);
                        printf("raw %u %s %d\n", fd, paths[i], err);
                        if (err == 0) (void)__wasi_fd_close(opened);
                    }
                }
                return 0;
            }
            if (!strcmp(mode, "fds")) {
                for (__wasi_fd_t fd = 0; fd < 4096; fd++) {
                    __wasi_fdstat_t stat;
                    if (__wasi_fd_fdstat_get(fd, &stat) != 0) continue;
                    __wasi_prestat_t prestat;
                    if (__wasi_fd_prestat_get(fd, &prestat) == 0) {
                        char dir[256] = "";
                        size_t length = prestat.u.dir.pr_name_len < 255 ? prestat.u.dir.pr_name_len : 255;
                        if (__wasi_fd_prestat_dir_name(fd, (uint8_t *)dir, length) != 0) length = 0;
                        dir[length] = 0;
                        printf("fd %u preopen %s\n", fd, dir);
                    } else {
                        printf("fd %u type %u\n", fd, stat.fs_filetype);
                    }
                }
                return 0;
            }
            if (!strcmp(mode, "filesout")) {
                mkdir("out", 0755);
                mkdir("out/deep", 0755);
                FILE *f = fopen("out/answer.txt", "w");
                fputs("result\n", f);
                fclose(f);
                f = fopen("out/deep/x.txt", "w");
                fputs("deep\n", f);
                fclose(f);
                f = fopen("notwanted.txt", "w");
                fputs("secret-of-the-job\n", f);
                fclose(f);
                printf("symlink shadow %s\n", symlink("/etc/shadow", "out/shadow.txt") ? name(errno) : "OK");
                printf("symlink etc %s\n", symlink("/etc", "out/etcdir") ? name(errno) : "OK");
                printf("symlink up %s\n", symlink("../../../etc/passwd", "out/up.txt") ? name(errno) : "OK");
                printf("link passwd %s\n", link("/etc/passwd", "out/hard.txt") ? name(errno) : "OK");
                return 0;
            }
            if (!strcmp(mode, "isolation")) {
                /* argv[2]: this job's secret, left in /tmp; argv[3]: the other job's; argv[4]: ms to stay. */
                char path[160];
                snprintf(path, sizeof path, "/tmp/%s", argv[2]);
                FILE *f = fopen(path, "w");
                fputs(argv[2], f);
                fclose(f);
                printf("created %.3f\n", now());
                snprintf(path, sizeof path, "/tmp/%s", argv[3]);
                printf("other %s\n", access(path, F_OK) == 0 ? "FOUND" : name(errno));
                DIR *directory = opendir("/tmp");
                int secrets = 0;
                struct dirent *entry;
                while (directory && (entry = readdir(directory))) secrets += strstr(entry->d_name, "secret") != NULL;
                printf("secrets %d\n", secrets);
                printf("checked %.3f\n", now());
                long ms = atol(argv[4]);
                struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
                nanosleep(&t, NULL);
                printf("leaving %.3f\n", now());
                return 0;
            }
            if (!strcmp(mode, "recurse")) return depth(0);
            if (!strcmp(mode, "forge")) {
                fprintf(stderr, "\nhangar-wasm-worker: %s\n", argv[2]);
                fflush(stderr);
                __wasi_proc_exit(125);
            }
            if (!strcmp(mode, "exit")) __wasi_proc_exit((__wasi_exitcode_t)strtoul(argv[2], NULL, 10));
            if (!strcmp(mode, "closestdio")) {
                (void)__wasi_fd_close(1);
                (void)__wasi_fd_close(2);
                volatile unsigned long n = 0;
                for (;;) n++;
            }
            printf("unknown mode %s\n", mode);
            return 2;
        }
        """#

    /// A module whose declared (initial) linear memory is 1 GiB of zeroed static data.
    static let bigMemorySource = #"""
        #include <stdio.h>
        static char big[1u << 30];
        int main(int argc, char **argv) { big[argc] = 1; printf("big %d\n", big[1]); return 0; }
        """#

    /// A module importing a host function nobody provides.
    static let unknownImportSource = #"""
        __attribute__((import_module("env"), import_name("hangar_escape"))) void hangar_escape(void);
        int main(void) { hangar_escape(); return 0; }
        """#

    /// A module that starts a thread through wasi-threads.
    static let threadSource = #"""
        __attribute__((import_module("wasi"), import_name("thread-spawn"))) int thread_spawn(void *);
        int main(void) { return thread_spawn(0) < 0 ? 3 : 0; }
        """#

    /// Every module of the suite by name, compiled once per run, or why they could not be.
    static let modules: Result<[String: Data], WasmTestError> = {
        let candidates: [String] = ["/usr/bin/clang", "/usr/bin/clang-14"]
        guard let clang = candidates.first(where: { access($0, X_OK) == 0 }) else {
            return .failure(WasmTestError("no Debian clang (scripts/install-deps installs clang, lld and wasi-libc)"))
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-wasm-\(uniqueTag())")
        defer { try? FileManager.default.removeItem(at: directory) }
        let sources: [(name: String, source: String, flags: [String])] = [
            ("hostile", source, []),
            ("bigmemory", bigMemorySource, []),
            ("unknownimport", unknownImportSource, ["-Wl,--allow-undefined"]),
            ("thread", threadSource, ["-Wl,--allow-undefined"]),
        ]
        var modules: [String: Data] = [:]
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            for (name, source, flags) in sources {
                try source.write(to: directory.appendingPathComponent("\(name).c"), atomically: true, encoding: .utf8)
                let compiler = Process()
                compiler.executableURL = URL(fileURLWithPath: clang)
                compiler.arguments = ["--target=wasm32-wasi", "-O2", "\(name).c", "-o", "\(name).wasm"] + flags
                compiler.currentDirectoryURL = directory
                try compiler.run()
                compiler.waitUntilExit()
                guard compiler.terminationStatus == 0 else {
                    return .failure(WasmTestError("\(clang) --target=wasm32-wasi \(name).c failed"))
                }
                modules[name] = try Data(contentsOf: directory.appendingPathComponent("\(name).wasm"))
            }
        } catch {
            return .failure(WasmTestError("cannot compile the hostile modules: \(error)"))
        }
        // Hand-made ones: no C compiler emits these.
        // A module with the magic and version only: nothing to run, no `_start`.
        modules["empty"] = Data([0x00, 0x61, 0x73, 0x6D, 0x01, 0x00, 0x00, 0x00])
        // Not a module at all.
        modules["garbage"] = Data("#!/bin/sh\nexec cat /etc/shadow\n".utf8)
        // A real module cut in half.
        if let hostile = modules["hostile"] { modules["truncated"] = hostile.prefix(hostile.count / 2) }
        // table.grow by 2^28 null elements, then table.fill of them all: 2 GiB of engine memory,
        // outside the linear memory.
        modules["table"] = tableModule(tables: 1, growBy: 1 << 28)
        // Four tables, each grown to exactly the per-table cap of a 64 MiB job (2^23 elements of 8
        // bytes) and filled: 256 MiB in all.
        modules["tables"] = tableModule(tables: 4, growBy: 1 << 23)
        return .success(modules)
    }()

    /// A module of `tables` funcref tables (min 0, no max) whose `_start` grows each by `growBy`
    /// null elements and then fills all of its elements with null (which touches them).
    static func tableModule(tables: UInt8, growBy: Int32) -> Data {
        func unsigned(_ value: Int) -> [UInt8] {
            var value = value
            var bytes: [UInt8] = []
            repeat {
                let byte = UInt8(value & 0x7F)
                value >>= 7
                bytes.append(value == 0 ? byte : byte | 0x80)
            } while value != 0
            return bytes
        }
        func signed(_ value: Int32) -> [UInt8] {
            var value = value
            var bytes: [UInt8] = []
            while true {
                let byte = UInt8(value & 0x7F)
                value >>= 7
                if (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0) { return bytes + [byte] }
                bytes.append(byte | 0x80)
            }
        }
        func section(_ id: UInt8, _ content: [UInt8]) -> [UInt8] { [id] + unsigned(content.count) + content }
        var body: [UInt8] = [0x00]  // no locals
        for table in 0..<tables {
            body += [0xD0, 0x70, 0x41] + signed(growBy) + [0xFC, 0x0F, table, 0x1A]  // drop(table.grow(null, n))
            body += [0x41, 0x00, 0xD0, 0x70, 0xFC, 0x10, table, 0xFC, 0x11, table]  // table.fill(0, null, size)
        }
        body.append(0x0B)
        var module: [UInt8] = [0x00, 0x61, 0x73, 0x6D, 0x01, 0x00, 0x00, 0x00]
        module += section(1, [0x01, 0x60, 0x00, 0x00])  // one type: [] -> []
        module += section(3, [0x01, 0x00])  // function 0 of type 0
        module += section(4, [tables] + Array(repeating: [0x70, 0x00, 0x00], count: Int(tables)).flatMap { $0 })
        module += section(7, [0x01, 0x06] + Array("_start".utf8) + [0x00, 0x00])  // export func 0
        module += section(10, [0x01] + unsigned(body.count) + body)
        return Data(module)
    }

    /// Fuel per CPU second, as in WasmRuntimeTests: a debug build's engine is slow.
    static let fuelPerCPUSecond: UInt64 = 2_000_000

    static let runtime = WasmRuntime(fuelPerCPUSecond: fuelPerCPUSecond)

    /// Runs module `module` with `arguments` (after its argv[0]; the tag is appended) as job
    /// `wasm-hostile-<name>-<tag>`, with the hostile suite's defaults: 10 s, 128 MiB, 64 pids.
    private func run(
        _ name: String,
        module: String = "hostile",
        _ arguments: [String],
        runtime: WasmRuntime = Self.runtime,
        tag: String = Hostile.tag(),
        _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }
    ) async throws -> WasmHostileRun {
        var file = Hangar_V1_FileIn()
        file.path = "\(module).wasm"
        file.content = try #require(try Self.modules.get()[module])
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "wasm"
        spec.argv = [file.path] + arguments + ["hostile-\(tag)"]
        spec.files = [file]
        spec.limits.timeoutMs = 10_000
        spec.limits.memoryBytes = 128 << 20
        spec.limits.pids = 64
        configure(&spec)
        let began = ContinuousClock.now
        let outcome = await runtime.run(spec, jobID: "wasm-hostile-\(name)-\(tag)")
        return WasmHostileRun(tag: tag, outcome: outcome, elapsed: ContinuousClock.now - began)
    }

    /// No process, cgroup or scratch of `run` is left, and a trivial module still succeeds (and
    /// leaves nothing either).
    private func expectHostUnharmed(
        after run: WasmHostileRun,
        sourceLocation: SourceLocation = #_sourceLocation
    )
        async throws
    {
        #expect(await Hostile.survivors(of: run.tag) == [], sourceLocation: sourceLocation)
        #expect(Hostile.residue(of: run.tag) == [], sourceLocation: sourceLocation)
        let followUp = try await self.run("after", ["hello"])
        #expect(followUp.outcome.status == .succeeded, "\(followUp.summary)", sourceLocation: sourceLocation)
        #expect(followUp.stdout == "hello wasm\n", "\(followUp.summary)", sourceLocation: sourceLocation)
        #expect(await Hostile.survivors(of: followUp.tag) == [], sourceLocation: sourceLocation)
        #expect(Hostile.residue(of: followUp.tag) == [], sourceLocation: sourceLocation)
    }

    @Test("the modules compile and the runtime is available")
    func available() async throws {
        _ = try Self.modules.get()
        let probe = await Self.runtime.probe()
        #expect(probe.available, "\(probe.detail)")
    }

    // MARK: Resources (hostile cases 3a, 4, 4b, 5, 6, 7)

    @Test("3a. declared memory beyond the limit is refused at instantiation; memory.grow past it returns -1")
    func declaredMemory() async throws {
        let big = try await run("bigmemory", module: "bigmemory", []) { $0.limits.memoryBytes = 64 << 20 }
        // Defence: the worker's resource limiter sees the initial memory too (WasmKit asks it before
        // allocating). Without it the worker allocates 1 GiB and the cgroup kills it.
        #expect(big.outcome.status == .oomKilled, "\(big.summary)")
        #expect(big.outcome.message.contains("memory limit of 64 MiB reached: linear memory limit"), "\(big.summary)")
        #expect(big.outcome.message.contains("a growth to 1073"), "\(big.summary)")
        #expect(!big.stdout.contains("big"), "\(big.summary)")
        #expect(big.outcome.peakMemoryBytes < 64 << 20, "\(big.summary)")
        try await expectHostUnharmed(after: big)
        // memory.grow by 4 GiB at once fails (-1) and the module carries on: its own business.
        let grow = try await run("grow", ["grow"]) { $0.limits.memoryBytes = 64 << 20 }
        #expect(grow.outcome.status == .succeeded, "\(grow.summary)")
        #expect(grow.field("grow") == ["-1"], "\(grow.summary)")
        try await expectHostUnharmed(after: grow)
    }

    @Test("3a. table growth is engine memory: held to the job's memory limit")
    func tableGrowth() async throws {
        let run = try await run("table", module: "table", []) { $0.limits.memoryBytes = 64 << 20 }
        // Defence: the worker's resource limiter caps tables as it caps the linear memory (a table
        // element costs the engine 8 bytes). Without it table.grow succeeds and the fill touches
        // 2 GiB: the cgroup's OOM kill, at the job's limit plus the engine's allowance.
        #expect(run.outcome.status != .oomKilled || run.outcome.message.contains("64 MiB"), "\(run.summary)")
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        #expect(run.outcome.peakMemoryBytes < 64 << 20, "\(run.summary)")
        try await expectHostUnharmed(after: run)
        // The cap is per table (WasmKit does not say which table grows): four tables within it
        // reach the cgroup, which stops the engine at the job's limit plus its allowance, and the
        // message names the job's limit, not the cgroup's sum.
        let tables = try await self.run("tables", module: "tables", []) { $0.limits.memoryBytes = 64 << 20 }
        #expect(tables.outcome.status == .oomKilled, "\(tables.summary)")
        #expect(
            tables.outcome.message.hasPrefix(
                "memory limit of 64 MiB (and 64 MiB more for the engine) reached; the kernel killed"
            ),
            "\(tables.summary)"
        )
        #expect(tables.outcome.peakMemoryBytes <= (128 << 20) + 4096, "\(tables.summary)")
        try await expectHostUnharmed(after: tables)
    }

    @Test("4. filling /tmp with many small files or one big file stops at the limit; the module carries on")
    func diskFill() async throws {
        let scratch: UInt64 = 4 << 20
        let run = try await run("diskfill", ["disk"]) { $0.limits.fileSizeBytes = scratch }
        // Defence: the sandbox's /tmp is a tmpfs of size fileSizeBytes, and RLIMIT_FSIZE bounds one
        // file; the module sees ENOSPC or EFBIG (WASI has no signals: the worker ignores SIGXFSZ)
        // and delivers its result.
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
        try await expectHostUnharmed(after: run)
        // One byte 3 MiB into a file, with the file size limit at 2 MiB and room on the tmpfs: only
        // RLIMIT_FSIZE stops it. A process dies of SIGXFSZ there; a module, which has no signals,
        // gets EFBIG and carries on.
        let sparse = try await self.run("fsize", ["seekwrite", String(3 << 20)]) { $0.limits.fileSizeBytes = 2 << 20 }
        #expect(sparse.outcome.status == .succeeded, "\(sparse.summary)")
        #expect(sparse.field("seekwrite") == ["EFBIG"], "\(sparse.summary)")
        #expect(sparse.lines.last == "result delivered", "\(sparse.summary)")
        try await expectHostUnharmed(after: sparse)
    }

    @Test("4b. opening files stops at EMFILE below the open-files limit; the engine carries on")
    func openFiles() async throws {
        let run = try await run("files", ["files"]) { $0.limits.openFiles = 40 }
        // Defence: RLIMIT_NOFILE of the worker. Without it the module opens its 100000.
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        let files = run.field("files") ?? []
        #expect(files.last == "EMFILE" || files.last == "ENFILE", "\(run.summary)")
        #expect((files.first.flatMap { Int($0) } ?? 99) < 40, "\(run.summary)")
        try await expectHostUnharmed(after: run)
    }

    @Test("5. an output flood on either stream is OUTPUT_LIMIT with exactly the cap kept")
    func outputFlood() async throws {
        let cap = 4096
        for (flooded, quiet) in [(1, 2), (2, 1)] {
            let run = try await run("flood\(flooded)", ["flood", String(flooded)]) {
                $0.limits.outputBytes = UInt64(cap)
            }
            // Defence: the monitor caps each stream of the worker and kills the sandbox at the first
            // byte over, as for process jobs.
            #expect(run.outcome.status == .outputLimit, "\(run.summary)")
            #expect(run.outcome.message.contains("went over the \(cap)-byte limit"), "\(run.summary)")
            let floodedData = flooded == 1 ? run.outcome.stdout : run.outcome.stderr
            let quietData = quiet == 1 ? run.outcome.stdout : run.outcome.stderr
            #expect(floodedData == Data(repeating: flooded == 1 ? UInt8(ascii: "o") : UInt8(ascii: "e"), count: cap))
            #expect(quietData == Data("quiet".utf8), "\(run.summary)")
            #expect(flooded == 1 ? run.outcome.stdoutTruncated : run.outcome.stderrTruncated)
            #expect(run.elapsed < .seconds(5), "\(run.summary)")
            try await expectHostUnharmed(after: run)
        }
    }

    @Test("6. CPU burnt in host calls fuel does not meter, or with fuel off, ends at the CPU-time limit")
    func cpuOutsideFuel() async throws {
        // random_get of 1 MiB costs the engine a lot and fuel a few instructions: the cgroup's
        // CPU-time limit (the job's, plus the engine's allowance) ends it, or fuel does.
        let random = try await run("random", ["random"]) {
            $0.limits.cpuTimeMs = 500
            $0.limits.timeoutMs = 20_000
        }
        #expect(random.outcome.status == .timedOut, "\(random.summary)")
        // The message names the job's limit; the cgroup's is that plus the engine's allowance.
        #expect(
            random.outcome.message.contains("CPU time limit of 500 ms (and 1000 ms more for the engine) reached")
                || random.outcome.message.contains("fuel exhausted"),
            "\(random.summary)"
        )
        #expect(random.elapsed < .seconds(10), "only the wall clock ended it: \(random.summary)")
        try await expectHostUnharmed(after: random)
        // Fuel off: the CPU-time limit is the cgroup's, exactly the job's.
        let loop = try await run("loop", ["loop"], runtime: WasmRuntime(fuelPerCPUSecond: 0)) {
            $0.limits.cpuTimeMs = 500
            $0.limits.timeoutMs = 20_000
        }
        #expect(loop.outcome.status == .timedOut, "\(loop.summary)")
        #expect(loop.outcome.message.contains("CPU time limit of 500 ms reached"), "\(loop.summary)")
        #expect(loop.elapsed < .seconds(10), "\(loop.summary)")
        try await expectHostUnharmed(after: loop)
    }

    @Test("7. sleeping in poll_oneoff past the wall-clock limit is TIMED_OUT")
    func sleepPastLimit() async throws {
        let run = try await run("sleep", ["sleep"]) {
            $0.limits.timeoutMs = 1000
            $0.limits.cpuTimeMs = 5000
        }
        // Defence: the monitor's deadline and SIGKILL of the sandbox; sleeping burns no fuel and no
        // CPU time, so nothing else would end it.
        #expect(run.outcome.status == .timedOut, "\(run.summary)")
        #expect(run.outcome.message.contains("wall-clock limit of 1000 ms"), "\(run.summary)")
        #expect(!run.stdout.contains("slept"), "\(run.summary)")
        #expect(run.elapsed >= .milliseconds(1000) && run.elapsed < .seconds(4), "\(run.summary)")
        try await expectHostUnharmed(after: run)
    }

    // MARK: Escaping to the host (hostile cases 9, 10, 11, 12, 13)

    @Test("9. a job asking for a network is refused: WASI preview 1 has no sockets")
    func network() async throws {
        let run = try await run("network", ["hello"]) { $0.network.mode = .networkAllowlist }
        #expect(run.outcome.status == .error, "\(run.summary)")
        #expect(run.outcome.message.contains("not supported by the wasm runtime"), "\(run.summary)")
        #expect(Hostile.residue(of: run.tag) == [])
    }

    @Test("10, 11. host files, the worker's binary and the node's environment are out of reach")
    func hostSecrets() async throws {
        let worker = try WasmRuntime.findWorker(nil).get()
        let before = [worker, "/usr/bin/bwrap"].map(Hostile.fingerprint)
        let cwd = FileManager.default.currentDirectoryPath
        let paths = [
            "/etc/shadow", "/etc/passwd", "/etc/hostname", "/proc/self/environ", "/proc/1/cmdline", "/proc/self/mem",
            "/sys/fs/cgroup/pids/cgroup.procs", "/run/hangar/wasm-worker", worker, "/usr/bin/bwrap", "/root",
            cwd + "/Package.swift", "../etc/passwd", "/tmp/../etc/passwd", "./../../proc/self/environ",
            "../../../../../../usr/bin/bwrap",
        ]
        let run = try await run("secrets", ["open"] + paths) { $0.cwd = "/tmp/work" }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: wasi-libc resolves paths against the preopens only (/tmp, ., grants), WasmKit
        // resolves each beneath its preopen, and the sandbox has none of these host files anyway.
        for path in paths {
            let line = run.lines.first { $0.hasPrefix("open \(path) ") } ?? ""
            let results = line.split(separator: " ").dropFirst(2).map(String.init)
            #expect(results.count == 2 && !results.contains("OK"), "\(path): \(run.summary)")
        }
        // Only the job's environment (none here): nothing of the node's.
        #expect(run.field("environ") == ["0"], "\(run.summary)")
        #expect([worker, "/usr/bin/bwrap"].map(Hostile.fingerprint) == before)
        try await expectHostUnharmed(after: run)

        // The same paths through path_open itself, on each preopen, past wasi-libc.
        let raw = try await self.run("raw", ["raw"]) { $0.cwd = "/tmp/work" }
        #expect(raw.outcome.status == .succeeded, "\(raw.summary)")
        let attempts = raw.lines.filter { $0.hasPrefix("raw ") }
        #expect(attempts.count == 14, "\(raw.summary)")
        for line in attempts { #expect(!line.hasSuffix(" 0"), "opened: \(line)") }
        try await expectHostUnharmed(after: raw)
    }

    @Test("12. the module holds stdio and its preopens, no descriptor of the worker or the node")
    func descriptors() async throws {
        let run = try await run("fds", ["fds"]) { $0.cwd = "/tmp/work" }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // Defence: WasmKit's descriptor table holds only what the worker gave it (stdio are pipes:
        // WASI's filetype 0, unknown); the module's file and the worker's own descriptors are not in it.
        #expect(
            run.lines == ["fd 0 type 0", "fd 1 type 0", "fd 2 type 0", "fd 3 preopen /tmp", "fd 4 preopen ."],
            "\(run.summary)"
        )
        try await expectHostUnharmed(after: run)
    }

    @Test("13. two modules at once do not see each other's /tmp")
    func jobsAreIsolated() async throws {
        let first = Hostile.tag()
        let second = Hostile.tag()
        let secrets = ["secret-\(first)", "secret-\(second)"]
        let running = Task {
            try await run("isolation1", ["isolation", secrets[0], secrets[1], "1500"], tag: first)
        }
        // The second starts once the first's secret is in its /tmp, as the host sees it through the
        // first's worker (a host process with the tag in its argv).
        let began = ContinuousClock.now
        var planted = false
        while !planted && ContinuousClock.now - began < .seconds(5) {
            planted = OCITest.processes(withArgument: "hostile-\(first)").contains {
                FileManager.default.fileExists(atPath: "/proc/\($0)/root/tmp/\(secrets[0])")
            }
            if !planted { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(planted, "the first module's secret never appeared in its /tmp")
        let during = try await run("isolation2", ["isolation", secrets[1], secrets[0], "0"], tag: second)
        let owner = try await running.value
        for run in [owner, during] {
            #expect(run.outcome.status == .succeeded, "\(run.summary)")
            // Defence: each job's /tmp is a tmpfs of its own sandbox; the preopen is that.
            #expect(run.field("other") == ["ENOENT"], "\(run.summary)")
            #expect(run.field("secrets") == ["1"], "\(run.summary)")
        }
        let created = owner.field("created")?.first.flatMap(Double.init) ?? .infinity
        let leaving = owner.field("leaving")?.first.flatMap(Double.init) ?? 0
        let checked = during.field("checked")?.first.flatMap(Double.init) ?? 0
        #expect(created < checked && checked < leaving, "the second job did not run while the first held its file")
        try await expectHostUnharmed(after: owner)
        #expect(Hostile.residue(of: second) == [])
    }

    // MARK: The job's files (hostile cases 16, 17)

    @Test("16. module paths and files with .., absolute paths or a cwd outside /tmp are refused")
    func hostilePaths() async throws {
        let module = try #require(try Self.modules.get()["hostile"])
        func file(_ path: String) -> Hangar_V1_FileIn {
            var file = Hangar_V1_FileIn()
            file.path = path
            file.content = module
            return file
        }
        var refused: [WasmHostileRun] = []
        for path in ["../escape-\(uniqueTag()).wasm", "/etc/hostile.wasm", "a/../../x.wasm"] {
            refused.append(
                try await run("badpath", [], tag: Hostile.tag()) {
                    $0.argv[0] = path
                    $0.files = [file(path)]
                }
            )
        }
        for cwd in ["/tmp/../etc", "/tmp/work/../../etc", "/etc", "/proc/self/root/tmp"] {
            refused.append(try await run("badcwd", ["hello"], tag: Hostile.tag()) { $0.cwd = cwd })
        }
        // Defence: the runtime's own checks (argv[0] among the files, cwd under /tmp) and the
        // process runtime's (relative paths of plain components, cwd without ..), before anything
        // is written or started.
        for run in refused {
            #expect(run.outcome.status == .error, "\(run.summary)")
            #expect(Hostile.residue(of: run.tag) == [])
            #expect(await Hostile.survivors(of: run.tag, within: .zero) == [])
        }
        // An absolute argv[0] the job may not read is no module: the worker cannot load it.
        let shadow = try await run("shadow", []) { $0.argv[0] = "/etc/shadow" }
        #expect(shadow.outcome.status == .failed, "\(shadow.summary)")
        #expect(shadow.outcome.message.hasPrefix("cannot load the module /etc/shadow"), "\(shadow.summary)")
        try await expectHostUnharmed(after: shadow)
    }

    @Test("17. files_out returns only regular files of the scratch, never a host file through a planted link")
    func filesOut() async throws {
        let run = try await run("filesout", ["filesout"]) {
            $0.cwd = "/tmp/work"
            $0.filesOut = ["out/*.txt", "out/etcdir/*", "out/**.txt"]
        }
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        // The module may plant the links in its own scratch (WASI lets it name any target)...
        #expect(run.field("symlink") == ["shadow", "OK"], "\(run.summary)")
        // ...but no hard link to a host file: /etc is no preopen.
        #expect(run.field("link").map { $0.count == 2 && $0[1] != "OK" } == true, "\(run.summary)")
        // Defence: the node's walk of the scratch opens every component with O_NOFOLLOW and reads
        // regular files only.
        let files = Dictionary(uniqueKeysWithValues: run.outcome.filesOut.map { ($0.path, $0) })
        #expect(files["out/answer.txt"].map { text($0.content) } == "result\n")
        #expect(files["out/deep/x.txt"].map { text($0.content) } == "deep\n")
        #expect(Set(files.keys) == ["out/answer.txt", "out/deep/x.txt"], "\(files.keys.sorted())")
        #expect(run.outcome.message.contains("out/shadow.txt: not a regular file"), "\(run.summary)")
        try await expectHostUnharmed(after: run)
    }

    // MARK: The engine's own surface

    @Test("malformed modules, unknown imports, wasi-threads and a module without _start are FAILED, not a crash")
    func malformedModules() async throws {
        let cases: [(module: String, message: String)] = [
            ("garbage", "cannot load the module"),
            ("truncated", "cannot load the module"),
            ("empty", "the module exports neither _start (a WASI command) nor run"),
            ("unknownimport", "cannot run the module"),
            ("thread", "cannot run the module"),
        ]
        for (module, message) in cases {
            let run = try await run(module, module: module, [])
            // Defence: the worker reports what WasmKit refused as its own ending; no signal, no
            // partial run.
            #expect(run.outcome.status == .failed, "\(module): \(run.summary)")
            #expect(run.outcome.signal == 0, "\(module): \(run.summary)")
            #expect(run.outcome.message.hasPrefix(message), "\(module): \(run.summary)")
            #expect(run.outcome.stdout.isEmpty, "\(module): \(run.summary)")
            try await expectHostUnharmed(after: run)
        }
    }

    @Test("unbounded recursion traps: FAILED with the trap, the engine's stack holds")
    func recursion() async throws {
        let run = try await run("recurse", ["recurse"])
        // Defence: WasmKit's own call-stack limit; without it the worker would overflow its native
        // stack and die of SIGSEGV.
        #expect(run.outcome.status == .failed, "\(run.summary)")
        #expect(run.outcome.signal == 0, "\(run.summary)")
        #expect(run.outcome.message.hasPrefix("the module trapped: Trap: call stack exhausted"), "\(run.summary)")
        #expect(run.elapsed < .seconds(8), "\(run.summary)")
        try await expectHostUnharmed(after: run)
    }

    @Test("a module cannot forge the worker's ending: a fake marker line with exit 125 stays the module's own")
    func forgedEnding() async throws {
        let forgeries: [(line: String, wouldBe: Hangar_V1_JobStatus)] = [
            ("fuel: fuel exhausted", .timedOut),
            ("memory: linear memory limit reached", .oomKilled),
            ("error: usage: forged", .error),
        ]
        for (line, wouldBe) in forgeries {
            let run = try await run("forge", ["forge", line])
            // Defence: the worker never passes the module's exit code 125 (its own ending status) on:
            // it ends with its own marker, always the last stderr line.
            #expect(run.outcome.status == .failed && run.outcome.status != wouldBe, "\(run.summary)")
            #expect(run.outcome.exitCode == 125, "\(run.summary)")
            #expect(run.outcome.message == "the module exited with code 125", "\(run.summary)")
            try await expectHostUnharmed(after: run)
        }
    }

    @Test("proc_exit with a code outside 0...255 is FAILED with that code, never SUCCEEDED modulo 256")
    func oddExitCodes() async throws {
        for (code, expected) in [(255, "exited with code 255"), (256, "the module exited with code 256")] {
            let run = try await run("exit", ["exit", String(code)])
            #expect(run.outcome.status == .failed, "\(code): \(run.summary)")
            #expect(run.outcome.exitCode == Int32(code), "\(code): \(run.summary)")
            #expect(run.outcome.message == expected, "\(code): \(run.summary)")
            try await expectHostUnharmed(after: run)
        }
        let huge = try await run("exit", ["exit", String(UInt32.max)])
        #expect(huge.outcome.status == .failed, "\(huge.summary)")
        #expect(huge.outcome.message == "the module exited with code \(UInt32.max)", "\(huge.summary)")
    }

    @Test("a module that closes its stdio still ends with the engine's verdict (fuel), which it cannot hide")
    func closedStdio() async throws {
        let run = try await run("closestdio", ["closestdio"]) { $0.limits.cpuTimeMs = 500 }
        // Defence: WasmKit's stdio entries are borrowed: fd_close takes them out of the module's
        // table but leaves the worker's stderr open for its marker line.
        #expect(run.outcome.status == .timedOut, "\(run.summary)")
        #expect(run.outcome.message.contains("fuel exhausted"), "\(run.summary)")
        try await expectHostUnharmed(after: run)
    }
}
