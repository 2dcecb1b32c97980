import Foundation
import Glibc
import HangarShared
import Logging
import Testing

@testable import HangarNode

// Issue 14, item 10: a program that cannot start is reported the same way by every runtime, warm
// or cold: exit 127 (not found) or 126 (not executable) with Hangar's message.
private typealias H = Hostile

@Suite("Exec failures: 127 and 126 with Hangar's message in every runtime", .serialized)
struct ExecFailureTests {
    @Test(
        "a program missing from the sandbox exits 127, one not executable 126, saying so",
        arguments: HostileRuntime.allCases
    )
    func execFailures(kind: HostileRuntime) async {
        let tag = H.tag()
        for (program, failure) in [
            ("no-such-program-\(tag)", ExecFailure.notFound), ("/usr/bin/no-such-\(tag)", .notFound),
            ("/etc/ld.so.cache", .notExecutable),
        ] {
            let run = await H.run(kind, "exec", H.spec([program, "hostile-\(tag)"]), tag: tag)
            let line = failure.message(program)
            #expect(run.outcome.status == .failed, "\(program): \(run.summary)")
            #expect(run.outcome.exitCode == failure.exitCode, "\(program): \(run.summary)")
            #expect(run.outcome.message == line, "\(program): \(run.summary)")
            #expect(run.stderr == line + "\n", "\(program): \(run.summary)")
        }
    }

    @Test("a warm sandbox reports a program it cannot start as a fresh one does", arguments: ["process", "container"])
    func warmExecFailures(runtime name: String) async throws {
        let runtime: any Runtime = name == "process" ? ProcessRuntime() : OCIKind.runc.runtime
        let pools = WarmPools(
            specs: [WarmPoolSpec(runtime: name, template: "host", min: 1, max: 1)],
            runtimes: [runtime],
            logger: Logger(label: "test")
        )
        let running = Task { await pools.run(available: [name]) }
        for (program, failure) in [
            ("no-such-\(uniqueTag())", ExecFailure.notFound), ("/etc/ld.so.cache", .notExecutable),
        ] {
            try #require(
                await eventually(within: .seconds(30)) { pools.status().first?.ready == 1 },
                "\(pools.status())"
            )
            let spec = job([program]) { $0.runtime = name }
            let sandbox = try #require(pools.take(spec))
            let outcome = await sandbox.run(spec, jobID: "warm-exec-\(uniqueTag())")
            #expect(outcome.status == .failed, "\(outcome.message) \(text(outcome.stderr))")
            #expect(outcome.exitCode == failure.exitCode, "\(outcome.message) \(text(outcome.stderr))")
            #expect(outcome.message == failure.message(program))
            #expect(text(outcome.stderr) == failure.message(program) + "\n")
        }
        running.cancel()
        await running.value
    }
}
