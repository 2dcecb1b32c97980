import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

/// ``MicroVMSandbox/resynchronise(_:within:)`` on a socket pair whose other end the test plays the
/// agent's part on: what a VM's port may hold from before a node restart (a frame cut short, other
/// frames, a Pong with another id) is skipped up to the Pong that answers the node's own Ping, and
/// the stream goes on at the next frame. (`MicroVMSandboxTests` re-adopts a real VM.)
@Suite("microVM stream resynchronisation")
struct MicroVMResyncTests {
    /// A connected pair: the node's end and the agent's.
    private func pair() throws -> (node: Int32, agent: Int32) {
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    private func write(_ fd: Int32, _ data: Data) {
        _ = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    /// Reads one frame the node sent (the Ping) on the agent's end, within 10 s, on a thread of its
    /// own (the resynchronisation needs the cooperative pool's few threads to start).
    private func readRequest(_ fd: Int32) async throws -> Hangar_V1_AgentRequest {
        let body: [UInt8]? = await withCheckedContinuation { continuation in
            Thread {
                func readExactly(_ count: Int) -> [UInt8]? {
                    var bytes = [UInt8](repeating: 0, count: count)
                    var got = 0
                    while got < count {
                        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                        guard poll(&entry, 1, 10_000) == 1 else { return nil }
                        let read = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, count - got) }
                        guard read > 0 else { return nil }
                        got += read
                    }
                    return bytes
                }
                guard let header = readExactly(4) else { return continuation.resume(returning: nil) }
                let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
                continuation.resume(returning: readExactly(length))
            }.start()
        }
        return try Hangar_V1_AgentRequest(serializedBytes: try #require(body, "no whole frame within 10 s"))
    }

    private func pong(_ id: UInt64) throws -> Data {
        var event = Hangar_V1_AgentEvent()
        event.id = id
        event.pong = Hangar_V1_AgentPong()
        return SandboxAgentChannel.frame(try event.serializedData())
    }

    @Test("what came before the answer to the node's own Ping is skipped, and the stream goes on at the next frame")
    func skipsToTheAnswer() async throws {
        let (node, agent) = try pair()
        defer {
            close(node)
            close(agent)
        }
        // From before the restart: a frame cut short (its header promises 64 KiB), a whole output
        // frame, and a Pong to another id; a command's output could hold any of these bytes.
        var stale = Data([0, 1, 0, 0]) + Data(repeating: 0x41, count: 300)
        var output = Hangar_V1_AgentEvent()
        output.id = 3
        output.output.data = Data("old".utf8)
        stale += SandboxAgentChannel.frame(try output.serializedData()) + (try pong(7))
        write(agent, stale)
        async let answered = MicroVMSandbox.resynchronise(node, within: .seconds(10))
        let ping = try await readRequest(agent)
        guard case .ping = ping.op else {
            Issue.record("the node sent \(ping), not a Ping")
            return
        }
        #expect(ping.id >= 1 << 63, "the Ping's id is apart from the channel's")
        #expect(ping.ping.newNode, "the Ping tells the agent to forget the requests of the nodes before")
        var next = Hangar_V1_AgentEvent()
        next.id = 1
        next.pong = Hangar_V1_AgentPong()
        let following = SandboxAgentChannel.frame(try next.serializedData())
        write(agent, try pong(ping.id))
        #expect(await answered == nil)
        // The stream is at a frame boundary: what the agent sends next is read whole.
        write(agent, following)
        var got = [UInt8](repeating: 0, count: following.count)
        #expect(read(node, &got, got.count) == following.count)
        #expect(Data(got) == following)
    }

    @Test("an unanswered Ping is sent again: the answer to the second one ends the resynchronisation")
    func pingsAgain() async throws {
        let (node, agent) = try pair()
        defer {
            close(node)
            close(agent)
        }
        async let answered = MicroVMSandbox.resynchronise(node, within: .seconds(20))
        let first = try await readRequest(agent)  // dropped, as by a guest that took the old node to be there
        let second = try await readRequest(agent)  // blocks until the node sends again
        #expect(second.id == first.id && second.ping.newNode, "\(second)")
        write(agent, try pong(second.id))
        #expect(await answered == nil)
    }

    @Test(
        "no answer to the node's own Ping (only one to another id) fails at the deadline; a closed socket fails at once"
    )
    func failures() async throws {
        let (node, agent) = try pair()
        write(agent, try pong(42))
        let silent = await MicroVMSandbox.resynchronise(node, within: .milliseconds(300))
        #expect(silent?.hasPrefix("no answer to 1 pings within the deadline") == true, "\(silent ?? "nil")")
        close(agent)
        let closed = await MicroVMSandbox.resynchronise(node, within: .seconds(10))
        #expect(closed?.hasPrefix("cannot write to it") == true || closed == "the socket closed", "\(closed ?? "nil")")
        close(node)
    }
}
