import Foundation
import HangarTestSupport
import Testing

/// Issue 14, items 11 and 14: `hangar dev` brings every runtime the machine can run (microvm with the
/// guest agent found next to `hangar`), `node status` says why one is missing; the CI scripts
/// install what install-deps installs and time their phases.
@Suite("dev runtimes and scripts", .serialized)
struct DevRuntimesAndScriptsTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// `node status` (table) until its stderr contains `text`, at most `timeout`; the last output.
    private func nodeStatus(
        _ cluster: CLICluster,
        until done: (CLIOutput) -> Bool,
        timeout: Duration = .seconds(90)
    ) async throws -> CLIOutput {
        let deadline = ContinuousClock.now + timeout
        var output = try await cluster.hangar(["node", "status"])
        while !done(output), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))
            output = try await cluster.hangar(["node", "status"])
        }
        return output
    }

    @Test("hangar dev offers microvm by default and finds the guest agent next to its own executable")
    func devOffersMicroVM() async throws {
        // hangar dev with its default runtimes, as `scripts/dev` starts it: microvm is offered, and
        // its probe finds the agent (available, or unavailable for a reason of this machine's).
        try await withCLICluster(nodes: 1, runtimes: nil) { cluster in
            // A runtime is listed once its probe ends; microvm's boots a trial VM (seconds).
            let deadline = ContinuousClock.now + .seconds(90)
            var runtimes: [[String: Any]] = []
            while ContinuousClock.now < deadline {
                let json = try await cluster.hangar(["node", "status", "dev-node-1", "-o", "json"])
                #expect(json.status == 0, "\(json.stderr)")
                let heartbeat = try json.json()["lastHeartbeat"] as? [String: Any]
                runtimes = heartbeat?["runtimes"] as? [[String: Any]] ?? []
                if runtimes.contains(where: { $0["name"] as? String == "microvm" }) { break }
                try await Task.sleep(for: .milliseconds(250))
            }
            let names = runtimes.compactMap { $0["name"] as? String }
            #expect(Set(names) == ["process", "container", "gvisor", "microvm", "null"], "\(runtimes)")
            let microvm = runtimes.first { $0["name"] as? String == "microvm" }
            let detail = microvm?["detail"] as? String ?? ""
            #expect(!detail.contains("guest agent is missing"), "\(runtimes)")
            if microvm?["available"] as? Bool != true {
                // This machine cannot run it (no KVM, no kernel…): node status says why.
                let status = try await cluster.hangar(["node", "status"])
                #expect(status.stderr.contains("microvm unavailable on dev-node-1: "), "\(status.stderr)")
            }
        }
    }

    @Test("node status says why a runtime is unavailable: the guest agent missing next to hangar")
    func missingRuntimeReason() async throws {
        // This build's hangar alone in a folder: no hangar-guest-agent next to it.
        let folder = try makeTemporaryDirectory("hangar-cli-lone")
        defer { try? FileManager.default.removeItem(at: folder) }
        let lone = folder.appendingPathComponent("hangar")
        do {
            try FileManager.default.linkItem(at: try hangarBinary(), to: lone)
        } catch {
            try FileManager.default.copyItem(at: try hangarBinary(), to: lone)
        }
        try await withCLICluster(nodes: 1, runtimes: "null,microvm", binary: lone) { cluster in
            let status = try await nodeStatus(cluster) { $0.stderr.contains("microvm unavailable on dev-node-1") }
            #expect(status.status == 0, "\(status.stderr)")
            #expect(status.stdout.contains("microvm(unavailable)"), "\(status.stdout)")
            #expect(
                status.stderr.contains("microvm unavailable on dev-node-1: ")
                    && status.stderr.contains("guest agent is missing")
                    && status.stderr.contains(folder.path),
                "\(status.stderr)"
            )
        }
    }

    @Test("scripts/dev builds the guest agent; .ci/run installs with scripts/install-deps and runs scripts/test")
    func scripts() throws {
        let dev = try String(contentsOf: Self.packageRoot.appendingPathComponent("scripts/dev"), encoding: .utf8)
        #expect(dev.contains("swift build --product hangar-guest-agent"))
        let ci = try String(contentsOf: Self.packageRoot.appendingPathComponent(".ci/run"), encoding: .utf8)
        let commands = ci.split(separator: "\n").filter { !$0.hasPrefix("#") }
        #expect(commands.contains("scripts/install-deps"), "\(ci)")
        #expect(commands.contains("bash scripts/test"), "\(ci)")
        #expect(!ci.contains("apt-get install"), ".ci/run keeps its own package list: \(ci)")
    }

    @Test("scripts/lib/phases.sh prints each phase's time and the total, also when a phase fails")
    func phaseTimes() async throws {
        let script = """
            source scripts/lib/phases.sh
            phase "first step"
            true
            phase "second step"
            exit 3
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", script]
        process.currentDirectoryURL = Self.packageRoot
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 3)
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.contains { $0.hasSuffix("s  first step") && $0.first?.isNumber == true }, "\(text)")
        #expect(lines.contains { $0.hasSuffix("s  second step") }, "\(text)")
        #expect(lines.contains { $0.hasSuffix("s  total") }, "\(text)")
        #expect(text.contains("failed, exit 3"), "\(text)")
    }
}
