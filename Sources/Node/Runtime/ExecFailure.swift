import Foundation
import HangarShared

/// A job whose program could not be started inside its sandbox: it does not exist there (exit
/// 127, as a shell says "command not found") or it is not executable (exit 126). Every runtime
/// reports it the same way, in the job's stderr and message, instead of the sandbox tool's own
/// words (bubblewrap's `bwrap: execvp …`, runc's `exec: "…": executable file not found in $PATH`).
enum ExecFailure: Sendable, Equatable {
    case notFound
    case notExecutable

    /// The shells' convention.
    var exitCode: Int32 {
        switch self {
        case .notFound: 127
        case .notExecutable: 126
        }
    }

    /// `hangar: command not found in the sandbox: NAME` or `hangar: permission denied (not
    /// executable) in the sandbox: NAME`.
    func message(_ program: String) -> String {
        switch self {
        case .notFound: "hangar: command not found in the sandbox: \(program)"
        case .notExecutable: "hangar: permission denied (not executable) in the sandbox: \(program)"
        }
    }

    /// What bubblewrap prints when its `execvp` of the job's program fails (then it exits 1 and the
    /// program never ran): `bwrap: execvp NAME: REASON`, the whole of stderr.
    static func bubblewrap(stderr: Data, program: String) -> ExecFailure? {
        let prefix = "bwrap: execvp \(program): "
        let text = String(decoding: stderr.prefix(4096), as: UTF8.self)
        guard text.hasPrefix(prefix), text.hasSuffix("\n"), text.utf8.filter({ $0 == 0x0A }).count == 1 else {
            return nil
        }
        return reason(String(text.dropFirst(prefix.count).dropLast()))
    }

    /// What runc or runsc logged when it could not start the program.
    static func ociRuntime(failure: String, program: String) -> ExecFailure? {
        guard failure.contains(program) else { return nil }
        let lowered = failure.lowercased()
        if lowered.contains("executable file not found") || lowered.contains("no such file or directory") {
            return .notFound
        }
        if lowered.contains("permission denied") || lowered.contains("exec format error") { return .notExecutable }
        return nil
    }

    /// `strerror` of execvp's errno: ENOENT (and ENOTDIR) is not found, anything else that stops an
    /// exec of an existing file (EACCES, ENOEXEC…) is not executable.
    private static func reason(_ text: String) -> ExecFailure? {
        switch text {
        case "No such file or directory", "Not a directory": .notFound
        case "Permission denied", "Exec format error", "Is a directory": .notExecutable
        default: nil
        }
    }
}

extension RunOutcome {
    /// A warm sandbox's script reports a program it cannot start itself (see
    /// ``WarmScript/execLines(_:)``): then the message says so too.
    mutating func noteExecFailure(program: String) {
        for failure in [ExecFailure.notFound, .notExecutable]
        where status == .failed && exitCode == failure.exitCode
            && stderr == Data((failure.message(program) + "\n").utf8)
        {
            message = failure.message(program)
        }
    }

    /// Turns the outcome of a program that never started into the uniform one: FAILED, exit 126 or
    /// 127, stderr and message naming the program.
    mutating func reportExecFailure(_ failure: ExecFailure, program: String) {
        let line = failure.message(program)
        status = .failed
        exitCode = failure.exitCode
        signal = 0
        stderr = Data((line + "\n").utf8)
        stderrBytes = UInt64(stderr.count)
        stderrTruncated = false
        message = line
    }
}
