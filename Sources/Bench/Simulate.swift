import Foundation
import HangarScheduler

/// `hangar-bench simulate [--seeds N] [--from S] [--jobs J]`: the scheduler core's deterministic
/// simulation (see `Simulator`) over N seeds starting at S (the test suite runs seeds 1-200). A
/// violation prints its seed, which `--from SEED --seeds 1` replays exactly.
enum Simulate {
    static func run(_ arguments: [String]) -> Bool {
        func value(_ flag: String, _ fallback: UInt64) -> UInt64 {
            guard let index = arguments.firstIndex(of: flag), index + 1 < arguments.count else { return fallback }
            return UInt64(arguments[index + 1]) ?? fallback
        }
        let first = value("--from", 1)
        let count = value("--seeds", 1000)
        var settings = Simulator.Settings()
        settings.jobs = Int(value("--jobs", UInt64(settings.jobs)))
        let started = ContinuousClock.now
        var steps = 0
        for seed in first..<first + count {
            var simulator = Simulator(seed: seed, settings: settings)
            do {
                steps += try simulator.run().steps
            } catch {
                print("simulate: FAILED \(error)")
                print("replay: hangar-bench simulate --from \(seed) --seeds 1 --jobs \(settings.jobs)")
                return false
            }
        }
        print(
            "simulate: \(count) seeds from \(first), \(steps) steps, every invariant held (\(started.duration(to: .now)))"
        )
        return true
    }
}
