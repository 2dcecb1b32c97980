import Foundation
import HangarShared
import Testing

@testable import HangarNode

/// What the node keeps of background commands' output (pure: no sandbox).
@Suite("Background commands: kept output and its bounds")
struct BackgroundCommandsTests {
    private func output(_ pid: UInt32, _ offset: UInt64, _ count: Int, stderr: Bool = false) -> Hangar_V1_AgentOutput {
        .with {
            $0.pid = pid
            $0.stream = stderr ? .stderr : .stdout
            $0.offset = offset
            $0.data = Data(repeating: UInt8(truncatingIfNeeded: offset / 65536), count: count)
        }
    }

    /// Feeds `bytes` of stdout to `pid` in 64 KiB chunks.
    private func feed(_ commands: BackgroundCommands, _ pid: UInt32, bytes: Int) async {
        for offset in stride(from: 0, to: bytes, by: 65536) {
            await commands.record(pid, output(pid, UInt64(offset), 65536))
        }
    }

    /// Everything an attach yields until it ends: stdout bytes, the first stdout offset, the exit.
    private func drain(
        _ stream: AsyncStream<Hangar_V1_SandboxExecEvent>?
    ) async -> (Data, UInt64?, Hangar_V1_AgentExited?) {
        var data = Data()
        var first: UInt64?
        var exited: Hangar_V1_AgentExited?
        for await event in stream ?? AsyncStream { $0.finish() } {
            switch event.kind {
            case .output(let chunk) where chunk.stream == .stdout:
                if first == nil { first = chunk.offset }
                data += chunk.data
            case .exited(let last): exited = last
            default: continue
            }
        }
        return (data, first, exited)
    }

    @Test("the last MiB of a stream is kept, from its true offset; an attach after the end gets it and the exit")
    func keepsTheTail() async {
        let commands = BackgroundCommands()
        await commands.begin(7)
        await feed(commands, 7, bytes: 3 << 20)
        await commands.finish(7, .with { $0.exitCode = 3 })
        let (data, first, exited) = await drain(await commands.attach(.with { $0.pid = 7 }))
        #expect(data.count == BackgroundCommands.keptBytes && first == UInt64(2 << 20))
        #expect(exited?.exitCode == 3)
        #expect(await commands.attach(.with { $0.pid = 8 }) == nil)
    }

    @Test("an attached client gets output as it comes, then the exit")
    func live() async {
        let commands = BackgroundCommands()
        await commands.begin(1)
        await commands.record(1, output(1, 0, 10))
        let stream = await commands.attach(.with { $0.pid = 1 })
        await commands.record(1, output(1, 10, 5))
        await commands.finish(1, .with { $0.exitCode = 0 })
        let (data, first, exited) = await drain(stream)
        #expect(data.count == 15 && first == 0 && exited?.exitCode == 0)
    }

    @Test("all commands of a sandbox keep at most the budget: ended ones go first, then the oldest bytes")
    func budget() async {
        let commands = BackgroundCommands()
        for pid: UInt32 in 1...3 {
            await commands.begin(pid)
            await feed(commands, pid, bytes: 1 << 20)
            await commands.finish(pid, .with { $0.exitCode = 0 })
        }
        for pid: UInt32 in 10...14 {
            await commands.begin(pid)
            await feed(commands, pid, bytes: 1 << 20)
        }
        // 8 MiB were written; 4 MiB are kept, by the running commands only.
        var kept = 0
        for pid: UInt32 in [1, 2, 3] { #expect(await commands.attach(.with { $0.pid = pid }) == nil, "\(pid)") }
        for pid: UInt32 in 10...14 {
            await commands.finish(pid, .with { $0.exitCode = 0 })
            kept += await drain(await commands.attach(.with { $0.pid = pid })).0.count
        }
        #expect(
            kept <= BackgroundCommands.budgetBytes && kept >= BackgroundCommands.budgetBytes - (64 << 10),
            "\(kept)"
        )
    }
}
