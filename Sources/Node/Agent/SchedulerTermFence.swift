import Foundation
import Logging
import Synchronization

/// The highest scheduler leader term this node has seen, kept across the node's own restarts in
/// `STATE/scheduler-term`, so that a scheduler that has lost the lease (paused, cut off, not yet
/// aware of it) cannot make the node act for it once a newer leader has spoken to it.
///
/// - Term 0 means "no election in use" (a single scheduler) and is always admitted.
/// - A term above the highest seen is written to the file (atomically: a temporary file, flushed
///   to disk, renamed over the old one) *before* the node acts on it; if that write fails, the
///   message is refused, since admitting it would let a node restart forget the term.
/// - A nonzero term below the highest seen is refused.
///
/// A file that cannot be read as a number is reported and taken as 0 (it is only ever replaced
/// whole, so this means someone else wrote it).
public final class SchedulerTermFence: Sendable {
    /// The file's name inside the node's state folder.
    public static let fileName = "scheduler-term"

    /// Where the term is kept; nil: in memory only (a node without a state folder).
    public let file: URL?
    private let highest: Mutex<UInt64>

    /// Loads the term kept in `stateDirectory` (0 if there is none yet).
    public init(stateDirectory: String?, logger: Logger) {
        guard let stateDirectory else {
            file = nil
            highest = Mutex(0)
            return
        }
        let file = URL(fileURLWithPath: stateDirectory).appendingPathComponent(Self.fileName)
        self.file = file
        var stored: UInt64 = 0
        if let text = try? String(contentsOf: file, encoding: .utf8) {
            if let value = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                stored = value
            } else {
                logger.error(
                    "the kept scheduler term is not a number; starting from 0",
                    metadata: ["file": "\(file.path)"]
                )
            }
        }
        highest = Mutex(stored)
    }

    /// The highest term seen so far.
    public var highestSeen: UInt64 { highest.withLock { $0 } }

    /// Admits a message from scheduler term `term` (nil), raising and keeping the highest term if
    /// it is higher; or says why not (for a refusal sent back to the scheduler, or logged).
    public func admit(_ term: UInt64) -> SchedulerTermRefusal? {
        guard term > 0 else { return nil }
        return highest.withLock { highest -> SchedulerTermRefusal? in
            if term < highest { return .stale(term: term, highest: highest) }
            if term == highest { return nil }
            if let file {
                do {
                    try Self.write(term, to: file)
                } catch {
                    return .notKept(term: term, file: file.path, error: "\(error)")
                }
            }
            highest = term
            return nil
        }
    }

    /// Writes `term` to `file` so that a crash leaves either the old or the new value.
    private static func write(_ term: UInt64, to file: URL) throws {
        let directory = file.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let temporary = directory.appendingPathComponent(".\(fileName).\(UUID().uuidString)")
        let bytes = Array("\(term)\n".utf8)
        let descriptor = open(temporary.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw TermFileError(operation: "create \(temporary.path)") }
        let written = bytes.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
        let synced = fsync(descriptor)
        close(descriptor)
        guard written == bytes.count, synced == 0 else {
            unlink(temporary.path)
            throw TermFileError(operation: "write \(temporary.path)")
        }
        guard rename(temporary.path, file.path) == 0 else {
            let error = TermFileError(operation: "rename to \(file.path)")
            unlink(temporary.path)
            throw error
        }
        // The rename itself reaches the disk with the folder.
        let folder = open(directory.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            fsync(folder)
            close(folder)
        }
    }
}

/// Why a message from a scheduler was not admitted by the term fence.
public enum SchedulerTermRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// Its term is below one this node has seen.
    case stale(term: UInt64, highest: UInt64)
    /// Its term is new, but this node could not keep it.
    case notKept(term: UInt64, file: String, error: String)

    public var description: String {
        switch self {
        case .stale(let term, let highest):
            "from scheduler term \(term), but term \(highest) has been seen: a newer scheduler leads"
        case .notKept(let term, let file, let error):
            "scheduler term \(term) could not be kept in \(file) (\(error)), so it is not acted on"
        }
    }
}

/// A failed system call while keeping the term, with errno's text.
private struct TermFileError: Error, CustomStringConvertible {
    let operation: String
    let code = errno
    var description: String { "\(operation): \(String(cString: strerror(code)))" }
}
