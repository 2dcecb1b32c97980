import Foundation

/// Where a running job's output goes as it is produced, besides the capped copy in the result: the
/// node agent sets one for each job (``NodeAgent`` publishes the chunks on
/// `hangar.logs.<tenant>.<job>` so that `hangar job logs -f` can follow them), and each runtime
/// hands it to the command that runs the job's own program (never to its helper tools).
///
/// Only what is kept is tapped: the bytes up to the output cap, with their offset in the stream.
public struct OutputTap: Sendable {
    /// Which stream a chunk comes from.
    public enum Stream: String, Sendable {
        case stdout, stderr
    }

    /// Called from the sandbox's reader thread: must not block.
    public let send: @Sendable (_ stream: Stream, _ offset: UInt64, _ chunk: Data) -> Void

    public init(send: @escaping @Sendable (_ stream: Stream, _ offset: UInt64, _ chunk: Data) -> Void) {
        self.send = send
    }

    /// The tap of the job the current task runs, if any.
    @TaskLocal public static var current: OutputTap?
}
