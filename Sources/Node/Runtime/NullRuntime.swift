import Foundation
import HangarShared

/// A runtime that runs nothing: every job succeeds at once with exit code 0 and no output.
/// For control-plane tests and benchmarks, where the sandbox itself is not under test.
public struct NullRuntime: Runtime {
    /// Always "null".
    public let name = "null"

    /// The null runtime; it has no configuration.
    public init() {}

    /// Always available.
    public func probe() async -> RuntimeProbe {
        RuntimeProbe(available: true, detail: "null runtime (runs nothing)")
    }

    /// Returns `SUCCEEDED`, exit code 0, empty output, without looking at the spec.
    public func run(_ spec: Hangar_V1_JobSpec, jobID: String) async -> RunOutcome {
        RunOutcome(status: .succeeded)
    }
}
