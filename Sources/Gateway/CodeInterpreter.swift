import Foundation
import HTTPTypes
import HangarClient
import Hummingbird
import NIOCore

extension Gateway {
    /// The code interpreter's API (port 49999), as e2b-code-interpreter 2.11.5 calls it and E2B's
    /// code-interpreter server answers: `POST /execute` (a cell, answered with streamed JSON lines) and
    /// `/contexts` create, list, restart and remove, over Hangar's code contexts.
    func addCodeInterpreterRoutes(to router: Router<GatewayContext>) {
        let api = CodeInterpreterAPI(authority: authority)
        router.post("/execute") { request, context in await api.execute(request, context) }
        router.post("/contexts") { request, context in await api.createContext(request, context) }
        router.get("/contexts") { request, context in await api.listContexts(request, context) }
        router.delete("/contexts/:id") { request, context in await api.removeContext(request, context) }
        router.post("/contexts/:id/restart") { request, context in await api.restartContext(request, context) }
    }
}

/// The code-interpreter routes. The answers follow E2B's server: its own failures are plain text
/// (`Context X not found`, 404; `Only one of context_id or language can be provided`, 400), a body
/// that is not the model FastAPI expects is 422 with `{"detail": [...]}`, and a call without a valid
/// traffic or envd token is 401 (``GatewayAuthority/sandbox(for:at:)``).
struct CodeInterpreterAPI: Sendable {
    let authority: GatewayAuthority
    /// The default context of each sandbox and language, learnt from cells run without a context id
    /// (so a cell whose client went away can be interrupted).
    let defaults = DefaultCodeContexts()

    /// The languages Hangar's kernels run, by the names E2B uses.
    static let languages = ["python", "bash", "javascript"]
    /// A cell's timeout when the request sets none (`timeout`, seconds, is a Hangar addition; the
    /// SDK enforces its own timeout by closing the connection, which interrupts the cell).
    static let defaultCellTimeout = Duration.seconds(86_400)
    /// How often a silent cell's stream gets a `{"type": "keepalive"}` line (E2B's server sends one
    /// every 5 s; the SDK skips them): writing is how a vanished client is noticed, so a cell whose
    /// client timed out is interrupted within a few seconds and the next cell need not wait long.
    static let keepaliveInterval = Duration.seconds(1)
    /// The largest request body read.
    static let maxBodyBytes = 2 << 20
    /// E2B's default working directory of a context.
    static let defaultCwd = "/home/user"

    // MARK: POST /execute

    func execute(_ request: Request, _ context: GatewayContext) async -> Response {
        let sandbox: Sandbox
        let cell: CellRequest
        do {
            sandbox = try await self.sandbox(request, context)
            cell = try CellRequest(try await Self.jsonBody(request))
        } catch {
            return Self.response(for: error)
        }
        if cell.contextID != nil, cell.language != nil {
            return Self.text(.badRequest, "Only one of context_id or language can be provided")
        }
        let language = Self.normalize(cell.language)
        if cell.contextID == nil, !Self.languages.contains(language) {
            return Self.text(.internalServerError, Self.noKernel(language))
        }
        let run = CellRun(
            sandbox: sandbox,
            contextID: cell.contextID,
            language: language,
            code: cell.code,
            env: cell.envVars,
            timeout: cell.timeout ?? Self.defaultCellTimeout,
            defaults: defaults
        )
        switch await run.start() {
        case .failure(let error):
            if let error = error as? HangarClientError, error.kind == .notFound,
                error.code == "SANDBOX_CONTEXT_NOT_FOUND"
            {
                return Self.text(.notFound, "Context \(cell.contextID ?? "") not found")
            }
            return Self.response(for: error)
        case .success(let started):
            var headers = HTTPFields()
            headers[.contentType] = "application/x-ndjson; charset=utf-8"
            return Response(
                status: .ok,
                headers: headers,
                body: ResponseBody { writer in try await started.write(to: &writer) }
            )
        }
    }

    // MARK: /contexts

    func createContext(_ request: Request, _ context: GatewayContext) async -> Response {
        do {
            let sandbox = try await self.sandbox(request, context)
            let body = try await Self.jsonBody(request)
            let language = Self.normalize(try Self.optionalString(body, "language"))
            let cwd = try Self.optionalString(body, "cwd") ?? Self.defaultCwd
            guard Self.languages.contains(language) else {
                return Self.text(.internalServerError, Self.noKernel(language))
            }
            let created: CodeContext
            do {
                created = try await sandbox.createCodeContext(language: language, cwd: cwd)
            } catch let error as HangarClientError where error.kind == .invalidArgument || error.kind == .refused {
                return Self.text(.internalServerError, "Failed to create context: \(error.message)")
            }
            return Self.json(Self.contextJSON(id: created.id, language: language, cwd: cwd))
        } catch {
            return Self.response(for: error)
        }
    }

    func listContexts(_ request: Request, _ context: GatewayContext) async -> Response {
        do {
            let sandbox = try await self.sandbox(request, context)
            let contexts = try await sandbox.listCodeContexts()
            let items = contexts.map {
                Self.contextJSON(id: $0.id, language: $0.language, cwd: $0.cwd.isEmpty ? Self.defaultCwd : $0.cwd)
            }
            return Self.json("[" + items.joined(separator: ", ") + "]")
        } catch {
            return Self.response(for: error)
        }
    }

    func removeContext(_ request: Request, _ context: GatewayContext) async -> Response {
        await onContext(request, context) { sandbox, id in
            try await sandbox.removeCodeContext(id)
            await defaults.forget(context: id, sandbox: sandbox.id)
        }
    }

    func restartContext(_ request: Request, _ context: GatewayContext) async -> Response {
        await onContext(request, context) { sandbox, id in _ = try await sandbox.restartCodeContext(id) }
    }

    /// Runs `operation` on the context named in the path; `null` (E2B's FastAPI answer of a route
    /// returning None), or 404 `Context X not found`.
    private func onContext(
        _ request: Request,
        _ context: GatewayContext,
        _ operation: (Sandbox, String) async throws -> Void
    ) async -> Response {
        let id = context.parameters.get("id") ?? ""
        do {
            let sandbox = try await self.sandbox(request, context)
            do {
                try await operation(sandbox, id)
            } catch let error as HangarClientError where error.code == "SANDBOX_CONTEXT_NOT_FOUND" {
                return Self.text(.notFound, "Context \(id) not found")
            }
            return Self.json("null")
        } catch {
            return Self.response(for: error)
        }
    }

    // MARK: Helpers

    private func sandbox(_ request: Request, _ context: GatewayContext) async throws -> Sandbox {
        guard let address = context.address else {
            throw GatewayError(.badRequest, "a code-interpreter call must name its sandbox")
        }
        return try await authority.sandbox(for: request, at: address)
    }

    /// E2B's names: lower case, `js` and `ts` spelled out, nothing given is python.
    static func normalize(_ language: String?) -> String {
        let name = (language ?? "").trimmingCharacters(in: .whitespaces).lowercased()
        switch name {
        case "": return "python"
        case "js": return "javascript"
        case "ts": return "typescript"
        default: return name
        }
    }

    /// What E2B's server says when it cannot make a context of `language` (it answers 500 with
    /// "Failed to create context: " and the kernel manager's refusal).
    static func noKernel(_ language: String) -> String {
        "Failed to create context: language '\(language.prefix(64))' has no kernel in Hangar sandboxes; use \(languages.joined(separator: " or "))"
    }

    static func contextJSON(id: String, language: String, cwd: String) -> String {
        "{\"id\": \(JSONText.string(id)), \"language\": \(JSONText.string(language)), \"cwd\": \(JSONText.string(cwd))}"
    }

    /// The request's body as a JSON object; 422 as FastAPI gives otherwise.
    static func jsonBody(_ request: Request) async throws -> [String: Any] {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maxBodyBytes)
        } catch {
            throw GatewayError(.payloadTooLarge, "a code-interpreter request body is limited to \(maxBodyBytes) bytes")
        }
        if buffer.readableBytes == 0 {
            throw ValidationFailure(type: "missing", location: ["body"], message: "Field required")
        }
        guard
            let value = try? JSONSerialization.jsonObject(
                with: Data(buffer.readableBytesView),
                options: [.fragmentsAllowed]
            )
        else {
            throw ValidationFailure(type: "json_invalid", location: ["body", 0], message: "JSON decode error")
        }
        guard let object = value as? [String: Any] else {
            throw ValidationFailure(
                type: "model_attributes_type",
                location: ["body"],
                message: "Input should be a valid dictionary or object to extract fields from"
            )
        }
        return object
    }

    /// `body[key]` as a string, nil if absent or null; 422 if it is another type.
    static func optionalString(_ body: [String: Any], _ key: String) throws -> String? {
        switch body[key] {
        case nil, is NSNull: return nil
        case let text as String: return text
        default:
            throw ValidationFailure(
                type: "string_type",
                location: ["body", key],
                message: "Input should be a valid string"
            )
        }
    }

    static func text(_ status: HTTPResponse.Status, _ message: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: message)))
    }

    static func json(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func response(for error: any Error) -> Response {
        if let failure = error as? ValidationFailure { return failure.response }
        return GatewayError.from(error).restResponse
    }
}

/// A request body that is not what E2B's FastAPI server expects: 422 with its `detail` list.
struct ValidationFailure: Error {
    let type: String
    let location: [Any]
    let message: String

    var response: Response {
        let detail: [String: Any] = ["type": type, "loc": location, "msg": message]
        let data = (try? JSONSerialization.data(withJSONObject: ["detail": [detail]])) ?? Data()
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(
            status: .unprocessableContent,
            headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}

/// The body of `POST /execute`: `{"code", "context_id", "language", "env_vars"}` as the SDK sends it
/// (absent and null alike), and Hangar's own `timeout` (seconds).
struct CellRequest {
    var code: String
    var contextID: String?
    var language: String?
    var envVars: [String: String]
    var timeout: Duration?

    init(_ body: [String: Any]) throws {
        guard let code = body["code"] else {
            throw ValidationFailure(type: "missing", location: ["body", "code"], message: "Field required")
        }
        guard let code = code as? String else {
            throw ValidationFailure(
                type: "string_type",
                location: ["body", "code"],
                message: "Input should be a valid string"
            )
        }
        self.code = code
        contextID = try CodeInterpreterAPI.optionalString(body, "context_id").flatMap { $0.isEmpty ? nil : $0 }
        language = try CodeInterpreterAPI.optionalString(body, "language").flatMap { $0.isEmpty ? nil : $0 }
        envVars = [:]
        switch body["env_vars"] {
        case nil, is NSNull: break
        case let vars as [String: Any]:
            for (key, value) in vars {
                guard let value = value as? String else {
                    throw ValidationFailure(
                        type: "string_type",
                        location: ["body", "env_vars", key],
                        message: "Input should be a valid string"
                    )
                }
                envVars[key] = value
            }
        default:
            throw ValidationFailure(
                type: "dict_type",
                location: ["body", "env_vars"],
                message: "Input should be a valid dictionary"
            )
        }
        switch body["timeout"] {
        case nil, is NSNull: timeout = nil
        case let seconds as NSNumber where !(seconds is Bool):
            let value = seconds.doubleValue
            guard value > 0, value <= 86_400 else {
                throw ValidationFailure(
                    type: "value_error",
                    location: ["body", "timeout"],
                    message: "timeout must be more than 0 and at most 86400 seconds"
                )
            }
            timeout = .milliseconds(Int64((value * 1000).rounded(.up)))
        default:
            throw ValidationFailure(
                type: "float_type",
                location: ["body", "timeout"],
                message: "Input should be a valid number"
            )
        }
    }
}

/// The default context of each (sandbox, language) a cell without a context id ran in.
actor DefaultCodeContexts {
    private var ids: [String: String] = [:]

    func id(sandbox: String, language: String) -> String? { ids["\(sandbox)/\(language)"] }

    func remember(_ id: String, sandbox: String, language: String) {
        if ids.count >= 10_000 { ids.removeAll() }
        ids["\(sandbox)/\(language)"] = id
    }

    func forget(context id: String, sandbox: String) {
        ids = ids.filter { !($0.key.hasPrefix(sandbox + "/") && $0.value == id) }
    }
}
