import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SwiftProtobuf

/// The Connect protocol (connectrpc.com/docs/protocol) as the envd services speak it over HTTP/1.1:
/// unary calls with `application/json` or `application/proto` bodies, server-streaming calls with
/// enveloped messages (`application/connect+json` or `application/connect+proto`: a flags byte, a
/// 4-byte big-endian length, the message) ending in an end-of-stream envelope (flags 0x02) whose JSON
/// carries the error, if any.
public enum ConnectRPC {
    /// The largest request message accepted (a Connect request is one small message; file contents go
    /// through `/files`).
    public static let maxRequestBytes = 4 << 20

    /// Whether a call's body is JSON (else binary protobuf), from its content type; 415 for neither.
    static func isJSON(_ request: Request, streaming: Bool) throws -> Bool {
        let type = (request.headers[.contentType] ?? "").split(separator: ";").first.map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        }
        switch (type, streaming) {
        case ("application/json", false), ("application/connect+json", true): return true
        case ("application/proto", false), ("application/connect+proto", true): return false
        default:
            throw GatewayError(.badRequest, "unsupported content type \(type ?? "none") for a Connect call")
        }
    }

    static func decode<M: SwiftProtobuf.Message>(_ type: M.Type, _ bytes: ByteBuffer, json: Bool) throws -> M {
        do {
            if json {
                var options = JSONDecodingOptions()
                options.ignoreUnknownFields = true
                return try M(jsonUTF8Data: Data(bytes.readableBytesView), options: options)
            }
            return try M(serializedBytes: Array(bytes.readableBytesView))
        } catch {
            throw GatewayError(.badRequest, "cannot decode \(M.protoMessageName): \(error)")
        }
    }

    static func encode(_ message: some SwiftProtobuf.Message, json: Bool) throws -> [UInt8] {
        json ? Array(try message.jsonUTF8Data()) : try message.serializedBytes()
    }

    /// One envelope: `flags`, the length, `payload`.
    public static func envelope(_ payload: [UInt8], flags: UInt8 = 0) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(5 + payload.count)
        buffer.writeInteger(flags)
        buffer.writeInteger(UInt32(payload.count))
        buffer.writeBytes(payload)
        return buffer
    }

    /// The end-of-stream envelope: `{}` or `{"error":{"code":...,"message":...}}`.
    public static func endOfStream(_ error: GatewayError?) -> ByteBuffer {
        var body: [String: Any] = [:]
        if let error { body["error"] = ["code": error.kind.connectCode, "message": error.message] }
        let data = (try? JSONSerialization.data(withJSONObject: body)) ?? Data("{}".utf8)
        return envelope(Array(data), flags: 0x02)
    }

    /// The single enveloped message of a streaming request's body.
    static func firstEnvelope(_ body: ByteBuffer) throws -> ByteBuffer {
        var body = body
        guard let flags = body.readInteger(as: UInt8.self), let length = body.readInteger(as: UInt32.self) else {
            throw GatewayError(.badRequest, "a Connect streaming request must hold one enveloped message")
        }
        guard flags & 0x01 == 0 else {
            throw GatewayError(.badRequest, "compressed Connect messages are not supported")
        }
        guard Int(length) <= body.readableBytes, let message = body.readSlice(length: Int(length)) else {
            throw GatewayError(.badRequest, "a Connect envelope is shorter than its length says")
        }
        return message
    }

    /// A unary call: decodes `Input`, runs `handle`, answers its output or the error (as Connect
    /// maps codes to HTTP statuses, with `{"code","message"}` JSON).
    public static func unary<Input: SwiftProtobuf.Message, Output: SwiftProtobuf.Message>(
        _ request: Request,
        context: GatewayContext,
        _ input: Input.Type,
        _ handle: @Sendable (Input) async throws -> Output
    ) async -> Response {
        do {
            let json = try isJSON(request, streaming: false)
            let body = try await collect(request)
            let output = try await handle(try decode(Input.self, body, json: json))
            var headers = HTTPFields()
            headers[.contentType] = json ? "application/json" : "application/proto"
            return Response(
                status: .ok,
                headers: headers,
                body: .init(byteBuffer: ByteBuffer(bytes: try encode(output, json: json)))
            )
        } catch {
            return unaryError(GatewayError.from(error))
        }
    }

    /// A Connect unary error answer.
    public static func unaryError(_ error: GatewayError) -> Response {
        let status: HTTPResponse.Status =
            switch error.kind {
            case .badGateway, .unavailable: .serviceUnavailable
            case .payloadTooLarge: .badRequest
            case .conflict: .conflict
            default: error.kind.status
            }
        let body: [String: Any] = ["code": error.kind.connectCode, "message": error.message]
        let data = (try? JSONSerialization.data(withJSONObject: body)) ?? Data()
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// A server-streaming call: decodes `Input`, then streams what `handle` sends, ending with the
    /// end-of-stream envelope (carrying `handle`'s error, if it threw). A client that goes away ends
    /// `handle` (its `send` throws). `send` may be called from tasks of `handle`'s own (keepalives).
    public static func serverStream<Input: SwiftProtobuf.Message, Output: SwiftProtobuf.Message>(
        _ request: Request,
        context: GatewayContext,
        _ input: Input.Type,
        _ output: Output.Type,
        _ handle:
            @escaping @Sendable (Input, _ send: @escaping @Sendable (Output) async throws -> Void) async throws ->
            Void
    ) async -> Response {
        let json: Bool
        let message: Input
        do {
            json = try isJSON(request, streaming: true)
            message = try decode(Input.self, try firstEnvelope(try await collect(request)), json: json)
        } catch {
            return unaryError(GatewayError.from(error))
        }
        var headers = HTTPFields()
        headers[.contentType] = json ? "application/connect+json" : "application/connect+proto"
        return Response(
            status: .ok,
            headers: headers,
            body: ResponseBody { writer in
                let (stream, continuation) = AsyncStream<ByteBuffer>.makeStream()
                let task = Task {
                    var failure: GatewayError?
                    do {
                        try await handle(message) { item in
                            try Task.checkCancellation()
                            continuation.yield(envelope(try encode(item, json: json)))
                        }
                    } catch {
                        failure = GatewayError.from(error)
                    }
                    continuation.yield(endOfStream(failure))
                    continuation.finish()
                }
                do {
                    for await buffer in stream { try await writer.write(buffer) }
                } catch {
                    // The client went away: stop the call.
                    task.cancel()
                    throw error
                }
                try await writer.finish(nil)
            }
        )
    }

    static func collect(_ request: Request) async throws -> ByteBuffer {
        do {
            return try await request.body.collect(upTo: maxRequestBytes)
        } catch {
            throw GatewayError(.payloadTooLarge, "a Connect request message is limited to \(maxRequestBytes) bytes")
        }
    }
}
