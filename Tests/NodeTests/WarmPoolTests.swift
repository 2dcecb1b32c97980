import Foundation
import HangarNode
import HangarShared
import Logging
import Testing

@Suite("Warm pools, real bubblewrap and runc", .serialized)
struct WarmPoolTests {
    static func status(_ pools: WarmPools, _ template: String = "host") -> Hangar_V1_WarmPool? {
        pools.status().first { $0.runtime == "process" && $0.template == template }
    }

    /// Warm sandboxes of this test process still alive on the host: processes that carry the waiter
    /// script (bubblewrap and the shell) and descend from this process (bubblewrap, `runc run`) or sit
    /// in a cgroup it made (`<name>.<pid>.<n>`). Other processes' pools (a concurrent `swift test`, a
    /// `hangar dev`) are not ours to count.
    static func waitingSandboxes() -> [String] {
        (processes(withArgument: WarmScript.process.waiter) + processes(withArgument: WarmScript.container.waiter))
            .filter { pid in
                let cgroups = (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? ""
                return cgroups.contains(".\(getpid()).") || descendsFromThisProcess(pid)
            }
    }

    /// Whether this process is an ancestor of `pid` (parents read from `/proc/<pid>/stat`).
    static func descendsFromThisProcess(_ pid: String) -> Bool {
        var current = Int32(pid) ?? 0
        for _ in 0..<64 where current > 1 {
            guard let stat = try? String(contentsOfFile: "/proc/\(current)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            // `pid (comm) state ppid …`: the parent is the second field after the command.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, let parent = Int32(fields[1]) else { return false }
            if parent == getpid() { return true }
            current = parent
        }
        return false
    }

    @Test("the pool fills to min, serves a job warm, replaces it, and drains with no residue")
    func fillServeDrain() async throws {
        let pools = WarmPools(
            specs: [WarmPoolSpec(runtime: "process", template: "host", min: 2, max: 4)],
            runtimes: [ProcessRuntime()],
            logger: Logger(label: "test")
        )
        let running = Task { await pools.run(available: ["process"]) }
        #expect(await eventually(within: .seconds(20)) { Self.status(pools)?.ready == 2 }, "\(pools.status())")

        let script = Self.inspect
        let spec = job(["/usr/bin/python3", "-c", script]) {
            $0.stdin = Data("from-stdin\n".utf8)
            $0.env = ["FOO": "it's \"quoted\" $HOME"]
        }
        let sandbox = try #require(pools.take(spec))
        #expect(Self.status(pools)?.servedWarm == 1)
        let outcome = await sandbox.run(spec, jobID: "warm-\(uniqueTag())")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(
            text(outcome.stdout) == "out\nfrom-stdin\nit's \"quoted\" $HOME\nfds -\nenv FOO,HOME,LC_CTYPE,PATH,PWD\n"
        )
        // The same job in a fresh sandbox prints the same: the warm one is indistinguishable.
        let cold = await ProcessRuntime().run(spec, jobID: "cold-\(uniqueTag())")
        #expect(cold.stdout == outcome.stdout)
        #expect(text(outcome.stderr) == "err\n")
        // How fast a warm start is belongs to the benchmarks (`hangar-bench pools`, "warm, until code
        // runs"), not here: a loaded machine is not a broken pool.
        // Refilled back to min.
        #expect(await eventually(within: .seconds(20)) { Self.status(pools)?.ready == 2 })

        // The pool's own waiting sandboxes are seen, or the check after the drain is void.
        #expect(
            await eventually(within: .seconds(20)) { !Self.waitingSandboxes().isEmpty },
            "no waiting sandbox of this pool is seen"
        )
        running.cancel()
        await running.value
        #expect(Self.status(pools)?.ready == 0)
        #expect(
            await eventually(within: .seconds(3)) { Self.waitingSandboxes().isEmpty },
            "\(Self.waitingSandboxes())"
        )
        #expect(leftoverCgroups(containing: "warm-host.\(getpid()).").isEmpty)
    }

    /// Prints what a job can see of its start: stdout/stderr, stdin, `FOO`, open descriptors beyond
    /// 0-2, and the names of its environment variables.
    static let inspect = """
        import os, sys
        print('out'); print('err', file=sys.stderr)
        print(sys.stdin.read(), end='')
        print(os.environ['FOO'])
        def is_open(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False
        print('fds', ','.join(str(fd) for fd in range(3, 1024) if is_open(fd)) or '-')
        print('env', ','.join(sorted(os.environ)))
        """

    @Test("a container pool serves a job warm exactly as a fresh container would, and drains with no residue")
    func container() async throws {
        let directories = OCIKind.runc.directories
        let runtime = ContainerRuntime(directories: directories)
        let pools = WarmPools(
            specs: [WarmPoolSpec(runtime: "container", template: "host", min: 1, max: 1)],
            runtimes: [runtime],
            logger: Logger(label: "test")
        )
        let running = Task { await pools.run(available: ["container"]) }
        let status = { pools.status().first { $0.runtime == "container" } }
        #expect(await eventually(within: .seconds(20)) { status()?.ready == 1 }, "\(pools.status())")
        var spec = job(["/usr/bin/python3", "-c", Self.inspect]) {
            $0.stdin = Data("from-stdin\n".utf8)
            $0.env = ["FOO": "it's"]
        }
        spec.runtime = "container"
        let sandbox = try #require(pools.take(spec))
        let outcome = await sandbox.run(spec, jobID: "warm-c-\(uniqueTag())")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(text(outcome.stdout) == "out\nfrom-stdin\nit's\nfds -\nenv FOO,HOME,LC_CTYPE,PATH\n")
        let cold = await runtime.run(spec, jobID: "cold-c-\(uniqueTag())")
        #expect(cold.stdout == outcome.stdout)
        #expect(await eventually(within: .seconds(20)) { status()?.ready == 1 })
        #expect(
            pools.take(
                job(["/bin/true"]) {
                    $0.runtime = "container"
                    $0.limits.cpuTimeMs = 1000
                }
            ) == nil
        )
        let slow = job(["/bin/sleep", "5"]) {
            $0.runtime = "container"
            $0.limits.timeoutMs = 300
        }
        let slowSandbox = try #require(pools.take(slow))
        let slowOutcome = await slowSandbox.run(slow, jobID: "warm-c-slow-\(uniqueTag())")
        #expect(slowOutcome.status == .timedOut, "\(slowOutcome.message)")

        // The pool's own waiting sandboxes are seen, or the check after the drain is void.
        #expect(
            await eventually(within: .seconds(20)) { !Self.waitingSandboxes().isEmpty },
            "no waiting sandbox of this pool is seen"
        )
        running.cancel()
        await running.value
        #expect(
            await eventually(within: .seconds(5)) { Self.waitingSandboxes().isEmpty },
            "\(Self.waitingSandboxes())"
        )
        let bundles = (try? FileManager.default.contentsOfDirectory(atPath: directories.bundles)) ?? []
        #expect(bundles.filter { $0.hasPrefix("hangar-warm-host-") }.isEmpty, "\(bundles)")
        let state = (try? FileManager.default.contentsOfDirectory(atPath: directories.state)) ?? []
        #expect(state.filter { $0.hasPrefix("hangar-warm-host-") }.isEmpty, "\(state)")
        let cgroups = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/memory/hangar")) ?? []
        #expect(cgroups.filter { $0.hasPrefix("hangar-warm-host-") }.isEmpty, "\(cgroups)")
    }

    @Test("a job whose creation-time limits differ starts cold; a warm job keeps its own wall clock")
    func limitsAndTimeout() async throws {
        let pools = WarmPools(
            specs: [WarmPoolSpec(runtime: "process", template: "host", min: 1, max: 1)],
            runtimes: [ProcessRuntime()],
            logger: Logger(label: "test")
        )
        let running = Task { await pools.run(available: ["process"]) }
        defer { running.cancel() }
        #expect(await eventually(within: .seconds(20)) { Self.status(pools)?.ready == 1 })
        #expect(pools.take(job(["/bin/true"]) { $0.limits.outputBytes = 1000 }) == nil)
        #expect(pools.take(job(["/bin/true"]) { $0.files = [Hangar_V1_FileIn()] }) == nil)
        #expect(Self.status(pools)?.servedCold == 2)

        let slow = job(["/bin/sleep", "5"]) {
            $0.limits.timeoutMs = 300
            $0.limits.memoryBytes = 64 << 20  // set at assignment, so still warm
        }
        let sandbox = try #require(pools.take(slow))
        let outcome = await sandbox.run(slow, jobID: "warm-timeout-\(uniqueTag())")
        #expect(outcome.status == .timedOut)
        #expect(outcome.message.contains("wall-clock limit of 300 ms"))
        #expect(outcome.runMilliseconds < 2000)

        // Memory is the job's, set at assignment: above the pool's 256 MiB works, below it binds.
        let big = job(["/usr/bin/python3", "-c", "b = bytearray(300 << 20); print(len(b))"]) {
            $0.limits.memoryBytes = 512 << 20
        }
        #expect(await eventually(within: .seconds(20)) { Self.status(pools)?.ready == 1 })
        let bigSandbox = try #require(pools.take(big))
        let bigOutcome = await bigSandbox.run(big, jobID: "warm-big-\(uniqueTag())")
        #expect(bigOutcome.status == .succeeded, "\(bigOutcome.message) \(text(bigOutcome.stderr))")
        let small = job(["/usr/bin/python3", "-c", "b = bytearray(100 << 20); print(len(b))"]) {
            $0.limits.memoryBytes = 32 << 20
        }
        #expect(await eventually(within: .seconds(20)) { Self.status(pools)?.ready == 1 })
        let smallSandbox = try #require(pools.take(small))
        let smallOutcome = await smallSandbox.run(small, jobID: "warm-small-\(uniqueTag())")
        #expect(smallOutcome.status == .oomKilled, "\(smallOutcome.status) \(smallOutcome.message)")
        #expect(smallOutcome.message.contains("memory limit of 32 MiB"))

        // The pool's own waiting sandboxes are seen, or the check after the drain is void.
        #expect(
            await eventually(within: .seconds(20)) { !Self.waitingSandboxes().isEmpty },
            "no waiting sandbox of this pool is seen"
        )
        running.cancel()
        await running.value
        #expect(await eventually(within: .seconds(3)) { Self.waitingSandboxes().isEmpty })
    }

    @Test("a pool grows toward demand within max, and a directory template is served warm")
    func demandAndTemplate() async throws {
        let marker = "marker-\(uniqueTag())"
        let store = try TemplateRuntimeTests.store(marker: marker)
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let pools = WarmPools(
            specs: [WarmPoolSpec(runtime: "process", template: "bb", min: 1, max: 3)],
            runtimes: [ProcessRuntime(templates: store)],
            logger: Logger(label: "test")
        )
        let running = Task { await pools.run(available: ["process"]) }
        #expect(await eventually(within: .seconds(20)) { Self.status(pools, "bb")?.ready == 1 }, "\(pools.status())")
        let spec = job(["/bin/cat", "/marker.txt"]) { $0.template = "bb" }
        var taken: [any WarmSandbox] = []
        for _ in 0..<5 { if let sandbox = pools.take(spec) { taken.append(sandbox) } }
        #expect(taken.count == 1)
        #expect(await eventually(within: .seconds(20)) { Self.status(pools, "bb")?.target == 3 })
        #expect(await eventually(within: .seconds(20)) { Self.status(pools, "bb")?.ready == 3 }, "\(pools.status())")
        let outcome = await taken[0].run(spec, jobID: "warm-bb-\(uniqueTag())")
        #expect(outcome.status == .succeeded, "\(outcome.message) \(text(outcome.stderr))")
        #expect(text(outcome.stdout) == marker)
        // The pool's own waiting sandboxes are seen, or the check after the drain is void.
        #expect(
            await eventually(within: .seconds(20)) { !Self.waitingSandboxes().isEmpty },
            "no waiting sandbox of this pool is seen"
        )
        running.cancel()
        await running.value
        #expect(await eventually(within: .seconds(3)) { Self.waitingSandboxes().isEmpty })
        #expect(leftoverCgroups(containing: "warm-bb.\(getpid()).").isEmpty)
    }
}
