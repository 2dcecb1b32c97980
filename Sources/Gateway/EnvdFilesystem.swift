import Foundation
import HangarClient
import Hummingbird
import SwiftProtobuf

/// envd's `filesystem.Filesystem` service on the sandbox's file operations (the node resolves every
/// path inside the sandbox). Directory watchers (WatchDir, CreateWatcher, GetWatcherEvents,
/// RemoveWatcher) are not served yet: they answer `unimplemented`.
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
        for method in ["WatchDir", "CreateWatcher", "GetWatcherEvents", "RemoveWatcher"] {
            router.post(RouterPath("/filesystem.Filesystem/\(method)")) { _, _ in
                ConnectRPC.unaryError(
                    GatewayError(
                        .notImplemented,
                        "directory watching (\(method)) is not supported by the Hangar gateway yet"
                    )
                )
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
