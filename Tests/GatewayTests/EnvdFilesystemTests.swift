import Foundation
import Glibc
import HangarClient
import HangarClusterTestSupport
import HangarGateway
import Testing

/// envd's filesystem service and `/files` through the gateway, against a real cluster.
@Suite("Gateway envd: filesystem.Filesystem and /files on a real sandbox", .serialized, .enabled(if: geteuid() == 0))
struct EnvdFilesystemTests {
    @Test(
        "Stat, ListDir with depth, MakeDir (twice: already_exists), Move, Remove; a watcher's events; not found; a wrong token"
    )
    func filesystem() async throws {
        try await EnvdHarness.with { env in
            try await env.sandbox.files.makeDirectory("/home/user/tree/inner")
            try await env.sandbox.files.write("/home/user/tree/inner/leaf.txt", "leaf")
            try await env.sandbox.files.write("/home/user/tree/top.txt", "top", mode: 0o600)

            // Stat: a relative path is under the user's home; type, size, mode, permissions, time.
            let stat = try await env.unary("filesystem.Filesystem/Stat", "{\"path\":\"tree/top.txt\"}")
            #expect(stat.status == 200, "\(stat.text)")
            let top = try Filesystem_StatResponse(jsonUTF8Data: stat.body).entry
            #expect(top.name == "top.txt" && top.path == "/home/user/tree/top.txt" && top.type == .file)
            #expect(top.size == 3 && top.mode == 0o600 && top.permissions == "-rw-------", "\(top)")
            #expect(abs(top.modifiedTime.date.timeIntervalSinceNow) < 300)
            let directory = try Filesystem_StatResponse(
                jsonUTF8Data: try await env.unary("filesystem.Filesystem/Stat", "{\"path\":\"/home/user/tree\"}").body
            ).entry
            #expect(directory.type == .directory && directory.permissions.hasPrefix("d"), "\(directory)")

            // ListDir: depth 1 is the directory's own entries; depth 2 goes one level down.
            let shallow = try Filesystem_ListDirResponse(
                jsonUTF8Data: try await env.unary(
                    "filesystem.Filesystem/ListDir",
                    "{\"path\":\"/home/user/tree\",\"depth\":1}"
                )
                .body
            ).entries
            #expect(Set(shallow.map(\.name)) == ["inner", "top.txt"], "\(shallow)")
            let deep = try Filesystem_ListDirResponse(
                jsonUTF8Data: try await env.unary(
                    "filesystem.Filesystem/ListDir",
                    "{\"path\":\"/home/user/tree\",\"depth\":2}"
                )
                .body
            ).entries
            #expect(deep.contains { $0.path == "/home/user/tree/inner/leaf.txt" && $0.size == 4 }, "\(deep)")

            // MakeDir makes parents; a second time is already_exists (the SDK's make_dir says False).
            let made = try await env.unary("filesystem.Filesystem/MakeDir", "{\"path\":\"/home/user/new/a/b\"}")
            #expect(made.status == 200, "\(made.text)")
            #expect(try Filesystem_MakeDirResponse(jsonUTF8Data: made.body).entry.type == .directory)
            #expect(try await env.sandbox.files.stat("/home/user/new/a/b").kind == .directory)
            let again = try await env.unary("filesystem.Filesystem/MakeDir", "{\"path\":\"/home/user/new/a/b\"}")
            #expect(again.status == 409 && again.json["code"] as? String == "already_exists", "\(again.text)")

            // Move answers the entry at its destination.
            let moved = try await env.unary(
                "filesystem.Filesystem/Move",
                "{\"source\":\"/home/user/tree/top.txt\",\"destination\":\"/home/user/new/top.txt\"}"
            )
            #expect(try Filesystem_MoveResponse(jsonUTF8Data: moved.body).entry.path == "/home/user/new/top.txt")
            #expect(try await env.sandbox.files.read("/home/user/new/top.txt") == Data("top".utf8))

            // Remove is recursive, as envd's.
            let removed = try await env.unary("filesystem.Filesystem/Remove", "{\"path\":\"/home/user/tree\"}")
            #expect(removed.status == 200, "\(removed.text)")
            #expect(try await !env.sandbox.files.exists("/home/user/tree"))

            // A watcher: CreateWatcher, then what changed comes with GetWatcherEvents (each event
            // once), until RemoveWatcher; watchers are not among List's processes.
            let created = try await env.unary("filesystem.Filesystem/CreateWatcher", "{\"path\":\"/home/user/new\"}")
            #expect(created.status == 200, "\(created.text)")
            let watcherID = try Filesystem_CreateWatcherResponse(jsonUTF8Data: created.body).watcherID
            try await env.sandbox.files.write("/home/user/new/seen.txt", "seen")
            var seen: [Filesystem_FilesystemEvent] = []
            try await waitUntil("the watcher reports the new file", within: .seconds(10)) {
                let answer = try await env.unary(
                    "filesystem.Filesystem/GetWatcherEvents",
                    "{\"watcherId\":\"\(watcherID)\"}"
                )
                seen += try Filesystem_GetWatcherEventsResponse(jsonUTF8Data: answer.body).events
                return seen.contains { $0.name == "seen.txt" && $0.type == .create }
            }
            let processes = try Process_ListResponse(
                jsonUTF8Data: try await env.unary("process.Process/List", "{}").body
            ).processes
            #expect(!processes.contains { $0.config.args.contains("hangar-watch") }, "\(processes)")
            let removedWatcher = try await env.unary(
                "filesystem.Filesystem/RemoveWatcher",
                "{\"watcherId\":\"\(watcherID)\"}"
            )
            #expect(removedWatcher.status == 200, "\(removedWatcher.text)")
            let gone = try await env.unary("filesystem.Filesystem/GetWatcherEvents", "{\"watcherId\":\"\(watcherID)\"}")
            #expect(gone.status == 404, "\(gone.text)")
            try await waitUntil("the watcher's process is gone", within: .seconds(10)) {
                try await !env.sandbox.commands.list().contains { $0.argv.contains("hangar-watch") }
            }

            // Not found and a wrong token.
            let missing = try await env.unary("filesystem.Filesystem/Stat", "{\"path\":\"/home/user/nothing\"}")
            #expect(missing.status == 404 && missing.json["code"] as? String == "not_found", "\(missing.text)")
            let wrong = try await env.unary("filesystem.Filesystem/Stat", "{\"path\":\"/\"}", token: "nope")
            #expect(wrong.status == 401)
        }
    }

    @Test(
        "/files: a 2.5 MiB multipart upload and octet-stream upload read back byte for byte, several files in one upload, 404, 413, a path escaping the sandbox stays inside"
    )
    func files() async throws {
        try await EnvdHarness.with(maxUploadBytes: 4 << 20) { env in
            var big = Data(count: 5 << 19)
            for index in big.indices { big[index] = UInt8(truncatingIfNeeded: index &* 2_654_435_761 >> 13) }

            // multipart/form-data, one file, its path in ?path= (a missing parent is made).
            let boundary = "hangar-test-boundary"
            let one = multipart([("ignored-name", big)], boundary: boundary)
            let upload = try await env.http(
                "POST",
                "/files?path=/home/user/up/big.bin",
                headers: ["Content-Type": "multipart/form-data; boundary=\(boundary)"],
                body: one
            )
            #expect(upload.status == 200, "\(upload.text)")
            let infos = try JSONSerialization.jsonObject(with: upload.body) as? [[String: Any]]
            #expect(infos?.count == 1 && infos?.first?["path"] as? String == "/home/user/up/big.bin")
            #expect(infos?.first?["name"] as? String == "big.bin" && infos?.first?["type"] as? String == "file")
            #expect(try await env.sandbox.files.read("/home/user/up/big.bin") == big)
            let download = try await env.http("GET", "/files?path=/home/user/up/big.bin")
            #expect(download.status == 200 && download.contentType == "application/octet-stream")
            #expect(download.body == big, "\(download.body.count) bytes came back")

            // application/octet-stream, a relative path (under the home of ?username=).
            let octet = try await env.http(
                "POST",
                "/files?path=raw.bin&username=user",
                headers: ["Content-Type": "application/octet-stream"],
                body: big.prefix(1_500_000)
            )
            #expect(octet.status == 200, "\(octet.text)")
            #expect(try await env.sandbox.files.read("/home/user/raw.bin") == big.prefix(1_500_000))

            // Several files in one multipart upload, each part's file name its path.
            let several = multipart(
                [("/home/user/m/one.txt", Data("one".utf8)), ("m/two.txt", Data("two".utf8))],
                boundary: boundary
            )
            let both = try await env.http(
                "POST",
                "/files",
                headers: ["Content-Type": "multipart/form-data; boundary=\(boundary)"],
                body: several
            )
            #expect(both.status == 200, "\(both.text)")
            #expect(try await env.sandbox.files.read("/home/user/m/one.txt") == Data("one".utf8))
            #expect(try await env.sandbox.files.read("/home/user/m/two.txt") == Data("two".utf8))

            // A missing file: 404 with E2B's body; too large: 413.
            let missing = try await env.http("GET", "/files?path=/home/user/nothing.txt")
            #expect(missing.status == 404 && missing.json["code"] as? Int == 404, "\(missing.text)")
            #expect((missing.json["message"] as? String)?.contains("does not exist") == true)
            let huge = try await env.http(
                "POST",
                "/files?path=/home/user/huge.bin",
                headers: ["Content-Type": "application/octet-stream"],
                body: Data(count: 5 << 20)
            )
            #expect(huge.status == 413 && huge.json["code"] as? Int == 413, "\(huge.text)")

            // A path that climbs out of the sandbox is refused by the node (400, its reason passed
            // on), and nothing is written outside; what the sandbox sees is its own anyway.
            let escape = try await env.http(
                "POST",
                "/files?path=/../../../../tmp/hangar-gateway-escape-\(env.sandbox.id)",
                headers: ["Content-Type": "application/octet-stream"],
                body: Data("inside".utf8)
            )
            #expect(
                escape.status == 400 && (escape.json["message"] as? String)?.contains("..") == true,
                "\(escape.text)"
            )
            #expect(!FileManager.default.fileExists(atPath: "/tmp/hangar-gateway-escape-\(env.sandbox.id)"))
            let outside = try await env.http("GET", "/files?path=/../../../../etc/hostname")
            #expect(outside.status == 400, "\(outside.status) \(outside.text)")
            let wrong = try await env.http("GET", "/files?path=/home/user/raw.bin", token: "x.y")
            #expect(wrong.status == 401 && wrong.json["code"] as? Int == 401)
        }
    }

    /// A multipart/form-data body of parts named "file", each with its file name.
    func multipart(_ files: [(String, Data)], boundary: String) -> Data {
        var body = Data()
        for (name, data) in files {
            body += Data("--\(boundary)\r\n".utf8)
            body += Data("Content-Disposition: form-data; name=\"file\"; filename=\"\(name)\"\r\n".utf8)
            body += Data("Content-Type: application/octet-stream\r\n\r\n".utf8)
            body += data
            body += Data("\r\n".utf8)
        }
        body += Data("--\(boundary)--\r\n".utf8)
        return body
    }
}
