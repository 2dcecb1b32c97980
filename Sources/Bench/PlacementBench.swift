import Foundation
import HangarScheduler

/// Placement core alone: decisions per second and per-decision latency at 100, 1,000 and 10,000
/// simulated nodes, with about half of the nodes' slots reserved (so filtering has work to do).
enum PlacementBench {
    static func run(quick: Bool) -> String {
        var rows: [String] = []
        var medians: [Int: Double] = [:]
        for count in [100, 1000, 10_000] {
            var generator = SystemRandomNumberGenerator()
            let nodes = (0..<count).map { index -> NodeView in
                var view = NodeView(id: "node-\(index)")
                view.slots = 16
                view.cpuMillis = 32_000
                view.memoryBytes = 64 << 30
                view.runtimes = index % 10 == 0 ? ["null"] : ["process", "null"]
                view.templates = ["host"]
                view.labels = ["zone": "z\(index % 3)"]
                view.slotsReserved = Int.random(in: 0...16, using: &generator)
                view.cpuReserved = UInt64(view.slotsReserved) * 1000
                view.memoryReserved = UInt64(view.slotsReserved) << 30
                return view
            }
            let decisions = quick ? 20_000 : 200_000
            var samples: [Double] = []
            samples.reserveCapacity(decisions)
            var placed = 0
            let clock = ContinuousClock()
            let started = clock.now
            for index in 0..<decisions {
                let request = PlacementRequest(
                    runtime: "process",
                    labels: index % 4 == 0 ? ["zone": "z1"] : [:],
                    cpuMillis: 1000,
                    memoryBytes: 1 << 30,
                    tieBreak: UInt64(index) &* 0x9E37_79B9_7F4A_7C15
                )
                let start = clock.now
                let outcome = PlacementCore.place(request, nodes: nodes)
                samples.append(seconds(start.duration(to: clock.now)) * 1e6)
                if case .ranked = outcome { placed += 1 }
            }
            let total = seconds(started.duration(to: clock.now))
            samples.sort()
            let median = samples[samples.count / 2]
            medians[count] = median
            rows.append(
                "| \(count) | \(Int(Double(decisions) / total)) | \(String(format: "%.2f", median)) µs | "
                    + "\(String(format: "%.2f", samples[Int(Double(samples.count) * 0.99)])) µs | "
                    + "\(String(format: "%.1f", median / medians[100]!)) × | \(placed * 100 / decisions)% |"
            )
        }
        return """
            ## Placement core (`swift run -c release hangar-bench placement\(quick ? " --quick" : "")`)

            `PlacementCore.place` alone (no I/O): about half of every node's slots reserved, 10% of nodes
            without the runtime, a quarter of the jobs constrained to one of three zones. Baseline: the
            100-node case of the same run.

            | nodes | decisions/s | median | p99 | median vs 100 nodes | placed |
            |---|---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            """
    }
}
