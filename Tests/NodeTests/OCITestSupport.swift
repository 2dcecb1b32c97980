import Foundation
import Glibc
import HangarNode
import HangarShared

/// The two OCI runtimes under test, each with its own state and bundle directories below one
/// directory per test process, so that leftovers can be found and nothing touches the node's
/// real directories.
enum OCIKind: String, CaseIterable, CustomStringConvertible, Sendable {
    case runc
    case gvisor

    var description: String { rawValue }

    /// Shared by every test run, so runs do not pile up directories; entries are unique per job.
    static let root = "/tmp/hangar-oci-tests"

    var directories: OCIDirectories {
        OCIDirectories(state: "\(Self.root)/\(rawValue)/state", bundles: "\(Self.root)/\(rawValue)/bundles")
    }

    var runtime: any Runtime {
        switch self {
        case .runc: return ContainerRuntime(directories: directories)
        case .gvisor: return GVisorRuntime(directories: directories)
        }
    }

    /// A deadline generous enough for the runtime's start-up (gVisor on ptrace is slow to boot).
    var startAllowance: Duration {
        switch self {
        case .runc: return .seconds(3)
        case .gvisor: return .seconds(6)
        }
    }
}

/// Helpers of the OCI runtime tests; a namespace so they cannot clash with other test files.
enum OCITest {
    static func job(_ argv: [String], _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }) -> Hangar_V1_JobSpec {
        var spec = Hangar_V1_JobSpec()
        spec.argv = argv
        spec.limits.timeoutMs = 20_000
        configure(&spec)
        return spec
    }

    static func text(_ data: Data) -> String {
        String(decoding: data, as: UTF8.self)
    }

    /// A job id unique to this call, so its bundle, state and cgroup can be told from others'.
    static func jobID(_ name: String) -> String {
        "\(name)-\(UInt32.random(in: 100_000...999_999))"
    }

    /// Runs `spec` and returns the outcome with whatever the run left behind: bundle directories,
    /// runtime state and cgroups whose name carries the job id. Every test checks it is empty.
    static func run(
        _ kind: OCIKind,
        _ spec: Hangar_V1_JobSpec,
        name: String
    ) async -> (outcome: RunOutcome, residue: [String]) {
        let id = jobID(name)
        let outcome = await kind.runtime.run(spec, jobID: id)
        return (outcome, residue(of: id, kind: kind))
    }

    /// Files, directories and cgroups whose name contains `jobID`.
    static func residue(of jobID: String, kind: OCIKind) -> [String] {
        var found: [String] = []
        for directory in [kind.directories.state, kind.directories.bundles] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            found += entries.filter { $0.contains(jobID) }.map { directory + "/" + $0 }
        }
        let hierarchies = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []
        for hierarchy in hierarchies {
            let parent = "/sys/fs/cgroup/\(hierarchy)/\(kind.directories.cgroupParent)"
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
            found += entries.filter { $0.contains(jobID) }.map { parent + "/" + $0 }
        }
        return found
    }

    /// Pids of live host processes that have `argument` as one whole argv element, or (with
    /// `containing`) an argv element containing it.
    static func processes(withArgument argument: String, containing: Bool = false) -> [String] {
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
            return bytes.split(separator: 0).contains {
                let element = text(Data($0))
                return containing ? element.contains(argument) : element == argument
            }
        }
    }

    /// Whether the job `jobID` runs a process: under runc a host process with `argument` as a whole
    /// argv element; under gVisor (whose job processes live in the sandbox's own kernel) one whose
    /// command is `command` in what `runsc ps` lists for the job's container.
    static func runs(_ kind: OCIKind, jobID: String, argument: String, command: String) -> Bool {
        switch kind {
        case .runc:
            return !processes(withArgument: argument).isEmpty
        case .gvisor:
            let root = ["--root", kind.directories.state]
            let containers = output(of: "/usr/bin/runsc", root + ["list", "-quiet"]).split(separator: "\n")
            return containers.filter { $0.contains(jobID) }.contains { container in
                // `UID PID PPID C STIME TIME CMD`, one line per process after the header.
                let lines = output(of: "/usr/bin/runsc", root + ["ps", String(container)]).split(separator: "\n")
                return lines.dropFirst().contains { $0.split(separator: " ").last == Substring(command) }
            }
        }
    }

    /// The standard output of `executable` with `arguments`; empty if it could not run.
    static func output(of executable: String, _ arguments: [String]) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "" }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return text(data)
    }

    /// Waits up to `timeout` for no host process to carry any of `arguments`; returns those alive.
    static func survivors(
        of arguments: [String],
        containing: Bool = false,
        within timeout: Duration = .seconds(3)
    ) async -> [String] {
        let end = ContinuousClock.now + timeout
        while true {
            let alive = arguments.filter { !processes(withArgument: $0, containing: containing).isEmpty }
            if alive.isEmpty || ContinuousClock.now >= end { return alive }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }
}
