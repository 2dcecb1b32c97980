import Foundation
import HangarNode
import HangarShared

/// `hangar-bench wasm [--quick]`: the wasm runtime's engine against Wasmtime on the same modules,
/// in the same run. A C "hello" module and a C compute loop, compiled here with Debian's clang to
/// wasm32-wasi, run:
/// - by `hangar-wasm-worker` (WasmKit), cold: a new process per run, no sandbox;
/// - by Wasmtime (PyPI's `wasmtime`), cold: a new `python3` process per run (engine, compile,
///   instantiate, run), next to the same `python3` importing `wasmtime` and doing nothing else;
/// - by Wasmtime in one process: a new engine, module and store per run (no process start);
/// - with and without fuel metering, on each engine;
/// - by the whole `wasm` runtime (sandbox, cgroup, worker), against a `process` job of `/bin/true`.
/// Runs alternate between the variants so that the machine's drift hits all alike; medians.
enum WasmBench {
    static let source = #"""
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        int main(int argc, char **argv) {
            if (argc > 2 && !strcmp(argv[1], "work")) {
                unsigned long n = strtoul(argv[2], 0, 10);
                unsigned long long h = 1469598103934665603ULL;
                for (unsigned long i = 0; i < n; i++) h = (h ^ (i & 0xff)) * 1099511628211ULL;
                printf("%llu\n", h);
                return 0;
            }
            printf("hello\n");
            return 0;
        }
        """#

    /// Runs a module with Wasmtime: `python3 script module fuel runs args...`; prints one line of
    /// per-run seconds (a fresh engine, module and store each run; with `HANGAR_WASMTIME_WARM=1`
    /// the engine and the compiled module are made once, before the runs, and each run is a fresh
    /// store, instance and run).
    static let wasmtimeScript = #"""
        import os, sys, time, wasmtime
        module_path, fuel, runs, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
        warm = os.environ.get("HANGAR_WASMTIME_WARM") == "1"
        def compiled():
            config = wasmtime.Config()
            config.consume_fuel = fuel > 0
            engine = wasmtime.Engine(config)
            return engine, wasmtime.Module.from_file(engine, module_path)
        if warm:
            engine, module = compiled()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            if not warm:
                engine, module = compiled()
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            store = wasmtime.Store(engine)
            if fuel > 0:
                store.set_fuel(fuel)
            wasi = wasmtime.WasiConfig()
            wasi.argv = ["m.wasm"] + args
            wasi.stdout_file = "/dev/null"
            store.set_wasi(wasi)
            instance = linker.instantiate(store, module)
            try:
                instance.exports(store)["_start"](store)
            except wasmtime.ExitTrap as e:
                if e.code != 0:
                    raise
            times.append(time.perf_counter() - start)
        print(" ".join(repr(t) for t in times))
        """#

    static func run(quick: Bool) async throws -> String {
        let runs = quick ? 10 : 40
        let workRuns = quick ? 3 : 7
        let workCount = "20000000"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("hangar-bench-wasm-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let module = directory.appendingPathComponent("m.wasm").path
        try source.write(to: directory.appendingPathComponent("m.c"), atomically: true, encoding: .utf8)
        try wasmtimeScript.write(to: directory.appendingPathComponent("w.py"), atomically: true, encoding: .utf8)
        let script = directory.appendingPathComponent("w.py").path
        _ = try spawn("/usr/bin/clang", ["--target=wasm32-wasi", "-O2", directory.path + "/m.c", "-o", module])
        guard case .success(let worker) = WasmRuntime.findWorker(nil) else {
            throw BenchError("no hangar-wasm-worker next to hangar-bench")
        }
        let python = "/usr/bin/env"

        // Cold processes, interleaved.
        var workerCold: [Duration] = []
        var workerFuel: [Duration] = []
        var wasmtimeCold: [Duration] = []
        var pythonImport: [Duration] = []
        var wasmtimeInProcess: [Double] = []
        let fuel = "1000000000000"
        for _ in 0..<runs {
            workerCold.append(try spawn(worker, ["--", module, "m.wasm"]))
            workerFuel.append(try spawn(worker, ["--fuel", fuel, "--", module, "m.wasm"]))
            wasmtimeCold.append(try spawn(python, ["python3", script, module, "0", "1"]))
            pythonImport.append(try spawn(python, ["python3", "-c", "import wasmtime"]))
        }
        wasmtimeInProcess = try wasmtimeTimes(script: script, module: module, fuel: "0", runs: runs, arguments: [])
        let wasmtimeWarm = try wasmtimeTimes(
            script: script,
            module: module,
            fuel: "0",
            runs: runs,
            arguments: [],
            warm: true
        )

        // The compute loop: engine speed, with and without fuel, on both engines.
        var workerWork: [Duration] = []
        var workerWorkFuel: [Duration] = []
        var wasmtimeWork: [Double] = []
        var wasmtimeWorkFuel: [Double] = []
        for _ in 0..<workRuns {
            workerWork.append(try spawn(worker, ["--", module, "m.wasm", "work", workCount]))
            workerWorkFuel.append(try spawn(worker, ["--fuel", fuel, "--", module, "m.wasm", "work", workCount]))
        }
        wasmtimeWork = try wasmtimeTimes(
            script: script,
            module: module,
            fuel: "0",
            runs: workRuns,
            arguments: ["work", workCount]
        )
        wasmtimeWorkFuel = try wasmtimeTimes(
            script: script,
            module: module,
            fuel: fuel,
            runs: workRuns,
            arguments: ["work", workCount]
        )

        // The whole runtime: a sandboxed hello module against a sandboxed /bin/true.
        var file = Hangar_V1_FileIn()
        file.path = "m.wasm"
        file.content = try Data(contentsOf: URL(fileURLWithPath: module))
        var wasmSpec = Hangar_V1_JobSpec()
        wasmSpec.argv = ["m.wasm"]
        wasmSpec.files = [file]
        wasmSpec.limits.timeoutMs = 30_000
        var processSpec = Hangar_V1_JobSpec()
        processSpec.argv = ["/bin/true"]
        processSpec.limits.timeoutMs = 30_000
        let wasm = WasmRuntime(workerPath: worker)
        let process = ProcessRuntime()
        var wasmJobs: [Duration] = []
        var warmJobs: [Duration] = []
        var processJobs: [Duration] = []
        for _ in 0..<runs {
            // Warm: the same job handed to a worker waiting in a sandbox set up beforehand (what
            // `--pool wasm:host=MIN:MAX` keeps); the module comes on its control pipe. Only the
            // job is timed.
            let warm = try await wasm.prepareWarm(template: "host", profile: .defaults)
            guard warm.accepts(wasmSpec) else { throw BenchError("the warm wasm sandbox does not take the hello job") }
            let warmStart = ContinuousClock.now
            let warmOutcome = await warm.run(wasmSpec, jobID: "benchwarm\(UInt32.random(in: 0...UInt32.max))")
            warmJobs.append(warmStart.duration(to: .now))
            guard warmOutcome.status == .succeeded else {
                throw BenchError("warm wasm: \(warmOutcome.status) \(warmOutcome.message)")
            }
            let start = ContinuousClock.now
            let outcome = await wasm.run(wasmSpec, jobID: "benchwasm\(UInt32.random(in: 0...UInt32.max))")
            wasmJobs.append(start.duration(to: .now))
            guard outcome.status == .succeeded else { throw BenchError("wasm: \(outcome.status) \(outcome.message)") }
            let processStart = ContinuousClock.now
            let processOutcome = await process.run(processSpec, jobID: "benchproc\(UInt32.random(in: 0...UInt32.max))")
            processJobs.append(processStart.duration(to: .now))
            guard processOutcome.status == .succeeded else { throw BenchError("process: \(processOutcome.message)") }
        }

        func median(_ values: [Duration]) -> Double { seconds(values.sorted()[values.count / 2]) }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        func row(_ what: String, _ n: Int, _ value: Double, _ baseline: Double) -> String {
            "| \(what) | \(n) | \(String(format: "%.2f ms", value * 1000)) | \(String(format: "%.2f", value / baseline)) |"
        }
        let hello = median(workerCold)
        let work = median(workerWork)
        return """
            ## WASM (`swift run -c release hangar-bench wasm\(quick ? " --quick" : "")`)

            WasmKit 0.4.2 (`hangar-wasm-worker`) against Wasmtime \(try wasmtimeVersion()) (PyPI) on the same
            C modules (Debian clang 14, wasi-libc, `-O2`), same run, interleaved; medians.

            Hello (`printf("hello\\n")`), cold: one new process per run. Ratios to the worker.

            | what | n | median | ratio |
            |---|---|---|---|
            \(row("WasmKit worker, no fuel", runs, hello, hello))
            \(row("WasmKit worker, fuel on", runs, median(workerFuel), hello))
            \(row("Wasmtime, new python3 process (import, compile, run)", runs, median(wasmtimeCold), hello))
            \(row("python3 -c 'import wasmtime' alone", runs, median(pythonImport), hello))
            \(row("Wasmtime in one process: new engine + compile + run", runs, median(wasmtimeInProcess), hello))
            \(row("Wasmtime in one process, warm: compiled once, then a new store + instantiate + run", runs, median(wasmtimeWarm), hello))

            Compute loop (\(workCount) FNV-1a steps), whole process. Ratios to the worker without fuel.

            | what | n | median | ratio |
            |---|---|---|---|
            \(row("WasmKit worker, no fuel", workRuns, work, work))
            \(row("WasmKit worker, fuel on", workRuns, median(workerWorkFuel), work))
            \(row("Wasmtime in process, no fuel", workRuns, median(wasmtimeWork), work))
            \(row("Wasmtime in process, fuel on", workRuns, median(wasmtimeWorkFuel), work))

            The whole `wasm` runtime (bubblewrap, cgroup, worker, hello module) against a `process` job
            of `/bin/true`, both through their runtime's `run`; warm: the same wasm job handed to a
            worker waiting in a sandbox set up beforehand (its module on the worker's control pipe).

            | what | n | median | ratio |
            |---|---|---|---|
            \(row("process job, /bin/true", runs, median(processJobs), median(processJobs)))
            \(row("wasm job, hello module, cold", runs, median(wasmJobs), median(processJobs)))
            \(row("wasm job, hello module, warm (the job alone)", runs, median(warmJobs), median(processJobs)))
            \(row("for scale: Wasmtime in one process, warm (no sandbox, no new process)", runs, median(wasmtimeWarm), median(processJobs)))
            """
    }

    /// Runs `program` with `arguments` (after its own name), output discarded; its wall time.
    static func spawn(_ program: String, _ arguments: [String]) throws -> Duration {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        let start = ContinuousClock.now
        try process.run()
        process.waitUntilExit()
        let elapsed = start.duration(to: .now)
        guard process.terminationStatus == 0 else {
            throw BenchError("\(program) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
        }
        return elapsed
    }

    /// Wasmtime's own per-run times, from one `python3` process.
    static func wasmtimeTimes(
        script: String,
        module: String,
        fuel: String,
        runs: Int,
        arguments: [String],
        warm: Bool = false
    ) throws
        -> [Double]
    {
        let output = try capture(
            (warm ? ["HANGAR_WASMTIME_WARM=1"] : []) + ["python3", script, module, fuel, String(runs)] + arguments
        )
        let times = output.split(separator: " ").compactMap {
            Double($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard times.count == runs else { throw BenchError("wasmtime script printed \(output)") }
        return times
    }

    static func wasmtimeVersion() throws -> String {
        try capture(["python3", "-c", "from importlib.metadata import version; print(version('wasmtime'))"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func capture(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchError("\(arguments) exited \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
