import Foundation
import Glibc
import HangarNode
import HangarShared

// Helpers shared by the node tests: real processes, nothing mocked.

func job(_ argv: [String], _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }) -> Hangar_V1_JobSpec {
    var spec = Hangar_V1_JobSpec()
    spec.runtime = "process"
    spec.argv = argv
    configure(&spec)
    return spec
}

func text(_ data: Data) -> String {
    String(decoding: data, as: UTF8.self)
}

func uniqueTag() -> String {
    String(Int.random(in: 100_000...999_999))
}

/// Pids of live host processes that have `argument` as one whole argv element.
func processes(withArgument argument: String) -> [String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.filter { $0.allSatisfy(\.isNumber) }.filter { pid in
        let fd = open("/proc/\(pid)/cmdline", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &chunk, chunk.count)
            guard count > 0 else { break }
            bytes += chunk[0..<count]
        }
        return bytes.split(separator: 0).contains { text(Data($0)) == argument }
    }
}

/// Polls `condition` every 50 ms for at most `timeout`; true when it held. A caller that needs the
/// condition fails the test when this returns false (a wait that falls through proves nothing).
func eventually(within timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return condition()
}

/// Waits up to `timeout` for no process to carry any of `arguments`; returns those still alive.
func survivors(of arguments: [String], within timeout: Duration = .seconds(2)) async -> [String] {
    let end = ContinuousClock.now + timeout
    while true {
        let alive = arguments.filter { !processes(withArgument: $0).isEmpty }
        if alive.isEmpty || ContinuousClock.now >= end { return alive }
        try? await Task.sleep(for: .milliseconds(50))
    }
}

/// Job cgroup directories whose name contains `tag`, in every parent the node uses. Job cgroups are
/// named after the job id, so a tag in the job id finds that job's cgroups.
func leftoverCgroups(containing tag: String) -> [String] {
    guard case .success(let host) = NodeResources.standard.cgroups else { return [] }
    return host.parentDirectories.flatMap { parent in
        ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).filter { $0.contains(tag) }.map {
            parent + "/" + $0
        }
    }
}

/// This process's cgroups for the job `jobID` (named `<job id>.<node pid>.<n>`) that still exist.
func leftoverCgroups(ofJob jobID: String) -> [String] {
    leftoverCgroups(containing: "\(jobID).\(getpid()).").filter {
        ($0 as NSString).lastPathComponent.hasPrefix("\(jobID).\(getpid()).")
    }
}

/// The cells of `codes` run one after another in `target`'s code contexts (`language`'s default
/// context), each bounded by `limit`: every cell's events.
func runCells(
    _ target: SandboxDataTarget,
    _ codes: [String],
    language: String = "",
    within limit: Duration = .seconds(60)
) async throws -> [[Hangar_V1_CodeRunEvent]] {
    var cells: [[Hangar_V1_CodeRunEvent]] = []
    for code in codes {
        let request = Hangar_V1_CodeRunRequest.with {
            $0.code = code
            $0.language = language
        }
        cells.append(
            try await within(limit) {
                var events: [Hangar_V1_CodeRunEvent] = []
                for await event in await target.code.run(request) { events.append(event) }
                return events
            }
        )
    }
    return cells
}

/// What a cell's stream events printed, joined.
func printed(_ events: [Hangar_V1_CodeRunEvent]) -> String {
    events.compactMap { event -> String? in
        if case .stream(let stream) = event.kind { return stream.text }
        return nil
    }.joined()
}

/// The `text/plain` of a cell's main results.
func mainValues(_ events: [Hangar_V1_CodeRunEvent]) -> [String] {
    events.compactMap { event -> String? in
        if case .result(let result) = event.kind, result.main { return result.data["text/plain"] }
        return nil
    }
}
