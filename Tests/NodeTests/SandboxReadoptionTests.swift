import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// Re-adoption at the level of one sandbox (issue 16, restarts): the agent listens on a socket the
/// node made, a node that hangs up leaves the sandbox running, the next one reconnects with
/// ``ProcessSandbox/adopt(_:resources:logger:)``, and an agent no node comes back to ends the
/// sandbox. Real bubblewrap and the real agent. (`NodeRestartTests` does it with real `hangar node`
/// processes killed with `kill -9`.)
@Suite("Process sandboxes outlive their node: hang-up, re-adoption, orphan timeout", .enabled(if: geteuid() == 0))
struct SandboxReadoptionTests {
    @Test(
        "hung up on, the agent keeps the sandbox; adopt() reconnects to its files and processes, and its kill leaves nothing"
    )
    func hangUpAndAdopt() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let original = try await ProcessSandbox.start(id: "readopt-\(uniqueTag())", agentPath: agentPath)
        do {
            try await hangUpAndAdopt(original)
        } catch {
            _ = await original.kill()  // so that a failure leaves no sandbox behind
            throw error
        }
    }

    private func hangUpAndAdopt(_ original: ProcessSandbox) async throws {
        let saved = try #require(original.saved, "a loopback sandbox can be re-adopted")
        let sleeper = try await run(
            original,
            ["sh", "-c", "echo kept > note.txt; setsid sleep 1000 > /dev/null 2>&1 & echo $!"]
        )
        let sleeperPID = text(sleeper.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!sleeperPID.isEmpty)
        // The agent's socket is the node's: not in the sandbox.
        let visible = try await run(original, ["sh", "-c", "test -e '\(saved.socket)' && echo visible || echo absent"])
        {
            $0.user = "root"
        }
        #expect(text(visible.stdout) == "absent\n")

        // A command that prints on and on across the hang-up: the new node hears of it only once it
        // takes it over (its request ids start again from 1, so an old id must not reach a new
        // request).
        var ticker = Hangar_V1_AgentExec()
        ticker.argv = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.01; done"]
        ticker.background = true
        var ticks = original.agent.exec(ticker).makeAsyncIterator()
        guard case .started(let tickerStarted)? = try await ticks.next()?.kind else {
            throw Stopped("the ticker did not start")
        }
        // A foreground one that ends once the node has gone (when told to, below), before the next
        // node takes it over: its output and exit wait for that node (its output is not kept by
        // the agent: this checks it stayed in the pipe).
        var ending = Hangar_V1_AgentExec()
        ending.argv = ["sh", "-c", "while [ ! -e /tmp/end-now ]; do sleep 0.05; done; echo done; exit 7"]
        var endingEvents = original.agent.exec(ending).makeAsyncIterator()
        guard case .started(let endingStarted)? = try await endingEvents.next()?.kind else {
            throw Stopped("the ending command did not start")
        }

        // A background one that printed 125 KiB, all read by the old node, then waits: the agent
        // keeps the last 64 KiB of it.
        var bulk = Hangar_V1_AgentExec()
        bulk.argv = [
            "sh", "-c",
            "i=0; while [ $i -lt 2000 ]; do printf '%05d:%057d\\n' $i $i; i=$((i+1)); done; sleep 1000",
        ]
        bulk.background = true
        let bulkText = Data((0..<2000).map { String(format: "%05d:%057d\n", $0, $0) }.joined().utf8)
        var bulkEvents = original.agent.exec(bulk).makeAsyncIterator()
        var bulkPID: UInt32 = 0
        var bulkRead = Data()
        while bulkRead.count < bulkText.count, let event = try await bulkEvents.next() {
            if case .started(let started) = event.kind { bulkPID = started.pid }
            if case .output(let output) = event.kind { bulkRead.append(output.data) }
        }
        #expect(bulkRead == bulkText)

        original.agent.close()  // the node goes away
        // What the old node had read of the ticker before it went.
        var readByOld = Data()
        while let event = try? await ticks.next() {
            if case .output(let output) = event.kind { readByOld.append(output.data) }
        }
        // A node process of its own would have a pool of its own: this one's uid is free there.
        let resources = NodeResources(users: SandboxUsers.standard())
        let adopted = try await ProcessSandbox.adopt(saved, resources: resources, logger: .init(label: "test")).get()
        let after = try await run(adopted, ["sh", "-c", "cat note.txt; kill -0 \(sleeperPID) && echo alive"])
        #expect(text(after.stdout) == "kept\nalive\n", "\(text(after.stderr))")
        // The commands started before the hang-up are listed, the one that ended too (its exit
        // waits).
        #expect(try await run(adopted, ["touch", "/tmp/end-now"]).exited?.exitCode == 0)
        let gone = ContinuousClock.now + .seconds(10)
        var state = ""
        while state != "gone\n", ContinuousClock.now < gone {
            let probe = try await run(
                adopted,
                ["sh", "-c", "kill -0 \(endingStarted.pid) 2>/dev/null && echo alive || echo gone"]
            )
            state = text(probe.stdout)
        }
        #expect(state == "gone\n", "the ending command ended while unclaimed")
        let listed = try await adopted.agent.listProcesses()
        #expect(Set(listed.map(\.argv)) == [ticker.argv, ending.argv, bulk.argv], "\(listed)")
        // A request of the new channel whose id the ticker had on the old one: it runs while the
        // ticker waits, and hears only its own output.
        let fresh = try await run(adopted, ["sh", "-c", "sleep 0.3; echo fresh"])
        #expect(text(fresh.stdout) == "fresh\n" && fresh.exited?.exitCode == 0, "\(text(fresh.stdout))")

        // Taken over, the ended one gives what it wrote and its exit.
        var ended = Collector()
        for try await event in adopted.agent.reattach(pid: endingStarted.pid) { try ended.take(event) }
        #expect(text(ended.stdout) == "done\n" && ended.exited?.exitCode == 7, "\(ended)")
        // The ticker goes on. The agent kept its output (under 64 KiB), so the next node first
        // gets what the old one had read, then what it printed while no node was there: every
        // line from the first, without a gap.
        var taken = adopted.agent.reattach(pid: tickerStarted.pid).makeAsyncIterator()
        guard case .started(let resumed)? = try await taken.next()?.kind else {
            throw Stopped("the ticker could not be taken over")
        }
        #expect(resumed.pid == tickerStarted.pid && resumed.stdoutOffset == 0, "\(resumed)")
        var resumedOutput = Data()
        while resumedOutput.count < readByOld.count + 200, let event = try await taken.next() {
            guard case .output(let output) = event.kind else { continue }
            #expect(output.offset == resumed.stdoutOffset + UInt64(resumedOutput.count), "no gap")
            resumedOutput.append(output.data)
        }
        #expect(resumedOutput.prefix(readByOld.count) == readByOld, "the old node's output comes first")
        // The lines up to the last newline.
        let whole = text(resumedOutput).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            .map(String.init)
        #expect(!whole.isEmpty && whole == (1...max(1, whole.count)).map { "tick \($0)" }, "\(whole.prefix(5))")
        // The bulk one: its last 64 KiB come again, from where they start.
        var bulkTaken = adopted.agent.reattach(pid: bulkPID).makeAsyncIterator()
        guard case .started(let bulkResumed)? = try await bulkTaken.next()?.kind else {
            throw Stopped("the bulk command could not be taken over")
        }
        #expect(bulkResumed.stdoutOffset == UInt64(bulkText.count - 65536), "\(bulkResumed)")
        var replayed = Data()
        while replayed.count < 65536, let event = try await bulkTaken.next() {
            guard case .output(let output) = event.kind else { continue }
            #expect(output.offset == bulkResumed.stdoutOffset + UInt64(replayed.count), "no gap")
            replayed.append(output.data)
        }
        #expect(replayed == bulkText.suffix(65536), "the kept 64 KiB are the last the command printed")
        // A command is taken over once; one that does not run cannot be.
        do {
            for try await _ in adopted.agent.reattach(pid: tickerStarted.pid) {}
            Issue.record("the ticker was taken over twice")
        } catch let error as SandboxAgentError {
            #expect(error.description.contains("taken over already"), "\(error)")
        }
        do {
            for try await _ in adopted.agent.reattach(pid: endingStarted.pid) {}
            Issue.record("an ended command was taken over again")
        } catch let error as SandboxAgentError {
            #expect(error.description.contains("no command with pid"), "\(error)")
        }
        #expect(try await adopted.agent.readWholeFile("/home/user/note.txt") == Data("kept\n".utf8))

        #expect(await adopted.kill() == nil)
        if let user = saved.hostUser { NodeResources.standard.users.release(user) }
        #expect(!FileManager.default.fileExists(atPath: saved.scratch))
        #expect(!FileManager.default.fileExists(atPath: saved.socket))
        for directory in saved.cgroup.distinct { #expect(!FileManager.default.fileExists(atPath: directory)) }
        #expect(await eventually(within: .seconds(5)) { original.saved == nil }, "bubblewrap has ended")
    }

    @Test(
        "a code context goes on across a re-adoption with its state; a cell running at the hang-up finishes unheard, and the next cell hears only its own output"
    )
    func codeContextTakenOver() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let original = try await ProcessSandbox.start(id: "ctxadopt-\(uniqueTag())", agentPath: agentPath)
        let saved = try #require(original.saved)
        let before = CodeContexts(agent: original.agent, environment: [:])
        let id = try await before.prepareDefault()
        // The old node's first cell, still running when it goes: its frames carry that node's cell
        // id, which the next node's first cell must not take for its own.
        _ = await before.run(.with { $0.code = "x = 41\nimport time\ntime.sleep(1)\nprint('old')" })
        original.agent.close()  // the node goes away

        let resources = NodeResources(users: SandboxUsers.standard())
        let adopted = try await ProcessSandbox.adopt(saved, resources: resources, logger: .init(label: "test")).get()
        let after = CodeContexts(agent: adopted.agent, environment: [:])
        let listed = try await adopted.agent.listProcesses()
        let kernel = try #require(listed.first { CodeKernel.context(of: $0.argv) != nil }, "\(listed)")
        let context = try #require(CodeKernel.context(of: kernel.argv))
        #expect(context == .init(id: id, language: "python", isDefault: true, cwd: ""))
        #expect(await after.restore(pid: kernel.pid, context))
        #expect(await after.restore(pid: kernel.pid, context) == false, "a context is taken over once")
        let infos = await after.list()
        #expect(infos.map(\.id) == [id] && infos.first?.alive == true, "\(infos)")
        // A run naming no context goes to the default one taken over: its state is there.
        let cell = try await within(.seconds(60)) {
            var events: [Hangar_V1_CodeRunEvent] = []
            for await event in await after.run(.with { $0.code = "x += 1\nprint(x)" }) { events.append(event) }
            return events
        }
        #expect(printed(cell) == "42\n", "\(cell)")
        if case .done(let done) = cell.last?.kind {
            #expect(done.end == .codeCellOk && done.contextID == id, "\(done)")
        } else {
            Issue.record("the cell did not end with done: \(cell)")
        }
        // A new context counts on from the ids taken over.
        let next = try await after.create(.with { $0.language = "python" })
        #expect(next.id != id && next.id.hasPrefix("ctx-"), "\(next.id)")

        #expect(await adopted.kill() == nil)
        if let user = saved.hostUser { NodeResources.standard.users.release(user) }
        #expect(await eventually(within: .seconds(5)) { original.saved == nil }, "bubblewrap has ended")
    }

    @Test("an agent no node comes back to within its orphan timeout ends the sandbox")
    func orphanTimeout() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ProcessSandbox.start(
            id: "orphan-\(uniqueTag())",
            agentPath: agentPath,
            orphanTimeout: .milliseconds(500)
        )
        _ = try await run(sandbox, ["true"])
        #expect(sandbox.saved != nil)
        sandbox.agent.close()
        #expect(await eventually(within: .seconds(15)) { sandbox.saved == nil }, "the sandbox ended itself")
        #expect(await sandbox.kill() == nil)
        #expect(!FileManager.default.fileExists(atPath: sandbox.scratchPath))
    }

    @Test("a sandbox whose bubblewrap is gone, or whose agent cannot be reached, is not adopted")
    func notAdopted() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ProcessSandbox.start(id: "gone-\(uniqueTag())", agentPath: agentPath)
        var saved = try #require(sandbox.saved)
        let resources = NodeResources(users: SandboxUsers.standard())
        var wrongSocket = saved
        wrongSocket.socket += ".missing"
        switch await ProcessSandbox.adopt(wrongSocket, resources: resources, logger: .init(label: "test")) {
        case .success: Issue.record("adopted through a socket that does not exist")
        case .failure(let error): #expect(error.description.contains("cannot be reached"), "\(error)")
        }
        #expect(await sandbox.kill() == nil)
        saved.leaderStart += 1  // bubblewrap has ended; a pid reused later would have another start
        switch await ProcessSandbox.adopt(saved, resources: resources, logger: .init(label: "test")) {
        case .success: Issue.record("adopted a sandbox that has ended")
        case .failure(let error): #expect(error.description.contains("is gone"), "\(error)")
        }
        #expect(resources.users.inUse == 0, "a failed adoption claims no uid")
    }
}

/// A check that stops a test (thrown, so that its sandbox is killed on the way out).
private struct Stopped: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
