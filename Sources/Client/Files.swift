import Foundation
import HangarShared
import Synchronization

/// A file or directory of a sandbox (``Files/list(_:depth:)``, ``Files/stat(_:)``).
public struct FileEntry: Sendable, Equatable {
    /// What kind of entry it is.
    public enum Kind: Sendable, Equatable {
        /// A regular file.
        case file
        /// A directory.
        case directory
        /// A symbolic link (``FileEntry/symlinkTarget`` says where to).
        case symlink
        /// Anything else (a socket, a device, ...).
        case other
    }

    /// Its name in its directory.
    public var name: String
    /// Its path in the sandbox.
    public var path: String
    /// What kind of entry it is.
    public var kind: Kind
    /// Its size in bytes.
    public var size: UInt64
    /// Its permission bits (and type bits, as `st_mode`).
    public var mode: UInt32
    /// When it was last modified.
    public var modifiedAt: Date
    /// Where a symbolic link points; empty otherwise.
    public var symlinkTarget: String

    init(_ entry: Hangar_V1_AgentEntry) {
        name = entry.name
        path = entry.path
        kind =
            switch entry.type {
            case .file: .file
            case .directory: .directory
            case .symlink: .symlink
            default: .other
            }
        size = entry.size
        mode = entry.mode
        modifiedAt = Date(timeIntervalSince1970: Double(entry.mtimeMs) / 1000)
        symlinkTarget = entry.symlinkTarget
    }
}

/// A change in a watched directory (``Files/watch(_:recursive:timeout:)``).
public struct FileChange: Sendable, Equatable {
    /// What happened to the entry.
    public enum Operation: Sendable, Equatable {
        /// It was made, or moved into the directory.
        case create
        /// Its content was written.
        case write
        /// It was removed.
        case remove
        /// It was moved away (its new name, if inside the watch, comes as a ``create``).
        case rename
        /// Its permissions or owner changed.
        case chmod
        /// Not a change: the sandbox's agent says something about the watch itself, in ``note``
        /// (changes were dropped because too many came at once, or directories below are not
        /// watched); ``path`` is empty. After dropped changes, list the directory to catch up.
        case notice
    }

    /// Its path relative to the watched directory.
    public var path: String
    /// What happened.
    public var operation: Operation
    /// Whether it is a directory.
    public var isDirectory: Bool
    /// What the agent said, for a ``Operation/notice``; nil otherwise.
    public var note: String?

    /// A ``Operation/notice`` of `note`.
    init(note: String) {
        path = ""
        operation = .notice
        isDirectory = false
        self.note = note
    }

    init(_ event: Hangar_V1_AgentWatchEvent) {
        path = event.path
        operation =
            switch event.op {
            case .create: .create
            case .remove: .remove
            case .rename: .rename
            case .chmod: .chmod
            default: .write
            }
        isDirectory = event.directory
    }
}

/// The files of a sandbox (``Sandbox/files``). Relative paths are under /home/user.
public struct Files: Sendable {
    let sandbox: Sandbox

    /// The most one read or write carries; larger files take several.
    public static let chunkBytes = 1 << 20

    /// Reads the whole file at `path`, a MiB at a time.
    public func read(_ path: String) async throws -> Data {
        var content = Data()
        while true {
            var request = Hangar_V1_SandboxOpRequest()
            request.read.path = path
            request.read.offset = UInt64(content.count)
            request.read.length = UInt64(Self.chunkBytes)
            let reply = try await sandbox.operation("files.read", request, about: path)
            content += reply.data.data
            if reply.data.eof || reply.data.data.isEmpty { return content }
        }
    }

    /// Reads at most `length` bytes (at most ``chunkBytes``) of the file at `path` from `offset`;
    /// `eof` when the read reached the end of the file.
    public func read(
        _ path: String,
        offset: UInt64,
        length: Int = Files.chunkBytes
    ) async throws -> (
        data: Data, eof: Bool
    ) {
        var request = Hangar_V1_SandboxOpRequest()
        request.read.path = path
        request.read.offset = offset
        request.read.length = UInt64(max(1, min(length, Self.chunkBytes)))
        let reply = try await sandbox.operation("files.read", request, about: path)
        return (reply.data.data, reply.data.eof || reply.data.data.isEmpty)
    }

    /// Appends `data` (at most ``chunkBytes``) to the file at `path`.
    public func append(_ path: String, _ data: Data) async throws {
        guard data.count <= Self.chunkBytes else {
            throw HangarClientError(.invalidArgument, "an append carries at most \(Self.chunkBytes) bytes")
        }
        var request = Hangar_V1_SandboxOpRequest()
        request.write.path = path
        request.write.data = data
        request.write.append = true
        _ = try await sandbox.operation("files.write", request, about: path)
    }

    /// Writes `data` to `path` (its directory must exist): the first MiB replaces the file
    /// atomically, the rest is appended a MiB at a time. `mode` is its permission bits (0644 when nil).
    public func write(_ path: String, _ data: Data, mode: UInt32? = nil) async throws {
        var start = 0
        repeat {
            let end = min(start + Self.chunkBytes, data.count)
            var request = Hangar_V1_SandboxOpRequest()
            request.write.path = path
            request.write.data = data.subdata(in: (data.startIndex + start)..<(data.startIndex + end))
            request.write.append = start > 0
            request.write.mode = mode ?? 0
            _ = try await sandbox.operation("files.write", request, about: path)
            start = end
        } while start < data.count
    }

    /// Writes `text` as UTF-8 to `path` (as ``write(_:_:mode:)``).
    public func write(_ path: String, _ text: String, mode: UInt32? = nil) async throws {
        try await write(path, Data(text.utf8), mode: mode)
    }

    /// The entries of the directory `path` (default /home/user); `depth` above 1 recurses.
    public func list(_ path: String = "/home/user", depth: UInt32 = 1) async throws -> [FileEntry] {
        var request = Hangar_V1_SandboxOpRequest()
        request.list.path = path
        request.list.depth = depth
        let reply = try await sandbox.operation("files.list", request, about: path)
        return reply.entries.entries.map(FileEntry.init)
    }

    /// What is at `path`; throws kind `.notFound` if nothing is.
    public func stat(_ path: String) async throws -> FileEntry {
        var request = Hangar_V1_SandboxOpRequest()
        request.stat.path = path
        let reply = try await sandbox.operation("files.stat", request, about: path)
        return FileEntry(reply.entry)
    }

    /// Whether anything is at `path`.
    public func exists(_ path: String) async throws -> Bool {
        do {
            _ = try await stat(path)
            return true
        } catch let error as HangarClientError where error.kind == .notFound && error.code == "NOT_FOUND" {
            return false
        }
    }

    /// Watches the directory `path` (with `recursive`, the directories below it too, those made
    /// later included) and yields its changes as they happen: the sandbox's agent watches with
    /// inotify inside the sandbox; what the agent says about the watch itself (dropped changes,
    /// directories left unwatched) comes as a ``FileChange/Operation/notice``. The stream finishes when `timeout` passes (at most an hour) or the
    /// directory is removed; it throws when the watch cannot be set (e.g. not a directory) or the
    /// sandbox ends. Stopping early (cancelling the consuming task) ends the watch on the node.
    public func watch(
        _ path: String,
        recursive: Bool = false,
        timeout: Duration = .seconds(60)
    ) -> AsyncThrowingStream<FileChange, any Error> {
        let sandbox = self.sandbox
        var request = Hangar_V1_SandboxWatchRequest()
        request.path = path
        request.recursive = recursive
        do {
            let millis = try milliseconds(timeout, what: "a watch's timeout")
            guard millis <= 3_600_000 else {
                throw HangarClientError(.invalidArgument, "a watch lasts at most an hour, not \(timeout)")
            }
            request.timeoutMs = millis
        } catch {
            return AsyncThrowingStream { $0.finish(throwing: error) }
        }
        let events = sandbox.stream("files.watch", request, within: timeout + sandbox.hangar.timeouts.streamGrace)
        return AsyncThrowingStream { continuation in
            let watchID = Mutex<String?>(nil)
            let task = Task {
                do {
                    for try await payload in events {
                        let event = try Hangar_V1_SandboxWatchEvent(serializedBytes: payload)
                        switch event.kind {
                        case .started(let started): watchID.withLock { $0 = started.watchID }
                        case .changes(let batch):
                            if !batch.message.isEmpty { continuation.yield(FileChange(note: batch.message)) }
                            for change in batch.events { continuation.yield(FileChange(change)) }
                        case .ended:
                            watchID.withLock { $0 = nil }
                            continuation.finish()
                            return
                        case .error(let error): throw await sandbox.nodeError(error)
                        case .agentError(let error): throw HangarClientError(error, about: path)
                        case nil: continue
                        }
                    }
                } catch {
                    watchID.withLock { $0 = nil }
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in
                task.cancel()
                // Ended by the consumer: end the node's watch too (best effort).
                guard let id = watchID.withLock({ $0 }) else { return }
                Task { await sandbox.files.unwatch(id) }
            }
        }
    }

    /// Ends the node's watch `id` (`files.unwatch`), best effort: at worst it ends at its timeout.
    package func unwatch(_ id: String) async {
        _ = try? await sandbox.hangar.request(
            sandbox.subject("files.unwatch"),
            Hangar_V1_SandboxUnwatchRequest.with { $0.watchID = id },
            as: Hangar_V1_SandboxOpReply.self,
            who: "node \(sandbox.nodeID)",
            timeout: sandbox.hangar.timeouts.operation
        )
    }

    /// Removes the file or (empty, unless `recursive`) directory at `path`.
    public func remove(_ path: String, recursive: Bool = false) async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.remove.path = path
        request.remove.recursive = recursive
        _ = try await sandbox.operation("files.remove", request, about: path)
    }

    /// Makes the directory `path`, and its missing parents unless `parents` is false.
    public func makeDirectory(_ path: String, parents: Bool = true) async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.mkdir.path = path
        request.mkdir.parents = parents
        _ = try await sandbox.operation("files.mkdir", request, about: path)
    }

    /// Renames (moves) `from` to `to` within the sandbox.
    public func rename(from: String, to: String) async throws {
        var request = Hangar_V1_SandboxOpRequest()
        request.rename.from = from
        request.rename.to = to
        _ = try await sandbox.operation("files.rename", request, about: from)
    }
}
