import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Code cells that attack their own sandbox (issue 17's "bad input and faults"), in real process and
/// container sandboxes through the node's host: each ends with a clear status on that cell, the
/// sandbox's limits hold, and another context of the same sandbox keeps working.
@Suite("Hostile code cells, real sandboxes", .enabled(if: geteuid() == 0), .serialized)
struct HostileCellsTests {
    static let runtimes = ["process"] + (access("/usr/sbin/runc", X_OK) == 0 ? ["container"] : [])

    /// One cell in the context `context`: its events, at most `limit` later.
    static func cell(
        _ target: SandboxDataTarget,
        _ code: String,
        context: String,
        timeoutMs: UInt32 = 0,
        within limit: Duration = .seconds(60)
    ) async throws -> [Hangar_V1_CodeRunEvent] {
        let request = Hangar_V1_CodeRunRequest.with {
            $0.code = code
            $0.contextID = context
            $0.timeoutMs = timeoutMs
        }
        return try await within(limit) {
            var events: [Hangar_V1_CodeRunEvent] = []
            for await event in await target.code.run(request) { events.append(event) }
            return events
        }
    }

    static func done(_ events: [Hangar_V1_CodeRunEvent]) -> Hangar_V1_CodeDone? {
        events.lazy.compactMap { event -> Hangar_V1_CodeDone? in
            if case .done(let done) = event.kind { return done }
            return nil
        }.first
    }

    static func errorName(_ events: [Hangar_V1_CodeRunEvent]) -> String? {
        events.lazy.compactMap { event -> String? in
            if case .error(let error) = event.kind { return error.name }
            return nil
        }.first
    }

    @Test(
        "a memory hog, a fork bomb, closed stdout and stderr, garbage on the kernel's own channel and a look at the agent's: each cell ends clearly, another context lives on",
        arguments: runtimes
    )
    func hostileCells(runtime: String) async throws {
        let host = ProcessSandboxHost(agentPath: try #require(ProcessSandbox.locateAgent()))
        var start = Hangar_V1_SandboxStart()
        start.sandboxID = "hostile-cells-\(uniqueTag())"
        start.tenant = "acme"
        start.runtime = runtime
        start.limits.memoryBytes = 256 << 20
        start.limits.pids = 96
        try await host.start(start) { _ in Issue.record("the sandbox died") }
        do {
            let target = try #require(host.dataTarget(start.sandboxID, tenant: "acme"))
            let victim = try await target.code.create(.with { $0.language = "python" }).id
            let bystander = try await target.code.create(.with { $0.language = "python" }).id
            _ = try await Self.cell(target, "kept = 'bystander state'", context: bystander)

            // Memory past the sandbox's limit: the kernel is killed, and says so.
            let hog = try await Self.cell(target, "hog = b'x' * (1 << 30)", context: victim)
            #expect(Self.done(hog)?.end == .codeCellInterpreterDied, "\(hog)")
            #expect(mainValues(try await Self.cell(target, "kept", context: bystander)) == ["'bystander state'"])
            _ = try await target.code.restart(victim)

            // A fork bomb stops at the pids limit (EAGAIN); the cell cleans up and goes on.
            let bomb = try await Self.cell(
                target,
                """
                import os, time
                children = []
                try:
                    while True:
                        pid = os.fork()
                        if pid == 0:
                            time.sleep(60)
                            os._exit(0)
                        children.append(pid)
                except OSError as error:
                    print('stopped', len(children) < 96, error.errno)
                for pid in children:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                len(children) > 10
                """,
                context: victim
            )
            #expect(printed(bomb) == "stopped True 11\n" && mainValues(bomb) == ["True"], "\(bomb)")
            #expect(Self.done(bomb)?.end == .codeCellOk, "\(bomb)")

            // Closing its stdout and stderr loses the cell's prints, not the context.
            let closed = try await Self.cell(
                target,
                "import os\nos.close(1)\nos.close(2)\n'still here'",
                context: victim
            )
            #expect(Self.done(closed) != nil, "\(closed)")
            let after = try await Self.cell(target, "print('next cell')\n1 + 1", context: victim)
            #expect(Self.done(after)?.end == .codeCellOk, "\(after)")
            #expect(mainValues(after) == ["2"], "\(after)")

            // Garbage written to every descriptor the kernel has, its own channel to the node among
            // them: the node does not take it for frames; the cell ends with a clear status (the
            // context may be ended by it).
            let garbage = try await Self.cell(
                target,
                """
                import os
                for name in os.listdir('/proc/self/fd'):
                    if int(name) > 2:
                        try:
                            os.write(int(name), b'\\x00not json {\\n' + b'z' * 300000 + b'\\n')
                        except OSError:
                            pass
                'written'
                """,
                context: victim
            )
            let garbageEnd = try #require(Self.done(garbage), "\(garbage)")
            #expect(
                [.codeCellOk, .codeCellInterpreterDied].contains(garbageEnd.end),
                "\(garbage)"
            )
            // The agent, pid 1, is out of reach: none of its descriptors (its channel to the node
            // among them) can be opened.
            let agent = try await Self.cell(
                target,
                """
                import os
                names = os.listdir('/proc/1/fd')
                denied = 0
                for name in names:
                    try:
                        os.close(os.open('/proc/1/fd/' + name, os.O_RDWR))
                    except PermissionError:
                        denied += 1
                (len(names) > 2, denied == len(names))
                """,
                context: bystander
            )
            #expect(mainValues(agent) == ["(True, True)"], "\(agent)")
            #expect(mainValues(try await Self.cell(target, "kept", context: bystander)) == ["'bystander state'"])
        } catch {
            await host.kill(start.sandboxID, reason: "test failed")
            throw error
        }
        await host.kill(start.sandboxID, reason: "test over")
        #expect(host.sandboxIDs.isEmpty)
    }
}
