import Foundation
import HangarShared

/// The background commands of one stateful sandbox: each runs without the client that started it;
/// the node keeps the last ``keptBytes`` of each of its streams and streams its output, from any
/// offset still kept, to every client that attaches, until it exits. An ended command stays listed
/// for ``keptEnded`` more ends, so that a late attach still gets its output and exit.
///
/// The kept output is the node's memory, not the sandbox's: all of a sandbox's commands together
/// keep at most ``budgetBytes`` (ended commands are dropped first, oldest first, then the oldest
/// bytes of the largest stream), and at most ``maxRunning`` run at once.
public actor BackgroundCommands {
    /// Bytes kept per stream of each command.
    public static let keptBytes = 1 << 20
    /// Ended commands kept for attaching, the oldest dropped first.
    public static let keptEnded = 16
    /// Bytes kept for all of a sandbox's background commands together.
    public static let budgetBytes = 4 << 20
    /// Background commands running at once in one sandbox.
    public static let maxRunning = 64

    /// One stream's kept bytes: `data` starts at offset `start` of the stream.
    private struct Kept {
        var start: UInt64 = 0
        var data = Data()

        var end: UInt64 { start + UInt64(data.count) }

        mutating func append(_ chunk: Data) {
            data.append(chunk)
            drop(data.count - BackgroundCommands.keptBytes)
        }

        /// Forgets the oldest `count` bytes (none when `count` is not positive).
        mutating func drop(_ count: Int) {
            guard count > 0 else { return }
            let dropped = min(count, data.count)
            data = Data(data.dropFirst(dropped))
            start += UInt64(dropped)
        }
    }

    private struct Command {
        var stdout = Kept()
        var stderr = Kept()
        var exited: Hangar_V1_AgentExited?
        var attached: [UUID: AsyncStream<Hangar_V1_SandboxExecEvent>.Continuation] = [:]
    }

    private var commands: [UInt32: Command] = [:]
    private var ended: [UInt32] = []
    private var keptTotal = 0

    /// Whether another background command may start.
    var roomToStart: Bool { commands.count - ended.count < Self.maxRunning }

    /// An empty registry.
    public init() {}

    /// The output of `pid` from the offsets asked (what is kept of it), then as it comes, then its
    /// exit; nil when the sandbox holds no such background command.
    func attach(_ request: Hangar_V1_SandboxAttachRequest) -> AsyncStream<Hangar_V1_SandboxExecEvent>? {
        guard let command = commands[request.pid] else { return nil }
        let (stream, continuation) = AsyncStream.makeStream(of: Hangar_V1_SandboxExecEvent.self)
        for (kind, kept, from) in [
            (Hangar_V1_AgentStream.stdout, command.stdout, request.stdoutOffset),
            (.stderr, command.stderr, request.stderrOffset),
        ] where kept.end > from {
            let first = max(from, kept.start)
            let tail = kept.data.suffix(from: kept.data.startIndex + Int(first - kept.start))
            var offset = first
            for chunk in stride(from: 0, to: tail.count, by: 64 << 10) {
                let piece = Data(tail.dropFirst(chunk).prefix(64 << 10))
                continuation.yield(Self.output(request.pid, kind, offset, piece))
                offset += UInt64(piece.count)
            }
        }
        if let exited = command.exited {
            continuation.yield(.with { $0.exited = exited })
            continuation.finish()
        } else {
            commands[request.pid]?.attached[UUID()] = continuation
        }
        return stream
    }

    /// A background command `pid` started: its output is kept from now on (from the offsets of
    /// `started`, for one taken over after a node restart).
    func begin(_ pid: UInt32, from started: Hangar_V1_AgentStarted? = nil) {
        if ended.contains(pid) {
            ended.removeAll { $0 == pid }
            forget(pid)
        }
        var command = Command()
        command.stdout.start = started?.stdoutOffset ?? 0
        command.stderr.start = started?.stderrOffset ?? 0
        commands[pid] = command
    }

    /// Takes over `pid`, a command the sandbox's agent ran on while no node was connected (see
    /// ``SandboxAgentChannel/reattach(pid:)``): once the agent has answered, it is listed here as
    /// a background command whose output starts where the agent's answer says (the last 64 KiB
    /// the agent kept of a background command's streams, then what the last node had not read;
    /// an attach from 0 sees where it starts), and its output and exit are followed as for one
    /// started here. False when the agent had no such command.
    nonisolated func takeOver(_ pid: UInt32, agent: SandboxAgentChannel) async -> Bool {
        await withCheckedContinuation { (answered: CheckedContinuation<Bool, Never>) in
            Task {
                var listed = false
                do {
                    for try await event in agent.reattach(pid: pid) {
                        switch event.kind {
                        case .started(let started):
                            await begin(pid, from: started)
                            listed = true
                            answered.resume(returning: true)
                        case .output(let output): await record(pid, output)
                        case .exited(let exited):
                            await finish(pid, exited)
                            return
                        default: continue
                        }
                    }
                } catch {}
                if listed { await finish(pid, nil) } else { answered.resume(returning: false) }
            }
        }
    }

    /// A chunk of its output: kept, and passed to every attached client.
    func record(_ pid: UInt32, _ output: Hangar_V1_AgentOutput) {
        guard var command = commands[pid] else { return }
        let before = command.stdout.data.count + command.stderr.data.count
        if output.stream == .stderr { command.stderr.append(output.data) } else { command.stdout.append(output.data) }
        keptTotal += command.stdout.data.count + command.stderr.data.count - before
        commands[pid] = command
        for continuation in command.attached.values { continuation.yield(.with { $0.output = output }) }
        keepWithinBudget()
    }

    /// Drops ended commands (oldest first), then the oldest bytes of the largest stream, until
    /// the kept output fits ``budgetBytes``.
    private func keepWithinBudget() {
        while keptTotal > Self.budgetBytes, !ended.isEmpty {
            forget(ended.removeFirst())
        }
        while keptTotal > Self.budgetBytes {
            guard let (pid, command) = commands.max(by: { Self.largest($0.value) < Self.largest($1.value) }) else {
                return
            }
            var trimmed = command
            let excess = keptTotal - Self.budgetBytes
            let before = trimmed.stdout.data.count + trimmed.stderr.data.count
            if trimmed.stdout.data.count >= trimmed.stderr.data.count {
                trimmed.stdout.drop(excess)
            } else {
                trimmed.stderr.drop(excess)
            }
            keptTotal -= before - (trimmed.stdout.data.count + trimmed.stderr.data.count)
            commands[pid] = trimmed
            if before == trimmed.stdout.data.count + trimmed.stderr.data.count { return }
        }
    }

    private static func largest(_ command: Command) -> Int { max(command.stdout.data.count, command.stderr.data.count) }

    private func forget(_ pid: UInt32) {
        guard let command = commands.removeValue(forKey: pid) else { return }
        keptTotal -= command.stdout.data.count + command.stderr.data.count
    }

    /// It ended (`exited` nil: the agent went away without saying how): attached clients get the
    /// exit and their streams end.
    func finish(_ pid: UInt32, _ exited: Hangar_V1_AgentExited?) {
        guard var command = commands[pid] else { return }
        let last =
            exited
            ?? Hangar_V1_AgentExited.with {
                $0.pid = pid
                $0.signal = SIGKILL
            }
        command.exited = last
        for continuation in command.attached.values {
            continuation.yield(.with { $0.exited = last })
            continuation.finish()
        }
        command.attached = [:]
        commands[pid] = command
        ended.append(pid)
        while ended.count > Self.keptEnded { forget(ended.removeFirst()) }
    }

    private static func output(
        _ pid: UInt32,
        _ stream: Hangar_V1_AgentStream,
        _ offset: UInt64,
        _ data: Data
    ) -> Hangar_V1_SandboxExecEvent {
        .with {
            $0.output = .with {
                $0.pid = pid
                $0.stream = stream
                $0.offset = offset
                $0.data = data
            }
        }
    }
}
