import Foundation
import HangarNATS
import HangarShared

/// Step 3b of `hangar-bench sandboxes`: the code interpreter (issue 17) in a running sandbox —
/// the first cell (which starts the default python context), then `1+1` on the warm context,
/// interleaved with a baseline (the same cell sent to a local `python3` that `exec`s/`eval`s each
/// line it reads and answers on a pipe), and a matplotlib chart to PNG beside the time matplotlib
/// itself takes to render it in the baseline interpreter.
enum CodeBench {
    /// The chart cell: a line plot saved as a ~100 KB PNG by the kernel (its figures become results).
    static let chart = """
        import matplotlib.pyplot as plt, math
        fig = plt.figure(figsize=(12, 8), dpi=100)
        xs = [i / 50 for i in range(2000)]
        for k in range(1, 9):
            plt.plot(xs, [math.sin(k * x) * math.exp(-x / 20) for x in xs], label=f"k={k}")
        plt.legend(); plt.grid(True); plt.title("damped sines")
        """

    /// The baseline interpreter's program: each stdin line is a JSON cell; it runs the cell (the last
    /// line evaluated, as the kernel does), saves open figures to PNG like the kernel, and answers
    /// one line with the PNG bytes made.
    static let baseline = """
        import sys, json, io, os
        os.environ["MPLBACKEND"] = "Agg"
        ns = {}
        for line in sys.stdin:
            code = json.loads(line)
            lines = code.rstrip().split("\\n")
            exec("\\n".join(lines[:-1]), ns)
            try:
                value = eval(lines[-1], ns)
            except SyntaxError:
                exec(lines[-1], ns)
                value = None
            size = 0
            plt = sys.modules.get("matplotlib.pyplot")
            if plt is not None:
                for number in plt.get_fignums():
                    buffer = io.BytesIO()
                    plt.figure(number).savefig(buffer, format="png", bbox_inches="tight")
                    size += len(buffer.getvalue())
                plt.close("all")
            sys.stdout.write(json.dumps([repr(value), size]) + "\\n")
            sys.stdout.flush()
        """

    static func measure(_ cluster: BenchCluster, sandbox: Hangar_V1_SandboxInfo, runs: Int) async throws -> String {
        let local = try LocalPython(program: baseline)
        defer { local.stop() }
        var start = ContinuousClock.now
        let first = try await cluster.runCode(sandbox, "1+1")
        let firstTime = start.duration(to: .now)
        guard first.text == "2" else { throw BenchError("run_code 1+1 answered \(first.text)") }
        for _ in 0..<10 {
            _ = try await cluster.runCode(sandbox, "1+1")
            _ = try local.run("1+1")
        }
        var cellTimes: [Duration] = []
        var baselineTimes: [Duration] = []
        for index in 0..<runs {
            start = ContinuousClock.now
            do {
                _ = try await cluster.runCode(sandbox, "1+1")
            } catch {
                throw BenchError("step 3b (run_code 1+1), cell \(index + 1) of \(runs): \(error)")
            }
            cellTimes.append(start.duration(to: .now))
            start = ContinuousClock.now
            _ = try local.run("1+1")
            baselineTimes.append(start.duration(to: .now))
        }
        let cell = Percentiles(cellTimes)
        let bare = Percentiles(baselineTimes)

        // The chart: the cell through the sandbox (its PNG result arriving at the client) and the
        // same cell with the same savefig in the baseline interpreter.
        let charts = max(5, runs / 20)
        var chartTimes: [Duration] = []
        var renderTimes: [Duration] = []
        var pngBytes = 0
        _ = try await cluster.runCode(sandbox, chart)
        _ = try local.run(chart)
        for _ in 0..<charts {
            start = ContinuousClock.now
            let answer = try await cluster.runCode(sandbox, chart)
            chartTimes.append(start.duration(to: .now))
            guard answer.pngBytes > 0 else { throw BenchError("the chart cell gave no PNG: \(answer.text)") }
            pngBytes = answer.pngBytes
            start = ContinuousClock.now
            _ = try local.run(chart)
            renderTimes.append(start.duration(to: .now))
        }
        let chartCell = Percentiles(chartTimes)
        let render = Percentiles(renderTimes)
        func row(_ what: String, _ sample: Percentiles, goal: String = "", met: String = "") -> String {
            "| \(what) | \(sample.count) | \(ms(sample.p50)) | \(ms(sample.p90)) | \(ms(sample.p99)) | \(goal) | \(met) |\n"
        }
        func verdict(_ met: Bool) -> String { met ? "**met**" : "**not met**" }
        var table = """
            ### The code interpreter (step 3b, same sandbox)

            | what (at the client) | n | p50 | p90 | p99 | goal (issue 17) | |
            |---|---|---|---|---|---|---|
            | first cell `1+1` (starts the default python context: the kernel's start) | 1 | \(ms(firstTime)) | | | | |

            """
        table += row(
            "`run_code(\"1+1\")` on the warm context (`hangar.sbx.….code.run`, until `done`)",
            cell,
            goal: "p50 ≤ 5 ms",
            met: verdict(seconds(cell.p50) <= 0.005)
        )
        table += row("baseline: the same cell through a local `python3` on a pipe (exec/eval, one line each way)", bare)
        table += row(
            "a chart cell, its \(pngBytes / 1024) KiB PNG result at the client",
            chartCell,
            goal: "≤ 2× matplotlib's own rendering",
            met: verdict(seconds(chartCell.p50) <= 2 * seconds(render.p50))
        )
        table += row("baseline: the same cell and savefig to PNG in the local `python3`", render)
        return table
            + "\nrun_code / local exec (p50): \(ratio(cell.p50, bare.p50))×; chart / local render (p50): "
            + "\(ratio(chartCell.p50, render.p50))×.\n"
    }

    /// Step 3c: a create and its first cell `1+1`, at the client until the cell's `done`, served by
    /// the node's warm pool (a plain create: a ready sandbox whose python context runs) against the
    /// same done cold (a create with an `env`, which no warm sandbox serves: the sandbox and then its
    /// kernel start), interleaved; before each, the pool is given time to hold a ready sandbox, so
    /// that neither side measures the refill. Each sandbox is killed after (not timed).
    static func measureWarm(
        _ cluster: BenchCluster,
        runs: Int,
        template: String = "host"
    ) async throws -> (table: String, warmReady: Percentiles) {
        func waitForWarm() async throws {
            let deadline = ContinuousClock.now + .seconds(30)
            while (cluster.host.warmCounts?.ready ?? 0) == 0 {
                guard ContinuousClock.now < deadline else { throw BenchError("step 3c: no warm sandbox within 30 s") }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        let teacher = try await cluster.create(template: template)  // teaches the pool the plain create's limits
        try await cluster.kill(teacher.id)
        var warmTimes: [Duration] = []
        var warmReady: [Duration] = []
        var coldTimes: [Duration] = []
        var coldReady: [Duration] = []
        let servedBefore = cluster.host.warmCounts?.served ?? 0
        for index in 0..<runs {
            for warm in [true, false] {
                try await waitForWarm()
                let start = ContinuousClock.now
                let info: Hangar_V1_SandboxInfo
                do {
                    info =
                        try await warm
                        ? cluster.create(template: template)
                        : cluster.create(env: SandboxBench.cold, template: template)
                } catch {
                    throw BenchError("step 3c, \(warm ? "warm" : "cold") create \(index + 1) of \(runs): \(error)")
                }
                let ready = start.duration(to: .now)
                let answer = try await cluster.runCode(info, "1+1")
                guard answer.text == "2" else { throw BenchError("step 3c: 1+1 answered \(answer.text)") }
                let total = start.duration(to: .now)
                if warm {
                    warmTimes.append(total)
                    warmReady.append(ready)
                } else {
                    coldTimes.append(total)
                    coldReady.append(ready)
                }
                try await cluster.kill(info.id)
            }
        }
        let served = (cluster.host.warmCounts?.served ?? 0) - servedBefore
        guard served == UInt64(runs) else {
            throw BenchError("step 3c: the pool served \(served) of \(runs) plain creates")
        }
        func row(_ what: String, _ sample: Percentiles, goal: String = "", met: String = "") -> String {
            "| \(what) | \(sample.count) | \(ms(sample.p50)) | \(ms(sample.p90)) | \(ms(sample.p99)) | \(goal) | \(met) |\n"
        }
        let warm = Percentiles(warmTimes)
        let cold = Percentiles(coldTimes)
        var table = """

            ### Warm sandboxes (step 3c, a node with `--sandbox-pool 1`)\(template == "host" ? "" : ", template `\(template)`")

            | what (at the client) | n | p50 | p90 | p99 | goal | |
            |---|---|---|---|---|---|---|

            """
        table += row(
            "create + first `run_code(\"1+1\")`, served warm (the pool's sandbox, its python context running)",
            warm,
            goal: "p50 ≤ 60 ms (issue 17)",
            met: seconds(warm.p50) <= 0.060 ? "**met**" : "**not met**"
        )
        table += row(
            "… of which create → ready, warm",
            Percentiles(warmReady),
            goal: "p50 ≤ 25 ms (issue 16)",
            met: seconds(Percentiles(warmReady).p50) <= 0.025 ? "**met**" : "**not met**"
        )
        table += row("baseline: the same, cold (a create with an `env`: the sandbox, then its kernel, start)", cold)
        table += row("… of which create → ready, cold", Percentiles(coldReady))
        return (
            table + "\ncold / warm (p50): \(ratio(cold.p50, warm.p50))×; all \(runs) plain creates were served warm.\n",
            Percentiles(warmReady)
        )
    }
}

extension BenchCluster {
    /// What a cell answered: its main result's text/plain, and the size of its PNG results.
    struct CellAnswer {
        var text = ""
        var pngBytes = 0
    }

    /// Runs `code` in the sandbox's default python context; waits for `done` (at most 30 s).
    func runCode(_ info: Hangar_V1_SandboxInfo, _ code: String) async throws -> CellAnswer {
        let subject = Subjects.sandboxData(
            node: info.nodeID,
            tenant: SandboxBench.tenant,
            sandbox: info.id,
            verb: "code.run"
        )
        let payload = try Hangar_V1_CodeRunRequest.with { $0.code = code }.serializedData()
        let inbox = client.options.inboxPrefix + ".code." + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let events = try client.subscribe(inbox)
        defer { events.unsubscribe() }
        try client.publish(subject, payload: payload, replyTo: inbox)
        return try await withThrowingTaskGroup(of: CellAnswer.self) { group in
            group.addTask {
                var answer = CellAnswer()
                for await message in events {
                    let event = try Hangar_V1_CodeRunEvent(serializedBytes: message.payload)
                    switch event.kind {
                    case .result(let result):
                        if result.main { answer.text = result.data["text/plain"] ?? "" }
                        if let png = result.data["image/png"] {
                            answer.pngBytes += Data(base64Encoded: png)?.count ?? 0
                        }
                    case .error(let error): throw BenchError("the cell raised \(error.name): \(error.value)")
                    case .done(let done):
                        guard done.end == .codeCellOk else {
                            throw BenchError("the cell ended \(done.end): \(done.message)")
                        }
                        return answer
                    case .failure(let failure): throw BenchError("run_code: \(failure.message)")
                    case .agentError(let error): throw BenchError("run_code: the sandbox refused: \(error.message)")
                    case .stream, nil: continue
                    }
                }
                throw BenchError("run_code: the events ended without done")
            }
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                throw BenchError("run_code in \(info.id): no done within 30 s")
            }
            let first = try await group.next() ?? CellAnswer()
            group.cancelAll()
            return first
        }
    }
}

/// A local `python3` running `program`, talked to one JSON line each way over pipes.
final class LocalPython {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffer = Data()

    init(program: String) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-u", "-c", program]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
    }

    /// Sends one cell and returns its answer line.
    func run(_ code: String) throws -> String {
        var line = try JSONEncoder().encode(code)
        line.append(0x0A)
        try input.fileHandleForWriting.write(contentsOf: line)
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let answer = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer = Data(buffer[buffer.index(after: newline)...])
                return answer
            }
            let chunk = output.fileHandleForReading.availableData
            guard !chunk.isEmpty else { throw BenchError("the local python3 ended") }
            buffer.append(chunk)
        }
    }

    func stop() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}
