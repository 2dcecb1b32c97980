import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Real bubblewrap sandboxes with the real `hangar-sandbox-agent` (built next to the test binary).
@Suite("Stateful process sandbox and its agent, real bubblewrap", .enabled(if: geteuid() == 0))
struct SandboxAgentTests {
    /// A sandbox for one test, killed (and checked to be gone) at the end.
    static func withSandbox(
        limits: SandboxLimits = SandboxLimits(),
        _ body: (ProcessSandbox) async throws -> Void
    ) async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ProcessSandbox.start(id: "test-\(uniqueTag())", limits: limits, agentPath: agentPath)
        do {
            try await body(sandbox)
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
    }

    @Test("echo gives its output and exit 0; a failing command its exit code")
    func echo() async throws {
        try await Self.withSandbox { sandbox in
            let hello = try await run(sandbox, ["echo", "hello"])
            #expect(text(hello.stdout) == "hello\n")
            #expect(hello.exited?.exitCode == 0)
            #expect(hello.exited?.signal == 0)
            let failing = try await run(sandbox, ["sh", "-c", "echo oops >&2; exit 7"])
            #expect(failing.exited?.exitCode == 7)
            #expect(text(failing.stderr) == "oops\n")
            let identity = try await run(sandbox, ["sh", "-c", "id -u; pwd; echo $HOME"])
            #expect(text(identity.stdout) == "1000\n/home/user\n/home/user\n")
            let root = try await run(sandbox, ["id", "-u"]) { $0.user = "root" }
            #expect(text(root.stdout) == "0\n")
            await #expect(throws: SandboxAgentError.self) {
                try await run(sandbox, ["/no/such/program"])
            }
            // Every command runs under the node's seccomp filter, without capabilities.
            for user in ["user", "root"] {
                let status = try await run(sandbox, ["grep", "-E", "^(Seccomp|CapEff|CapBnd):", "/proc/self/status"]) {
                    $0.user = user
                }
                #expect(
                    text(status.stdout) == "CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nSeccomp:\t2\n"
                        || user == "user" && text(status.stdout).hasPrefix("CapEff:\t0000000000000000\n")
                            && text(status.stdout).hasSuffix("Seccomp:\t2\n"),
                    "as \(user): \(text(status.stdout))"
                )
            }
            // No network but loopback.
            let links = try await run(sandbox, ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"])
            #expect(text(links.stdout) == "lo\n")
        }
    }

    @Test("the sandbox's cgroup has its memory and pids limits")
    func cgroupLimits() async throws {
        var limits = SandboxLimits()
        limits.memoryBytes = 96 << 20
        limits.pids = 48
        try await Self.withSandbox(limits: limits) { sandbox in
            let files = sandbox.cgroupDirectories.flatMap { directory in
                ["memory.limit_in_bytes", "memory.max", "pids.max"].map { directory + "/" + $0 }
            }
            let values = files.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }.map {
                $0.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            #expect(values.contains(String(96 << 20)))
            #expect(values.contains("48"))
            try await sandbox.agent.ping()
        }
    }

    @Test("1 MiB of output comes in chunks whose offsets follow on from each other")
    func offsets() async throws {
        try await Self.withSandbox { sandbox in
            let result = try await run(sandbox, ["head", "-c", "1048576", "/dev/zero"])
            #expect(result.exited?.exitCode == 0)
            #expect(result.stdout.count == 1 << 20)
            #expect(result.contiguous)
            #expect(result.chunks > 1)
            #expect(result.largestChunk <= 64 << 10)
        }
    }

    @Test("stdin reaches cat, and closing it ends cat")
    func stdin() async throws {
        try await Self.withSandbox { sandbox in
            let result = try await run(sandbox, ["cat"], { $0.stdin = true }) { pid in
                try await sandbox.agent.stdin(pid: pid, Data("one ".utf8))
                try await sandbox.agent.stdin(pid: pid, Data("two".utf8), close: true)
            }
            #expect(text(result.stdout) == "one two")
            #expect(result.exited?.exitCode == 0)
        }
    }

    @Test("a background sleep is listed, and a signal kills it")
    func background() async throws {
        try await Self.withSandbox { sandbox in
            let result = try await run(sandbox, ["sleep", "30"], { $0.background = true }) { pid in
                let listed = try await sandbox.agent.listProcesses()
                #expect(listed.contains { $0.pid == pid && $0.argv == ["sleep", "30"] && $0.background })
                try await sandbox.agent.signal(pid: pid, SIGKILL)
            }
            #expect(result.exited?.signal == SIGKILL)
            #expect(result.exited?.timedOut == false)
            #expect(try await sandbox.agent.listProcesses().isEmpty)
        }
    }

    @Test(
        "a Ping from a new node makes the agent forget the requests before it: a command's output goes no more to its old request, and the command can be taken over"
    )
    func newNodePing() async throws {
        try await Self.withSandbox { sandbox in
            var exec = Hangar_V1_AgentExec()
            exec.argv = ["cat"]
            exec.stdin = true
            let old = sandbox.agent.exec(exec)
            let oldStream = Task {
                var collector = Collector()
                do { for try await event in old { try collector.take(event) } } catch {}
                return collector
            }
            // The first line is echoed to the old request.
            let pid = try await within(.seconds(10)) { () async throws -> UInt32 in
                while true {
                    if let found = try await sandbox.agent.listProcesses().first(where: { $0.argv == ["cat"] }) {
                        return found.pid
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
            try await sandbox.agent.stdin(pid: pid, Data("before\n".utf8))
            let answer = try await sandbox.agent.request(.ping(.with { $0.newNode = true }))
            guard case .pong = answer.kind else {
                Issue.record("\(answer) to a new node's ping")
                return
            }
            // Unclaimed now, so it can be taken over; what it echoes next goes to the new request.
            var taken = sandbox.agent.reattach(pid: pid).makeAsyncIterator()
            guard case .started? = try await taken.next()?.kind else {
                Issue.record("cat could not be taken over after the new node's ping")
                return
            }
            try await sandbox.agent.stdin(pid: pid, Data("after\n".utf8), close: true)
            var resumed = Collector()
            while resumed.exited == nil, let event = try await taken.next() { try resumed.take(event) }
            #expect(text(resumed.stdout).hasSuffix("after\n") && resumed.exited?.exitCode == 0, "\(resumed)")
            sandbox.agent.close()  // ends the old request's stream
            let before = await oldStream.value
            #expect(!text(before.stdout).contains("after"), "the old request got \(text(before.stdout))")
        }
    }

    @Test("a command is killed at its timeout")
    func timeout() async throws {
        try await Self.withSandbox { sandbox in
            let clock = ContinuousClock()
            let began = clock.now
            let result = try await run(sandbox, ["sleep", "30"]) { $0.timeoutMs = 300 }
            #expect(result.exited?.timedOut == true)
            #expect(result.exited?.signal == SIGKILL)
            #expect(clock.now - began < .seconds(5))
        }
    }

    @Test("files: write then read back, 1 MiB round trip, and state across commands")
    func files() async throws {
        try await Self.withSandbox { sandbox in
            let agent = sandbox.agent
            try await agent.writeFile("/home/user/note.txt", data: Data("hello\n".utf8))
            #expect(try await agent.readWholeFile("/home/user/note.txt") == Data("hello\n".utf8))
            // Relative paths are the user's home; a command sees the file, and what it writes the agent reads.
            let cat = try await run(sandbox, ["sh", "-c", "cat note.txt; echo more >> note.txt; ls -n note.txt"])
            #expect(text(cat.stdout).hasPrefix("hello\n-rw-r--r-- 1 1000 1000 "))
            #expect(try await agent.readWholeFile("note.txt") == Data("hello\nmore\n".utf8))

            let big = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
            try await agent.writeFile("/tmp/big.bin", data: big, mode: 0o600)
            let chunk = try await agent.readFile("/tmp/big.bin")
            #expect(chunk.data == big)
            #expect(chunk.eof)
            #expect(chunk.size == UInt64(big.count))
            #expect(try await agent.stat("/tmp/big.bin").mode == 0o600)
            try await agent.writeFile("/tmp/big.bin", data: Data("tail".utf8), append: true)
            #expect(try await agent.readFile("/tmp/big.bin", offset: UInt64(big.count)).data == Data("tail".utf8))

            // State persists across commands; the working directory does not.
            let first = try await run(sandbox, ["sh", "-c", "cd /tmp && echo kept > state && pwd"])
            #expect(text(first.stdout) == "/tmp\n")
            let second = try await run(sandbox, ["sh", "-c", "pwd; cat /tmp/state"])
            #expect(text(second.stdout) == "/home/user\nkept\n")
        }
    }

    @Test("make dir, list, stat, rename and remove")
    func directories() async throws {
        try await Self.withSandbox { sandbox in
            let agent = sandbox.agent
            try await agent.makeDirectory("/home/user/d/e", parents: true)
            try await agent.writeFile("/home/user/d/e/f", data: Data("123".utf8))
            try await agent.makeDirectory("/home/user/d/e", parents: true)
            await #expect(
                throws: SandboxAgentError.agent(code: .exists, message: "make directory /home/user/d/e: File exists")
            ) {
                try await agent.makeDirectory("/home/user/d/e")
            }
            let listed = try await agent.listDirectory("/home/user/d", depth: 2)
            #expect(Set(listed.map(\.path)) == ["/home/user/d/e", "/home/user/d/e/f"])
            #expect(listed.first(where: { $0.name == "e" })?.type == .directory)
            let file = try await agent.stat("/home/user/d/e/f")
            #expect(file.type == .file)
            #expect(file.size == 3)
            #expect(file.mtimeMs > 0)
            try await agent.rename("/home/user/d/e/f", to: "/home/user/d/g")
            await #expect(throws: SandboxAgentError.self) { try await agent.stat("/home/user/d/e/f") }
            #expect(try await agent.readWholeFile("/home/user/d/g") == Data("123".utf8))
            do {
                try await agent.remove("/home/user/d")
                Issue.record("a non-empty directory was removed without recursive")
            } catch SandboxAgentError.agent(let code, _) {
                #expect(code == .exists)
            }
            await #expect(throws: SandboxAgentError.self) { try await agent.readFile("/home/user/d") }
            await #expect(throws: SandboxAgentError.self) { try await agent.listDirectory("/home/user/d/g") }
            try await agent.remove("/home/user/d", recursive: true)
            do {
                _ = try await agent.stat("/home/user/d")
                Issue.record("the directory is still there")
            } catch SandboxAgentError.agent(let code, _) {
                #expect(code == .notFound)
            }
        }
    }

    @Test("the writable layer is bounded: writes past the disk limit fail, and the agent keeps serving")
    func diskLimit() async throws {
        var limits = SandboxLimits()
        limits.diskBytes = 1 << 20
        try await Self.withSandbox(limits: limits) { sandbox in
            let agent = sandbox.agent
            for (path, size) in [("/home/user/big", 2 << 20), ("/tmp/a", 700 << 10), ("/tmp/b", 700 << 10)] {
                do {
                    try await agent.writeFile(path, data: Data(count: size))
                    #expect(path == "/tmp/a", "\(path) was written")
                } catch SandboxAgentError.agent(let code, _) {
                    #expect(code == .noSpace || code == .tooLarge, "\(path): \(code)")
                }
            }
            let command = try await run(sandbox, ["sh", "-c", "head -c 900000 /dev/zero > /home/user/c"])
            #expect(command.exited?.exitCode != 0)
            try await agent.ping()
        }
    }

    @Test("\"..\" and symlinks cannot reach the host's files")
    func escapes() async throws {
        let tag = uniqueTag()
        let hostSecret = "/tmp/hangar-host-secret-\(tag)"
        let created = FileManager.default.createFile(atPath: hostSecret, contents: Data("host secret".utf8))
        #expect(created)
        defer { unlink(hostSecret) }
        try await Self.withSandbox { sandbox in
            let agent = sandbox.agent
            for path in ["/home/user/../../etc/shadow", "../etc/passwd", "/tmp/..", "a/../../b"] {
                do {
                    _ = try await agent.readFile(path)
                    Issue.record("\(path) was read")
                } catch SandboxAgentError.agent(let code, let message) {
                    #expect(code == .invalid)
                    #expect(message.contains("\"..\""))
                }
            }
            await #expect(throws: SandboxAgentError.invalid("the path contains a NUL byte")) {
                try await agent.readFile("/etc/passwd\u{0}x")
            }
            // Symlinks resolve inside the sandbox: its /tmp is its own and it has no /etc/shadow.
            let links = try await run(
                sandbox,
                [
                    "sh", "-c",
                    "ln -s \(hostSecret) secret && ln -s /etc/shadow shadow && ln -s ../../../../../etc/shadow up",
                ]
            )
            #expect(links.exited?.exitCode == 0)
            for link in ["secret", "shadow", "up"] {
                do {
                    let data = try await agent.readFile(link)
                    Issue.record("\(link) read \(data.data.count) bytes")
                } catch SandboxAgentError.agent(let code, _) {
                    #expect(code == .notFound)
                }
                #expect(try await agent.stat(link).type == .symlink)
            }
            let passwd = try await agent.readWholeFile("/etc/passwd")
            #expect(text(passwd).contains("user:x:1000:1000:user:/home/user:/bin/bash"))
            #expect(!text(passwd).contains("daemon:"))
            await #expect(throws: SandboxAgentError.self) { try await agent.writeFile("/usr/evil", data: Data()) }
        }
    }

    @Test("a command cannot kill or read the agent, which keeps answering")
    func protectedAgent() async throws {
        try await Self.withSandbox { sandbox in
            for user in ["user", "root"] {
                let attack = try await run(
                    sandbox,
                    [
                        "sh", "-c",
                        "kill -9 1; kill -STOP 1; kill -TERM 1; cat /proc/1/environ >/dev/null && echo read",
                    ]
                ) { $0.user = user }
                #expect(!text(attack.stdout).contains("read"), "as \(user)")
                try await within(.seconds(5)) { try await sandbox.agent.ping() }
            }
            let still = try await run(sandbox, ["echo", "alive"])
            #expect(text(still.stdout) == "alive\n")
        }
    }

    @Test("garbage frames get an error and the agent keeps serving")
    func garbage() async throws {
        try await Self.withSandbox { sandbox in
            let agent = sandbox.agent
            @Sendable func nextError() async throws -> Hangar_V1_AgentError? {
                try await within(.seconds(5)) {
                    var errors = agent.unsolicitedErrors.makeAsyncIterator()
                    return await errors.next()
                }
            }
            try agent.sendRaw(SandboxAgentChannel.frame(Data([0xff, 0xff, 0xff, 0x0f])))
            let undecodable = try await nextError()
            #expect(undecodable?.code == .invalid)
            // Oversized: refused, its bytes skipped, and the stream is in step again after them.
            let oversized = SandboxAgentChannel.maxFrameBytes + 1
            var frame = Data()
            withUnsafeBytes(of: UInt32(oversized).bigEndian) { frame.append(contentsOf: $0) }
            frame.append(Data(count: oversized))
            try agent.sendRaw(frame)
            let tooLarge = try await nextError()
            #expect(tooLarge?.code == .tooLarge)
            try await within(.seconds(5)) { try await agent.ping() }
            let echo = try await run(sandbox, ["echo", "fine"])
            #expect(text(echo.stdout) == "fine\n")
        }
    }

    @Test("a sandbox whose agent does not answer fails to start with a clear error and leaves nothing")
    func agentThatDoesNotAnswer() async throws {
        let tag = uniqueTag()
        do {
            _ = try await ProcessSandbox.start(id: "mute-\(tag)", agentPath: "/bin/true")
            Issue.record("a sandbox started without an agent")
        } catch {
            #expect(error.description.contains("the sandbox's agent did not answer"))
        }
        #expect(leftoverCgroups(containing: "sandbox-mute-\(tag)").isEmpty)
        let scratches = (try? FileManager.default.contentsOfDirectory(atPath: ProcessSandbox.defaultWorkRoot)) ?? []
        #expect(!scratches.contains { $0.contains("mute-\(tag)") })
    }

    @Test("after kill() nothing is left: processes, mounts, cgroup, scratch; waiters hear of it")
    func killLeavesNothing() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent())
        let sandbox = try await ProcessSandbox.start(id: "kill-\(uniqueTag())", agentPath: agentPath)
        // The sandbox's pid namespace as the host names it: whatever is left of the sandbox is in it
        // (the uid is no witness: other nodes on this machine may hand out the same one).
        let namespace = try await run(sandbox, ["readlink", "/proc/self/ns/pid"])
        let pidNamespace = text(namespace.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(pidNamespace.hasPrefix("pid:["))
        try await within(.seconds(15)) {
            var exec = Hangar_V1_AgentExec()
            exec.argv = ["sh", "-c", "sleep 60 & sleep 60"]
            var events = sandbox.agent.exec(exec).makeAsyncIterator()
            var collector = Collector()
            try collector.take(try await events.next())
            #expect(collector.pid != nil)
            #expect(processes(inPidNamespace: pidNamespace).count >= 2)  // the agent and the command
            #expect(await sandbox.kill() == nil)
            do {
                while let event = try await events.next() { try collector.take(event) }
                Issue.record("the command's stream ended without an error")
            } catch let error as SandboxAgentError {
                guard case .agentGone = error else { throw error }
            }
        }
        await #expect(throws: SandboxAgentError.self) { try await sandbox.agent.ping() }
        // Killed, its last processes may still be on their way out (a loaded CI run once saw one
        // still running right after kill() returned): they must be gone within moments.
        let gone = await eventually(within: .seconds(5)) { processes(inPidNamespace: pidNamespace).isEmpty }
        #expect(gone, "left in the sandbox's pid namespace: \(processes(inPidNamespace: pidNamespace))")
        #expect(!FileManager.default.fileExists(atPath: sandbox.scratchPath))
        let mounts = readProcFile("/proc/self/mountinfo")
        #expect(!mounts.contains(sandbox.scratchPath))
        for directory in sandbox.cgroupDirectories { #expect(!FileManager.default.fileExists(atPath: directory)) }
        #expect(await sandbox.kill() == nil)
    }
}

/// What one command sent.
struct Collector {
    var pid: UInt32?
    var stdout = Data()
    var stderr = Data()
    var exited: Hangar_V1_AgentExited?
    var contiguous = true
    var chunks = 0
    var largestChunk = 0

    mutating func take(_ event: Hangar_V1_AgentEvent?) throws {
        switch event?.kind {
        case .started(let started): pid = started.pid
        case .output(let output):
            chunks += 1
            largestChunk = max(largestChunk, output.data.count)
            if output.stream == .stdout {
                contiguous = contiguous && output.offset == UInt64(stdout.count)
                stdout.append(output.data)
            } else {
                contiguous = contiguous && output.offset == UInt64(stderr.count)
                stderr.append(output.data)
            }
        case .exited(let end): exited = end
        default: break
        }
    }
}

/// Runs `argv` in the sandbox to its end (at most 10 s); `whileRunning` gets the pid once it started.
@discardableResult
func run(
    _ sandbox: ProcessSandbox,
    _ argv: [String],
    _ configure: (inout Hangar_V1_AgentExec) -> Void = { _ in },
    whileRunning: @escaping @Sendable (UInt32) async throws -> Void = { _ in }
) async throws -> Collector {
    try await execute(sandbox, argv, configure, within: .seconds(10), whileRunning: whileRunning)
}

/// Runs `argv` in any stateful sandbox to its end (at most `limit`); `whileRunning` gets the pid
/// once it started.
func execute(
    _ sandbox: any StatefulSandbox,
    _ argv: [String],
    _ configure: (inout Hangar_V1_AgentExec) -> Void = { _ in },
    within limit: Duration,
    whileRunning: @escaping @Sendable (UInt32) async throws -> Void = { _ in }
) async throws -> Collector {
    var exec = Hangar_V1_AgentExec()
    exec.argv = argv
    configure(&exec)
    let request = exec
    return try await within(limit) {
        var collector = Collector()
        for try await event in sandbox.agent.exec(request) {
            try collector.take(event)
            if case .started(let started) = event.kind { try await whileRunning(started.pid) }
        }
        return collector
    }
}

struct DeadlinePassed: Error {}

/// `body`'s result, or ``DeadlinePassed`` after `limit` (then `body` is cancelled).
func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw DeadlinePassed() }
        return value
    }
}
