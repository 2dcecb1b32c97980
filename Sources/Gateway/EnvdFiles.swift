import Foundation
import HTTPTypes
import HangarClient
import Hummingbird
import NIOCore

/// envd's `/files`: `GET ?path=&username=` answers the file's bytes, `POST` uploads one file
/// (`application/octet-stream`, to `?path=`) or several (`multipart/form-data`, parts named `file`
/// whose file name is the path, unless `?path=` names it) and answers `[{"name","type","path"}]`.
/// Both stream: a MiB at a time through the sandbox's file operations, never the whole file in the
/// gateway. Uploads over `maxUploadBytes` are refused with 413; a missing file is 404, with E2B's
/// `{"code","message"}` body.
extension Gateway {
    func addFileTransferRoutes(to router: Router<GatewayContext>) {
        let authority = self.authority
        let limit = configuration.maxUploadBytes
        router.get("/files") { request, context in
            do {
                let sandbox = try await authority.sandbox(for: request, at: try Self.envdAddress(context))
                return try await EnvdFileTransfer.download(request, sandbox: sandbox)
            } catch {
                return GatewayError.from(error).restResponse
            }
        }
        router.post("/files") { request, context in
            do {
                let sandbox = try await authority.sandbox(for: request, at: try Self.envdAddress(context))
                return try await EnvdFileTransfer.upload(request, sandbox: sandbox, limit: limit)
            } catch {
                return GatewayError.from(error).restResponse
            }
        }
    }
}

enum EnvdFileTransfer {
    /// The user of a `/files` call: `?username=`, else the Authorization header's.
    static func user(_ request: Request) throws -> EnvdUser {
        if let name = request.uri.queryParameters.get("username"), !name.isEmpty {
            guard name == "user" || name == "root" else {
                throw GatewayError(
                    .unauthorized,
                    "unknown user '\(name.prefix(64))': Hangar sandboxes have \"user\" and \"root\""
                )
            }
            return EnvdUser(name: name)
        }
        return try EnvdUser(request)
    }

    static func download(_ request: Request, sandbox: Sandbox) async throws -> Response {
        guard let raw = request.uri.queryParameters.get("path"), !raw.isEmpty else {
            throw GatewayError(.badRequest, "the path query parameter is required")
        }
        let path = try EnvdPaths.resolve(raw, user: try user(request))
        let entry: FileEntry
        do {
            entry = try await sandbox.files.stat(path)
        } catch let error as HangarClientError where error.kind == .notFound && error.code == "NOT_FOUND" {
            throw GatewayError(.notFound, "path '\(path)' does not exist")
        }
        guard entry.kind != .directory else { throw GatewayError(.badRequest, "path '\(path)' is a directory") }
        // The first chunk before answering, so that an unreadable file is an error status.
        let first = try await sandbox.files.read(path, offset: 0)
        var headers = HTTPFields()
        headers[.contentType] = "application/octet-stream"
        headers[.contentDisposition] = "attachment; filename=\"\(entry.name.replacingOccurrences(of: "\"", with: ""))\""
        return Response(
            status: .ok,
            headers: headers,
            body: ResponseBody { writer in
                var chunk = first
                var offset = UInt64(chunk.data.count)
                try await writer.write(ByteBuffer(bytes: chunk.data))
                while !chunk.eof {
                    chunk = try await sandbox.files.read(path, offset: offset)
                    offset += UInt64(chunk.data.count)
                    try await writer.write(ByteBuffer(bytes: chunk.data))
                }
                try await writer.finish(nil)
            }
        )
    }

    static func upload(_ request: Request, sandbox: Sandbox, limit: Int) async throws -> Response {
        let user = try user(request)
        let pathParameter = request.uri.queryParameters.get("path").flatMap { $0.isEmpty ? nil : String($0) }
        if let encoding = request.headers[.contentEncoding], encoding.lowercased() != "identity" {
            throw GatewayError(
                .badRequest,
                "Content-Encoding \(encoding.prefix(32)) is not supported; upload without gzip"
            )
        }
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit + 64 << 10 {
            throw tooLarge(limit)
        }
        let type = (request.headers[.contentType] ?? "").lowercased()
        var written: [String] = []
        if type.hasPrefix("multipart/form-data") {
            guard let boundary = MultipartParser.boundary(request.headers[.contentType] ?? "") else {
                throw GatewayError(.badRequest, "a multipart/form-data upload needs a boundary")
            }
            var parser = MultipartParser(boundary: boundary)
            var writer: ChunkedFileWriter?
            var total = 0
            for try await buffer in request.body {
                for event in try parser.feed(buffer.readableBytesView) {
                    switch event {
                    case .partStart(let name, let filename):
                        guard name == "file" else {
                            throw GatewayError(.badRequest, "a multipart upload's parts must be named \"file\"")
                        }
                        let target = pathParameter ?? filename
                        guard let target, !target.isEmpty else {
                            throw GatewayError(.badRequest, "a file part needs a file name (its path) or ?path=")
                        }
                        writer = ChunkedFileWriter(sandbox: sandbox, path: try EnvdPaths.resolve(target, user: user))
                    case .data(let bytes):
                        total += bytes.count
                        guard total <= limit else { throw tooLarge(limit) }
                        try await writer?.add(bytes)
                    case .partEnd:
                        if let done = writer {
                            try await done.finish()
                            written.append(done.path)
                        }
                        writer = nil
                    }
                }
            }
            guard parser.finished else {
                throw GatewayError(.badRequest, "the multipart body ended before its last boundary")
            }
        } else if type.isEmpty || type.hasPrefix("application/octet-stream") {
            guard let target = pathParameter else {
                throw GatewayError(.badRequest, "an application/octet-stream upload needs ?path=")
            }
            let writer = ChunkedFileWriter(sandbox: sandbox, path: try EnvdPaths.resolve(target, user: user))
            var total = 0
            for try await buffer in request.body {
                total += buffer.readableBytes
                guard total <= limit else { throw tooLarge(limit) }
                try await writer.add(Data(buffer.readableBytesView))
            }
            try await writer.finish()
            written.append(writer.path)
        } else {
            throw GatewayError(
                .badRequest,
                "upload with multipart/form-data or application/octet-stream, not \(type.prefix(64))"
            )
        }
        let infos: [[String: Any]] = written.map {
            ["name": ($0 as NSString).lastPathComponent, "type": "file", "path": $0]
        }
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        let data = try JSONSerialization.data(withJSONObject: infos)
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func tooLarge(_ limit: Int) -> GatewayError {
        GatewayError(.payloadTooLarge, "the upload is larger than this gateway's limit of \(limit) bytes")
    }
}

/// Writes one file a MiB at a time: the first MiB replaces the file (making its missing parent
/// directories, as envd does), the rest is appended.
final class ChunkedFileWriter {
    let sandbox: Sandbox
    let path: String
    private var pending = Data()
    private var started = false

    init(sandbox: Sandbox, path: String) {
        self.sandbox = sandbox
        self.path = path
    }

    func add(_ bytes: some Collection<UInt8>) async throws {
        pending.append(contentsOf: bytes)
        while pending.count >= Files.chunkBytes {
            let chunk = pending.prefix(Files.chunkBytes)
            try await write(Data(chunk))
            pending.removeFirst(chunk.count)
        }
    }

    func finish() async throws {
        if !pending.isEmpty || !started { try await write(pending) }
        pending = Data()
    }

    private func write(_ chunk: Data) async throws {
        if started {
            try await sandbox.files.append(path, chunk)
            return
        }
        do {
            try await sandbox.files.write(path, chunk)
        } catch let error as HangarClientError where error.kind == .notFound {
            let parent = (path as NSString).deletingLastPathComponent
            try await sandbox.files.makeDirectory(parent.isEmpty ? "/" : parent, parents: true)
            try await sandbox.files.write(path, chunk)
        }
        started = true
    }
}

/// A streaming `multipart/form-data` parser: bytes in, part starts, data and part ends out.
struct MultipartParser {
    enum Event {
        case partStart(name: String?, filename: String?)
        case data([UInt8])
        case partEnd
    }

    private enum State { case preamble, headers, body, done }

    /// The delimiter between parts: CRLF "--" boundary (the first one may lack the CRLF).
    private let delimiter: [UInt8]
    private var buffer: [UInt8] = []
    private var state = State.preamble
    /// The headers of a part are bounded (a part's headers are a few lines).
    private static let maxHeaderBytes = 16 << 10

    /// Whether the closing boundary was seen.
    var finished: Bool { state == .done }

    init(boundary: String) { delimiter = Array("\r\n--\(boundary)".utf8) }

    /// The boundary parameter of a multipart content type.
    static func boundary(_ contentType: String) -> String? {
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if pair.count == 2, pair[0].lowercased() == "boundary" {
                let value = pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                return value.isEmpty || value.utf8.count > 200 ? nil : value
            }
        }
        return nil
    }

    mutating func feed(_ bytes: some Collection<UInt8>) throws -> [Event] {
        if state == .preamble && buffer.isEmpty {
            // The body starts with the boundary without the CRLF before it.
            buffer.append(contentsOf: [13, 10])
        }
        buffer.append(contentsOf: bytes)
        var events: [Event] = []
        while true {
            switch state {
            case .done:
                buffer.removeAll()
                return events
            case .preamble:
                guard let at = find(delimiter, in: buffer) else {
                    // Keep what could be the start of the delimiter.
                    if buffer.count > delimiter.count { buffer.removeFirst(buffer.count - delimiter.count) }
                    return events
                }
                buffer.removeFirst(at + delimiter.count)
                state = .headers
            case .headers:
                // After a delimiter: "--" ends the body, else CRLF then the part's headers.
                if buffer.count >= 2, buffer[0] == 45, buffer[1] == 45 {
                    state = .done
                    continue
                }
                guard let end = find(Array("\r\n\r\n".utf8), in: buffer) else {
                    guard buffer.count <= Self.maxHeaderBytes else {
                        throw GatewayError(.badRequest, "a multipart part's headers are too long")
                    }
                    return events
                }
                let text = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeFirst(end + 4)
                let (name, filename) = Self.disposition(text)
                events.append(.partStart(name: name, filename: filename))
                state = .body
            case .body:
                if let at = find(delimiter, in: buffer) {
                    if at > 0 { events.append(.data(Array(buffer[..<at]))) }
                    events.append(.partEnd)
                    buffer.removeFirst(at + delimiter.count)
                    state = .headers
                } else {
                    let safe = buffer.count - (delimiter.count - 1)
                    if safe > 0 {
                        events.append(.data(Array(buffer[..<safe])))
                        buffer.removeFirst(safe)
                    }
                    return events
                }
            }
        }
    }

    /// The `name` and `filename` of a part's Content-Disposition.
    static func disposition(_ headers: String) -> (String?, String?) {
        var name: String?
        var filename: String?
        for line in headers.split(separator: "\r\n") where line.lowercased().hasPrefix("content-disposition:") {
            for parameter in line.split(separator: ";").dropFirst() {
                let pair = parameter.split(separator: "=", maxSplits: 1).map {
                    $0.trimmingCharacters(in: .whitespaces)
                }
                guard pair.count == 2 else { continue }
                var value = pair[1]
                if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 {
                    value = String(value.dropFirst().dropLast()).replacingOccurrences(of: "\\\"", with: "\"")
                }
                switch pair[0].lowercased() {
                case "name": name = value
                case "filename": filename = value
                default: continue
                }
            }
        }
        return (name, filename)
    }

    private func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        let first = needle[0]
        var index = 0
        while index <= haystack.count - needle.count {
            if haystack[index] == first, haystack[index..<(index + needle.count)].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }
}
