import Foundation
import Glibc
import HangarNode
import HangarShared
import Testing

/// The wasm runtime end to end: a C program compiled here to wasm32-wasi with Debian's clang and
/// wasi-libc (scripts/install-deps), run by the real worker (`hangar-wasm-worker`, next to the test
/// binary) in real sandboxes. One module with a mode per behaviour, compiled once per run.
@Suite("Wasm runtime: C modules through WasmKit in the sandbox", .serialized)
struct WasmRuntimeTests {
    /// The probe module's source: `argv[1]` picks what it does.
    static let source = #"""
        #include <errno.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        #include <wasi/api.h>

        int main(int argc, char **argv) {
            const char *mode = argc > 1 ? argv[1] : "hello";
            if (!strcmp(mode, "hello")) { printf("hello wasm\n"); return argc > 2 ? atoi(argv[2]) : 0; }
            if (!strcmp(mode, "echo")) {
                for (int i = 0; i < argc; i++) printf("arg %s\n", argv[i]);
                const char *foo = getenv("FOO");
                printf("FOO %s\nPATH %s\n", foo ? foo : "(unset)", getenv("PATH") ? getenv("PATH") : "(unset)");
                char line[256];
                while (fgets(line, sizeof line, stdin)) printf("stdin %s", line);
                return 0;
            }
            if (!strcmp(mode, "read")) {
                FILE *f = fopen(argv[2], "r");
                if (!f) { printf("read DENIED %s\n", strerror(errno)); return 0; }
                char line[256] = "";
                fgets(line, sizeof line, f);
                printf("read %s", line);
                return 0;
            }
            if (!strcmp(mode, "write")) {
                FILE *f = fopen(argv[2], "w");
                if (!f || fputs(argc > 3 ? argv[3] : "written\n", f) < 0 || fclose(f) != 0) {
                    printf("write DENIED %s\n", strerror(errno));
                    return 0;
                }
                printf("write WROTE\n");
                return 0;
            }
            if (!strcmp(mode, "loop")) { volatile unsigned long n = 0; for (;;) n++; }
            if (!strcmp(mode, "hog")) {
                int mib = 0;
                for (;;) {
                    volatile char *p = malloc(1 << 20);
                    if (!p) break;
                    for (int i = 0; i < 1 << 20; i += 4096) p[i] = 1;
                    mib++;
                }
                printf("hog %d MiB\n", mib);
                return 3;
            }
            if (!strcmp(mode, "spew")) {
                long total = atol(argv[2]);
                char chunk[4096];
                memset(chunk, 'x', sizeof chunk);
                for (long done = 0; done < total; done += sizeof chunk) fwrite(chunk, 1, sizeof chunk, stdout);
                return 0;
            }
            if (!strcmp(mode, "sock")) {
                __wasi_fd_t fd;
                __wasi_errno_t err = __wasi_sock_accept(0, 0, &fd);
                printf("sock_accept %d\n", (int)err);
                return 0;
            }
            if (!strcmp(mode, "symlink")) {
                if (symlink(argv[2], argv[3]) != 0) { printf("symlink DENIED %s\n", strerror(errno)); return 0; }
                FILE *f = fopen(argv[4], "r");
                printf("through symlink %s\n", f ? "OPENED" : strerror(errno));
                return 0;
            }
            if (!strcmp(mode, "trap")) { __builtin_trap(); }
            printf("unknown mode %s\n", mode);
            return 2;
        }
        """#

    /// The compiled probe module, or why it could not be built.
    static let module: Result<Data, WasmTestError> = {
        let candidates: [String] = ["/usr/bin/clang", "/usr/bin/clang-14"]
        guard let clang = candidates.first(where: { access($0, X_OK) == 0 }) else {
            return .failure(WasmTestError("no Debian clang (scripts/install-deps installs clang, lld and wasi-libc)"))
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-wasm-\(uniqueTag())")
        defer { try? FileManager.default.removeItem(at: directory) }
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try source.write(to: directory.appendingPathComponent("probe.c"), atomically: true, encoding: .utf8)
            let compiler = Process()
            compiler.executableURL = URL(fileURLWithPath: clang)
            compiler.arguments = ["--target=wasm32-wasi", "-O2", "probe.c", "-o", "probe.wasm"]
            compiler.currentDirectoryURL = directory
            try compiler.run()
            compiler.waitUntilExit()
            guard compiler.terminationStatus == 0 else {
                return .failure(WasmTestError("\(clang) --target=wasm32-wasi failed (\(compiler.terminationStatus))"))
            }
            return .success(try Data(contentsOf: directory.appendingPathComponent("probe.wasm")))
        } catch {
            return .failure(WasmTestError("cannot compile the probe module: \(error)"))
        }
    }()

    /// Fuel per CPU second in these tests: a debug build's engine is far slower than a release
    /// build's, so the budget is small enough to run out before the cgroup's CPU-time limit.
    static let testFuelPerCPUSecond: UInt64 = 2_000_000

    /// Runs the probe with `arguments` (after its argv[0]) on `runtime`.
    func run(
        _ arguments: [String],
        runtime: WasmRuntime = WasmRuntime(fuelPerCPUSecond: Self.testFuelPerCPUSecond),
        _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }
    ) async throws -> RunOutcome {
        var file = Hangar_V1_FileIn()
        file.path = "probe.wasm"
        file.content = try Self.module.get()
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "wasm"
        spec.argv = ["probe.wasm"] + arguments
        spec.files = [file]
        spec.limits.timeoutMs = 10_000
        configure(&spec)
        return await runtime.run(spec, jobID: "wasm-\(uniqueTag())")
    }

    @Test("the worker is found and the runtime is available")
    func probe() async {
        let probe = await WasmRuntime().probe()
        #expect(probe.available, "\(probe.detail)")
    }

    @Test("hello world, and the module's exit code is the job's")
    func hello() async throws {
        let outcome = try await run(["hello"])
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(text(outcome.stdout) == "hello wasm\n")
        let failed = try await run(["hello", "7"])
        #expect(failed.status == .failed)
        #expect(failed.exitCode == 7, "\(failed.message)")
    }

    @Test(
        "a warm worker takes a job whose module came with it: on its control pipe, written into the scratch as a cold sandbox stages it, run as a cold one runs it; other files start cold"
    )
    func warmModule() async throws {
        let runtime = WasmRuntime(fuelPerCPUSecond: Self.testFuelPerCPUSecond)
        var file = Hangar_V1_FileIn()
        file.path = "probe.wasm"
        file.content = try Self.module.get()
        func spec(_ arguments: [String]) -> Hangar_V1_JobSpec {
            var spec = Hangar_V1_JobSpec()
            spec.runtime = "wasm"
            spec.argv = ["probe.wasm"] + arguments
            spec.files = [file]
            spec.limits.timeoutMs = 10_000
            return spec
        }
        var echo = spec(["echo", "a b", "c"])
        echo.env = ["FOO": "bar"]
        echo.stdin = Data("one\ntwo\n".utf8)
        let first = try await runtime.prepareWarm(template: "host", profile: .defaults)
        #expect(first.accepts(echo))
        var twoFiles = echo
        twoFiles.files.append(Hangar_V1_FileIn.with { ($0.path, $0.content) = ("data.txt", Data("x".utf8)) })
        #expect(!first.accepts(twoFiles), "a job with files besides its module starts cold")
        var nested = echo
        nested.argv[0] = "lib/probe.wasm"
        nested.files[0].path = "lib/probe.wasm"
        #expect(!first.accepts(nested), "a module in a folder of the scratch starts cold")
        let warm = await first.run(echo, jobID: "wasm-warm-\(uniqueTag())")
        #expect(warm.status == .succeeded, "\(warm.message) \(text(warm.stderr))")
        let cold = await runtime.run(echo, jobID: "wasm-cold-\(uniqueTag())")
        #expect(text(warm.stdout) == text(cold.stdout), "warm: \(text(warm.stdout)) cold: \(text(cold.stdout))")
        #expect(
            text(warm.stdout)
                == "arg probe.wasm\narg echo\narg a b\narg c\nFOO bar\nPATH (unset)\nstdin one\nstdin two\n"
        )
        // The module is a file of the job's scratch, as a cold sandbox stages it.
        let second = try await runtime.prepareWarm(template: "host", profile: .defaults)
        let read = spec(["read", "probe.wasm"])
        #expect(second.accepts(read))
        let own = await second.run(read, jobID: "wasm-warm-\(uniqueTag())")
        #expect(own.status == .succeeded, "\(own.message) \(text(own.stderr))")
        #expect(text(own.stdout).hasPrefix("read ") && !text(own.stdout).contains("DENIED"), "\(text(own.stdout))")
    }

    @Test(
        "in a directory template the module comes from the template, whose folders it reads (not writes) at their paths, with the template's env; relative paths are still its scratch; warm pools of it are refused"
    )
    func template() async throws {
        // Not under /tmp: the template's root is bound into the sandbox at its own host path.
        let state = "/var/tmp/hangar-wasm-templates-\(uniqueTag())"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: state) }
        chmod(state, 0o755)
        let store = TemplateStore(stateDirectory: state)
        let module = try Self.module.get()
        try store.build(name: "wasmapp", env: ["FOO": "from-template"], source: "test") { root in
            try FileManager.default.createDirectory(atPath: root + "/app", withIntermediateDirectories: true)
            try module.write(to: URL(fileURLWithPath: root + "/app/probe.wasm"))
            try Data("template data\n".utf8).write(to: URL(fileURLWithPath: root + "/app/data.txt"))
        }
        let runtime = WasmRuntime(fuelPerCPUSecond: Self.testFuelPerCPUSecond, templates: store)
        func job(_ argv: [String]) -> Hangar_V1_JobSpec {
            var spec = Hangar_V1_JobSpec()
            spec.runtime = "wasm"
            spec.template = "wasmapp"
            spec.argv = argv
            spec.limits.timeoutMs = 10_000
            return spec
        }
        let echo = await runtime.run(job(["/app/probe.wasm", "echo"]), jobID: "wasm-tpl-\(uniqueTag())")
        #expect(echo.status == .succeeded, "\(echo.message) \(text(echo.stderr))")
        #expect(
            text(echo.stdout).contains("arg /app/probe.wasm\narg echo\nFOO from-template\n"),
            "\(text(echo.stdout))"
        )
        let read = await runtime.run(
            job(["/app/probe.wasm", "read", "/app/data.txt"]),
            jobID: "wasm-tpl-\(uniqueTag())"
        )
        #expect(
            text(read.stdout) == "read template data\n",
            "\(read.message) \(text(read.stdout)) \(text(read.stderr))"
        )
        // Read-only: the template is not the job's to change.
        let write = await runtime.run(
            job(["/app/probe.wasm", "write", "/app/new.txt"]),
            jobID: "wasm-tpl-\(uniqueTag())"
        )
        #expect(text(write.stdout).hasPrefix("write DENIED"), "\(text(write.stdout))")
        #expect(
            !FileManager.default.fileExists(
                atPath: (try store.template(named: "wasmapp").rootfs ?? "") + "/app/new.txt"
            )
        )
        // The working directory is still the job's scratch.
        var relative = job(["/app/probe.wasm", "write", "out.txt", "in scratch\n"])
        relative.filesOut = ["*.txt"]
        let wrote = await runtime.run(relative, jobID: "wasm-tpl-\(uniqueTag())")
        #expect(text(wrote.stdout) == "write WROTE\n", "\(text(wrote.stdout)) \(text(wrote.stderr))")
        #expect(wrote.filesOut.map { text($0.content) } == ["in scratch\n"])
        // A host path is not the template's: outside the host template, /etc is the template's (none).
        let host = await runtime.run(
            job(["/app/probe.wasm", "read", "/etc/hostname"]),
            jobID: "wasm-tpl-\(uniqueTag())"
        )
        #expect(text(host.stdout).hasPrefix("read DENIED"), "\(text(host.stdout))")
        let missing = await runtime.run(job(["/app/other.wasm"]), jobID: "wasm-tpl-\(uniqueTag())")
        #expect(missing.status == .error || missing.status == .failed, "\(missing.status) \(missing.message)")
        await #expect(throws: WarmError.self) {
            _ = try await runtime.prepareWarm(template: "wasmapp", profile: .defaults)
        }
    }

    @Test("argv, only the job's environment, and stdin reach the module")
    func argvEnvStdin() async throws {
        let outcome = try await run(["echo", "a b", "c"]) {
            $0.env = ["FOO": "bar"]
            $0.stdin = Data("one\ntwo\n".utf8)
        }
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(
            text(outcome.stdout)
                == "arg probe.wasm\narg echo\narg a b\narg c\nFOO bar\nPATH (unset)\nstdin one\nstdin two\n"
        )
    }

    @Test("a file the module writes in its working directory comes back as files-out")
    func filesOut() async throws {
        let outcome = try await run(["write", "out.txt", "from wasm\n"]) { $0.filesOut = ["*.txt"] }
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(text(outcome.stdout) == "write WROTE\n")
        #expect(outcome.filesOut.map(\.path) == ["out.txt"])
        #expect(outcome.filesOut.first.map { text($0.content) } == "from wasm\n")
    }

    @Test("an endless loop runs out of fuel: TIMED_OUT, fuel exhausted")
    func fuel() async throws {
        let outcome = try await run(["loop"]) { $0.limits.cpuTimeMs = 1000 }
        #expect(outcome.status == .timedOut, "\(outcome.message) \(text(outcome.stderr))")
        #expect(outcome.message.contains("fuel exhausted"), "\(outcome.message)")
    }

    @Test("without fuel an endless loop ends at the wall-clock limit")
    func wallClock() async throws {
        let outcome = try await run(["loop"], runtime: WasmRuntime(fuelPerCPUSecond: 0)) {
            $0.limits.timeoutMs = 1500
            $0.limits.cpuTimeMs = 30_000
        }
        #expect(outcome.status == .timedOut, "\(outcome.message)")
        #expect(outcome.message.contains("wall-clock limit"), "\(outcome.message)")
    }

    @Test("a memory hog gets no more linear memory than the job's limit")
    func memoryCap() async throws {
        let outcome = try await run(["hog"]) { $0.limits.memoryBytes = 32 << 20 }
        #expect(outcome.status == .oomKilled, "\(outcome.message) \(text(outcome.stderr))")
        #expect(outcome.message.contains("memory limit of 32 MiB reached"), "\(outcome.message)")
        let mebibytes = text(outcome.stdout).split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? -1
        #expect((20..<32).contains(mebibytes), "\(text(outcome.stdout))")
    }

    @Test("output beyond the cap is cut and ends the job as for process jobs")
    func outputCap() async throws {
        let outcome = try await run(["spew", "1000000"]) { $0.limits.outputBytes = 64 << 10 }
        #expect(outcome.status == .outputLimit, "\(outcome.message)")
        #expect(outcome.stdoutTruncated)
        #expect(outcome.stdout.count == 64 << 10)
    }

    @Test("a trap ends the job FAILED with the trap's message")
    func trap() async throws {
        let outcome = try await run(["trap"])
        #expect(outcome.status == .failed)
        #expect(outcome.message.contains("the module trapped: Trap: unreachable"), "\(outcome.message)")
    }

    @Test("ungranted host paths cannot be opened, and there are no sockets")
    func ungranted() async throws {
        let passwd = try await run(["read", "/etc/passwd"])
        #expect(text(passwd.stdout).hasPrefix("read DENIED"), "\(text(passwd.stdout))")
        let parent = try await run(["read", "../etc/passwd"])
        #expect(text(parent.stdout).hasPrefix("read DENIED"), "\(text(parent.stdout))")
        let socket = try await run(["sock"])
        #expect(text(socket.stdout) == "sock_accept 52\n", "ENOSYS: \(text(socket.stdout))")
    }

    @Test("a symlink the module makes cannot lead out of its preopens")
    func symlinkEscape() async throws {
        let absolute = try await run(["symlink", "/etc", "out", "out/passwd"])
        #expect(text(absolute.stdout).hasPrefix("through symlink Operation not permitted"), "\(text(absolute.stdout))")
        let relative = try await run(["symlink", "../../etc", "up", "up/passwd"])
        #expect(text(relative.stdout).hasPrefix("through symlink Operation not permitted"), "\(text(relative.stdout))")
    }

    @Test("a read-only grant can be read but not written, a read-write one written, and deny wins")
    func grants() async throws {
        let base = "/var/tmp/hangar-wasm-grants-\(uniqueTag())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        for directory in ["ro/secret", "rw/locked"] {
            try FileManager.default.createDirectory(atPath: "\(base)/\(directory)", withIntermediateDirectories: true)
        }
        try "readable\n".write(toFile: "\(base)/ro/file", atomically: true, encoding: .utf8)
        try "hidden\n".write(toFile: "\(base)/ro/secret/key", atomically: true, encoding: .utf8)
        for path in ["", "/ro", "/ro/secret", "/rw", "/rw/locked"] { chmod(base + path, 0o777) }
        chmod(base + "/ro/file", 0o666)
        func granted(_ arguments: [String]) async throws -> String {
            let outcome = try await run(arguments) {
                $0.grants.allowRead = ["\(base)/ro"]
                $0.grants.allowWrite = ["\(base)/rw"]
                $0.grants.denyRead = ["\(base)/ro/secret"]
                $0.grants.denyWrite = ["\(base)/rw/locked"]
            }
            #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
            return text(outcome.stdout)
        }
        #expect(try await granted(["read", "\(base)/ro/file"]) == "read readable\n")
        #expect(try await granted(["write", "\(base)/ro/file"]).hasPrefix("write DENIED"))
        #expect(try await granted(["write", "\(base)/ro/new"]).hasPrefix("write DENIED"))
        #expect(try await granted(["read", "\(base)/ro/secret/key"]).hasPrefix("read DENIED"))
        #expect(try await granted(["write", "\(base)/rw/new"]) == "write WROTE\n")
        #expect(try await granted(["write", "\(base)/rw/locked/file"]).hasPrefix("write DENIED"))
        #expect((try? String(contentsOfFile: "\(base)/rw/new", encoding: .utf8)) == "written\n")
        #expect((try? String(contentsOfFile: "\(base)/ro/file", encoding: .utf8)) == "readable\n")
        #expect(!FileManager.default.fileExists(atPath: "\(base)/rw/locked/file"))
    }

    @Test("a granted single file is refused: WASI preopens are folders")
    func grantedFile() async throws {
        let path = "/var/tmp/hangar-wasm-file-\(uniqueTag())"
        try "x\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let outcome = try await run(["read", path]) { $0.grants.allowRead = [path] }
        #expect(outcome.status == .error)
        #expect(outcome.message.contains("granted path \(path) is a file"), "\(outcome.message)")
    }

    @Test("argv[0] must name one of the job's files")
    func moduleNotSent() async throws {
        let outcome = try await run(["hello"]) { $0.argv[0] = "other.wasm" }
        #expect(outcome.status == .error)
        #expect(outcome.message.contains("not among the job's files"), "\(outcome.message)")
    }
}

/// Why the probe module is not there.
struct WasmTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
