import Foundation
import HangarClient
import HangarShared
import Hummingbird
import SwiftProtobuf
import Synchronization

/// envd's `filesystem.Filesystem` service on the sandbox's file operations (the node resolves every
/// path inside the sandbox), and directory watches: WatchDir's stream native (``EnvdNativeWatch``),
/// CreateWatcher's polled ones kept in the sandbox (``EnvdWatchers``).
extension Gateway {
    func addFilesystemRoutes(to router: Router<GatewayContext>) {
        let authority = self.authority
        router.post("/filesystem.Filesystem/Stat") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_StatRequest.self) { sandbox, input in
                let path = try EnvdPaths.resolve(input.path, user: try EnvdUser(request))
                let entry = try await EnvdPaths.entry(sandbox, path)
                return Filesystem_StatResponse.with { $0.entry = entry }
            }
        }
        router.post("/filesystem.Filesystem/ListDir") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_ListDirRequest.self) { sandbox, input in
                let path = try EnvdPaths.resolve(input.path, user: try EnvdUser(request))
                // E2B: depth 0 means 1; the entries of `path` and, below depth 1, of its directories.
                let depth = max(input.depth, 1)
                let directory = try await EnvdPaths.entry(sandbox, path)
                guard directory.type == .directory else {
                    throw GatewayError(.badRequest, "path \(path) is not a directory")
                }
                let entries = try await sandbox.files.list(path, depth: depth)
                return Filesystem_ListDirResponse.with { $0.entries = entries.map(EnvdPaths.entryInfo) }
            }
        }
        router.post("/filesystem.Filesystem/MakeDir") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_MakeDirRequest.self) { sandbox, input in
                let path = try EnvdPaths.resolve(input.path, user: try EnvdUser(request))
                // E2B answers already_exists for a directory that is there (the SDK's make_dir then
                // returns False).
                if try await sandbox.files.exists(path) {
                    throw GatewayError(.conflict, "directory \(path) already exists")
                }
                try await sandbox.files.makeDirectory(path, parents: true)
                let entry = try await EnvdPaths.entry(sandbox, path)
                return Filesystem_MakeDirResponse.with { $0.entry = entry }
            }
        }
        router.post("/filesystem.Filesystem/Move") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_MoveRequest.self) { sandbox, input in
                let user = try EnvdUser(request)
                let source = try EnvdPaths.resolve(input.source, user: user)
                let destination = try EnvdPaths.resolve(input.destination, user: user)
                try await sandbox.files.rename(from: source, to: destination)
                let entry = try await EnvdPaths.entry(sandbox, destination)
                return Filesystem_MoveResponse.with { $0.entry = entry }
            }
        }
        router.post("/filesystem.Filesystem/Remove") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_RemoveRequest.self) { sandbox, input in
                let path = try EnvdPaths.resolve(input.path, user: try EnvdUser(request))
                try await sandbox.files.remove(path, recursive: true)
                return Filesystem_RemoveResponse()
            }
        }
        router.post("/filesystem.Filesystem/CreateWatcher") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_CreateWatcherRequest.self) { sandbox, input in
                let user = try EnvdUser(request)
                let path = try EnvdPaths.resolve(input.path, user: user)
                let id = try await EnvdWatchers.start(
                    sandbox,
                    path: path,
                    recursive: input.recursive,
                    user: user
                )
                return Filesystem_CreateWatcherResponse.with { $0.watcherID = id.description }
            }
        }
        router.post("/filesystem.Filesystem/GetWatcherEvents") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_GetWatcherEventsRequest.self) {
                sandbox,
                input in
                let id = try EnvdWatchers.ID(input.watcherID)
                let events = try await EnvdWatchers.takeEvents(sandbox, id)
                return Filesystem_GetWatcherEventsResponse.with { $0.events = events }
            }
        }
        router.post("/filesystem.Filesystem/RemoveWatcher") { request, context in
            await Self.envdUnary(request, context, authority, Filesystem_RemoveWatcherRequest.self) { sandbox, input in
                try await EnvdWatchers.remove(sandbox, try EnvdWatchers.ID(input.watcherID))
                return Filesystem_RemoveWatcherResponse()
            }
        }
        router.post("/filesystem.Filesystem/WatchDir") { request, context in
            let user: EnvdUser
            do {
                user = try EnvdUser(request)
            } catch {
                return ConnectRPC.unaryError(GatewayError.from(error))
            }
            return await Self.envdStream(
                request,
                context,
                authority,
                Filesystem_WatchDirRequest.self,
                Filesystem_WatchDirResponse.self
            ) { sandbox, input, send in
                let path = try EnvdPaths.resolve(input.path, user: user)
                let entry = try await EnvdPaths.entry(sandbox, path)
                guard entry.type == .directory else {
                    throw GatewayError(.badRequest, "path \(path) is not a directory")
                }
                try await EnvdNativeWatch.relay(
                    sandbox,
                    path: path,
                    recursive: input.recursive,
                    keepalive: EnvdProcesses.keepalive(request),
                    send: send
                )
            }
        }
    }
}

/// WatchDir's stream: the sandbox's agent watches the directory with inotify (the node's
/// `files.watch`), and its changes go out as they come, with keepalives. The stream lives as long as
/// the client's request, so the watch need not outlive the gateway: when the stream ends (the client
/// went away, the directory was removed, the sandbox ended), the node's watch is ended too. A node's
/// watch lasts at most an hour; another follows it until the stream ends.
enum EnvdNativeWatch {
    /// The longest watch a node takes.
    static let watchMs: UInt32 = 3_600_000

    static func relay(
        _ sandbox: Sandbox,
        path: String,
        recursive: Bool,
        keepalive: Duration,
        send: @escaping @Sendable (Filesystem_WatchDirResponse) async throws -> Void
    ) async throws {
        let current = CurrentWatch()
        defer {
            // The node's watch ends with the stream (best effort: at worst it ends at its timeout).
            if let id = current.id.withLock({ $0 }) { Task { await sandbox.files.unwatch(id) } }
        }
        let request = Hangar_V1_SandboxWatchRequest.with {
            $0.path = path
            $0.recursive = recursive
            $0.timeoutMs = watchMs
        }
        var first = true
        while true {
            let announce = first
            let ended = try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask {
                    let events = sandbox.stream(
                        "files.watch",
                        request,
                        within: .milliseconds(watchMs) + sandbox.hangar.timeouts.streamGrace
                    )
                    for try await payload in events {
                        let event = try Hangar_V1_SandboxWatchEvent(serializedBytes: payload)
                        switch event.kind {
                        case .started(let started):
                            current.id.withLock { $0 = started.watchID }
                            if announce { try await send(.with { $0.start = .init() }) }
                        case .changes(let batch):
                            for change in batch.events {
                                try await send(.with { $0.filesystem = Self.event(change) })
                            }
                        case .ended(let ended):
                            current.id.withLock { $0 = nil }
                            return ended.reason
                        case .error(let error):
                            throw await sandbox.nodeError(error)
                        case .agentError(let error):
                            throw GatewayError(.internal, "the sandbox cannot watch \(path): \(error.message)")
                        case nil:
                            continue
                        }
                    }
                    return nil
                }
                group.addTask {
                    while true {
                        try await Task.sleep(for: keepalive)
                        try await send(.with { $0.keepalive = .init() })
                    }
                }
                defer { group.cancelAll() }
                return try await group.next() ?? nil
            }
            first = false
            // Only a watch that ran its hour is followed by another; any other end ends the stream.
            guard ended == "timeout" else { return }
        }
    }

    /// The node's watch that runs now, to end with the stream.
    final class CurrentWatch: Sendable {
        let id = Mutex<String?>(nil)
    }

    /// An agent's change as envd's event: its path relative to the watched directory, and its kind.
    static func event(_ change: Hangar_V1_AgentWatchEvent) -> Filesystem_FilesystemEvent {
        .with {
            $0.name = change.path
            $0.type =
                switch change.op {
                case .create: .create
                case .write: .write
                case .remove: .remove
                case .rename: .rename
                case .chmod: .chmod
                case .UNRECOGNIZED: .unspecified
                }
        }
    }
}

/// CreateWatcher's directory watchers, kept in the sandbox (so they survive the gateway, which keeps
/// no state between GetWatcherEvents calls): each is a background command of the sandbox that polls
/// the directory with `find` every 0.2 s and writes what changed (created, written, removed, mode
/// changed; a rename is a removal and a creation) as `TYPE<TAB>NAME` lines to a spool in the
/// sandbox's /tmp that GetWatcherEvents takes (renames away, reads and removes).
/// A watcher id is `PID.TOKEN`: the command's pid and its spool's name.
enum EnvdWatchers {
    /// `$1` the directory, `$2` the depth, `$3` its own directory (in the sandbox's /tmp): each
    /// round's changes become a whole file `$3/events.N` at once (a
    /// rename), so that ``takeEvents(_:_:)`` never reads one half written, nor loses one written
    /// after it looked.
    static let script = #"""
        dir=$1; depth=$2; work=$3; round=0
        mkdir -p "$work" || exit 1
        snap() { find "$dir" -mindepth 1 -maxdepth "$depth" -printf '%P\t%y\t%T@\t%s\t%m\n' 2>/dev/null | LC_ALL=C sort > "$1"; }
        snap "$work/old"
        echo ready
        while sleep 0.2; do
          [ -d "$dir" ] || exit 0
          snap "$work/new"
          awk -F '\t' 'FILENAME == ARGV[1] { o[$1] = $0; m[$1] = $5; next }
            { n[$1] = 1; if (!($1 in o)) print "1\t" $1; else if (o[$1] != $0) print (m[$1] != $5 ? "5" : "2") "\t" $1 }
            END { for (k in o) if (!(k in n)) print "3\t" k }' "$work/old" "$work/new" > "$work/diff"
          if [ -s "$work/diff" ]; then
            round=$((round + 1))
            mv "$work/diff" "$work/events.$round"
          fi
          mv "$work/new" "$work/old"
        done
        """#
    /// argv[3] of every watcher: how List tells them from the user's processes.
    static let marker = "hangar-watch"

    /// A watcher's id: its pid and its spool's token.
    struct ID: CustomStringConvertible {
        let pid: UInt32
        let token: String

        var description: String { "\(pid).\(token)" }
        var spool: String { "/tmp/.hangar-watch-\(token)" }

        init(pid: UInt32, token: String) {
            self.pid = pid
            self.token = token
        }

        init(_ text: String) throws {
            let parts = text.split(separator: ".", maxSplits: 1)
            guard parts.count == 2, let pid = UInt32(parts[0]), parts[1].count == 32,
                parts[1].allSatisfy({ $0.isHexDigit })
            else { throw GatewayError(.notFound, "no watcher with id '\(text.prefix(80))'") }
            self.init(pid: pid, token: String(parts[1]))
        }
    }

    /// Whether a process is a watcher (List leaves them out).
    static func isWatcher(_ argv: [String]) -> Bool { argv.count > 3 && argv[3] == marker }

    /// Starts a watcher of `path` and returns once it has its first view of the directory.
    static func start(
        _ sandbox: Sandbox,
        path: String,
        recursive: Bool,
        user: EnvdUser
    ) async throws
        -> ID
    {
        let entry = try await EnvdPaths.entry(sandbox, path)
        guard entry.type == .directory else { throw GatewayError(.badRequest, "path \(path) is not a directory") }
        let token = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let pending = ID(pid: 0, token: token)
        let pid = try await sandbox.commands.start(
            ["/bin/sh", "-c", script, marker, path, recursive ? "64" : "1", pending.spool],
            user: user.name
        )
        let id = ID(pid: pid, token: token)
        // Wait (at most 10 s) for its first snapshot, so that changes right after are seen.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                var output = Data()
                for try await event in sandbox.commands.attach(pid: pid) {
                    switch event {
                    case .stdout(let data):
                        output += data
                        if output.starts(with: Data("ready\n".utf8)) { return }
                    case .exited:
                        throw GatewayError(.internal, "the watcher of \(path) ended before it started")
                    default: continue
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: .seconds(10))
                throw GatewayError(.timeout, "the watcher of \(path) did not start within 10 s")
            }
            defer { group.cancelAll() }
            _ = try await group.next()
        }
        return id
    }

    /// The events a spooled watcher has seen since the last call.
    static func takeEvents(_ sandbox: Sandbox, _ id: ID) async throws -> [Filesystem_FilesystemEvent] {
        let entries: [FileEntry]
        do {
            entries = try await sandbox.files.list(id.spool)
        } catch let error as HangarClientError where error.kind == .notFound {
            throw GatewayError(.notFound, "no watcher with id '\(id)'")
        }
        // events.1, events.2, …: each a whole round of changes, taken in the order they were seen.
        let rounds = entries.compactMap { entry -> (Int, String)? in
            guard entry.name.hasPrefix("events."), let round = Int(entry.name.dropFirst(7)) else { return nil }
            return (round, entry.path)
        }.sorted { $0.0 < $1.0 }
        var text = ""
        for (_, path) in rounds {
            text += String(decoding: try await sandbox.files.read(path), as: UTF8.self)
            try? await sandbox.files.remove(path)
        }
        return parse(text)
    }

    /// Stops a watcher and removes its spool.
    static func remove(_ sandbox: Sandbox, _ id: ID) async throws {
        let existed = try await sandbox.files.exists(id.spool)
        try? await sandbox.commands.signal(pid: id.pid, SIGKILL)
        try? await sandbox.files.remove(id.spool, recursive: true)
        guard existed else { throw GatewayError(.notFound, "no watcher with id '\(id)'") }
    }

    /// `TYPE<TAB>NAME` lines as events.
    static func parse(_ text: String) -> [Filesystem_FilesystemEvent] {
        text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: "\t", maxSplits: 1)
            guard parts.count == 2, let type = Int(parts[0]), let kind = Filesystem_EventType(rawValue: type) else {
                return nil
            }
            return .with {
                $0.name = String(parts[1])
                $0.type = kind
            }
        }
    }
}

/// Paths and entries as envd gives them.
enum EnvdPaths {
    /// The home directory of a sandbox user.
    static func home(_ user: EnvdUser) -> String { user.name == "root" ? "/root" : "/home/user" }

    /// `path` made absolute as envd does: relative to the user's home, `~` meaning the home.
    /// (The node resolves the result inside the sandbox: `..` cannot leave it.)
    static func resolve(_ path: String, user: EnvdUser) throws -> String {
        guard !path.isEmpty else { throw GatewayError(.badRequest, "path is empty") }
        guard !path.utf8.contains(0), path.utf8.count <= 4096 else {
            throw GatewayError(.badRequest, "path is not a valid file name")
        }
        if path == "~" { return home(user) }
        if path.hasPrefix("~/") { return home(user) + path.dropFirst() }
        if path.hasPrefix("/") { return path }
        return home(user) + "/" + path
    }

    /// The entry at `path` (not found: 404 / not_found).
    static func entry(_ sandbox: Sandbox, _ path: String) async throws -> Filesystem_EntryInfo {
        entryInfo(try await sandbox.files.stat(path))
    }

    /// Hangar's file entry as envd's EntryInfo: the mode with Go's type bits (as envd reports
    /// `os.FileMode`), and the permissions in Go's words (`drwxr-xr-x`). Owner and group are not
    /// known to the node and are left empty.
    static func entryInfo(_ entry: FileEntry) -> Filesystem_EntryInfo {
        var info = Filesystem_EntryInfo()
        info.name = entry.name
        info.path = entry.path
        info.size = Int64(clamping: entry.size)
        let permissions = entry.mode & 0o777
        switch entry.kind {
        case .file:
            info.type = .file
            info.mode = permissions
        case .directory:
            info.type = .directory
            info.mode = permissions | (1 << 31)
        case .symlink:
            info.type = .symlink
            info.isSymlink = true
            info.symlinkTarget = entry.symlinkTarget
            info.mode = permissions | (1 << 27)
        case .other:
            info.type = .unspecified
            info.mode = permissions
        }
        info.permissions = permissionString(entry.kind, permissions)
        info.modifiedTime = Google_Protobuf_Timestamp(date: entry.modifiedAt)
        return info
    }

    static func permissionString(_ kind: FileEntry.Kind, _ bits: UInt32) -> String {
        let type =
            switch kind {
            case .directory: "d"
            case .symlink: "L"
            default: "-"
            }
        let letters = Array("rwxrwxrwx")
        return type
            + String(
                (0..<9).map { index in bits & (1 << (8 - UInt32(index))) != 0 ? letters[index] : "-" }
            )
    }
}
