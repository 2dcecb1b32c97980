import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

/// A sandbox whose agent is the test's end of a socket pair that never answers.
private struct SilentSandbox: StatefulSandbox {
    let agent: SandboxAgentChannel
    func kill() async -> String? { nil }
}

@Suite("Re-adoption: an agent that stops answering")
struct TakeOverDeadlineTests {
    @Test("an agent that answers nothing while its commands are taken over is given up at the deadline")
    func silentAgent() async throws {
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let agent = SandboxAgentChannel(socket: fds[0])
        let peer = fds[1]
        // Should the deadline not work, the test's end hangs up after 20 s instead, and the
        // reason below tells the two apart.
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(20))
            shutdown(peer, Int32(SHUT_RDWR))
        }
        let outcome = await ProcessSandboxHost.takeOver(
            SilentSandbox(agent: agent),
            into: BackgroundCommands(),
            code: CodeContexts(agent: agent, environment: [:]),
            within: .milliseconds(200)
        )
        watchdog.cancel()
        close(peer)
        switch outcome {
        case .success(let taken): Issue.record("a silent agent's commands were taken over: \(taken)")
        case .failure(let error):
            #expect(error.description.contains("stopped answering while its commands were taken over"), "\(error)")
        }
        let reason = agent.goneReason ?? "open"
        #expect(reason == "the channel was closed", "closed by the deadline: \(reason)")
    }
}
