import Foundation
import HTTPTypes
import HangarClient
import HangarNATS
import HangarShared
import Hummingbird
import NIOCore
import SwiftProtobuf

/// E2B's control-plane REST API, as `e2b` 2.63.0 sends and expects it (its generated client under
/// `e2b/api/client/api/sandboxes/` and `models/`). Every call carries the tenant's API key
/// (`X-API-Key`; 401 without a valid one) and acts for that tenant only: another tenant's sandbox is
/// answered 404, exactly like an unknown one (the scheduler answers so on the tenant's subjects).
///
/// - `POST /sandboxes`, `POST /v2/sandboxes`: create (201 with `sandboxID`, tokens, `envdVersion`).
/// - `GET /sandboxes`, `GET /v2/sandboxes`: list (metadata, state, template and `startedAfter`
///   filters; `limit` + `nextToken`, the next page's token in the `x-next-token` header).
/// - `GET /sandboxes/{id}`: info. `DELETE /sandboxes/{id}`: kill (204; 404 when unknown or ended).
/// - `POST /sandboxes/{id}/timeout`: set its timeout (204). `POST /sandboxes/{id}/refreshes`:
///   keep it alive at least that long (204).
/// - `POST /sandboxes/{id}/connect`, `POST /v2/sandboxes/{id}/connect`: the tokens again (200).
/// - pause, resume, fork, snapshots, metrics, logs, network updates: 501 "not supported yet" (the
///   SDK raises it as a `SandboxException` carrying that message); 404 first if the sandbox is unknown.
///
/// Differences from E2B, on purpose:
/// - Internet access. E2B's default is on; Hangar's sandboxes have no network unless granted. So an
///   unset `allow_internet_access` (no network options at all) gets the tenant's default for
///   sandboxes (`sandbox_default_grants`; built in: no network at all); `false` no network; `true`
///   is the grant `allow_net 0.0.0.0/0`; `network.allowOut` entries are `allow_net` grants and
///   `network.denyOut` entries `deny_net` (``networkGrants(_:)``). The scheduler checks them as it
///   checks a job's (the tenant's maximum, what runtimes enforce); its refusal is a 400 with its
///   message. Network features Hangar lacks (egress proxy, request rules, DNS servers) are 400.
/// - `autoPause`/`autoResume`, `mcp`, `iam` and `volumeMounts` are refused with 400 (no pausing,
///   MCP gateway, workload identity or volumes in Hangar yet); `secure` is ignored (every sandbox
///   is secured: its calls need the `envdAccessToken`).
/// - The E2B template name a sandbox was created with is kept in its Hangar metadata under
///   ``templateMetadataKey`` (hidden from E2B's `metadata`, visible to `hangar sandbox ls`), so
///   `templateID` and the list's `template` filter work across pages.
/// - `order=asc` is refused with 400 (Hangar lists newest first).
extension Gateway {
    /// The envd version create and connect report: 0.6.4 switches on every feature e2b 2.63.0 gates
    /// on a version (recursive watch 0.1.4, stdin 0.3.0, default user 0.4.0, envd close 0.5.2,
    /// octet-stream upload 0.5.7, file metadata 0.6.2, watch entry info 0.6.3, network mounts 0.6.4).
    public static let envdVersion = "0.6.4"
    /// The Hangar metadata key that holds a sandbox's E2B template name.
    public static let templateMetadataKey = "e2b.templateID"
    /// The largest control-plane request body.
    static let maxControlBodyBytes = 1 << 20
    /// E2B's default sandbox timeout, in seconds (the SDK sends its own when the user gives one).
    static let defaultTimeoutSeconds = 300
    /// The longest timeout accepted, in seconds (Hangar's maximum: 24 hours; the tenant's policy may
    /// allow less, and the scheduler then refuses with 400).
    static let maxTimeoutSeconds = 86_400

    /// The control-plane REST API: `/sandboxes`, `/v2/sandboxes`, `/sandboxes/{id}`, timeout, connect.
    func addControlPlaneRoutes(to router: Router<GatewayContext>) {
        for prefix in ["/sandboxes", "/v2/sandboxes"] {
            router.post(RouterPath(prefix)) { request, _ in
                await self.call(request) { try await self.create($0, request: request) }
            }
            router.get(RouterPath(prefix)) { request, _ in
                await self.call(request) { try await self.list($0, request: request) }
            }
            router.post(RouterPath(prefix + "/:sandboxID/connect")) { request, context in
                await self.call(request) { try await self.connect($0, id: try Self.id(context), request: request) }
            }
        }
        router.get("/sandboxes/:sandboxID") { request, context in
            await self.call(request) { try await self.info($0, id: try Self.id(context)) }
        }
        router.delete("/sandboxes/:sandboxID") { request, context in
            await self.call(request) { try await self.kill($0, id: try Self.id(context)) }
        }
        router.post("/sandboxes/:sandboxID/timeout") { request, context in
            await self.call(request) { try await self.setTimeout($0, id: try Self.id(context), request: request) }
        }
        router.post("/sandboxes/:sandboxID/refreshes") { request, context in
            await self.call(request) { try await self.refresh($0, id: try Self.id(context), request: request) }
        }
        router.post("/sandboxes/:sandboxID/resume") { request, context in
            await self.call(request) { try await self.resume($0, id: try Self.id(context)) }
        }
        let unsupported: [(HTTPRequest.Method, String, String)] = [
            (.post, "/sandboxes/:sandboxID/pause", "pausing sandboxes"),
            (.post, "/sandboxes/:sandboxID/fork", "forking sandboxes"),
            (.post, "/sandboxes/:sandboxID/snapshots", "snapshots"),
            (.get, "/sandboxes/:sandboxID/metrics", "sandbox metrics"),
            (.get, "/sandboxes/:sandboxID/logs", "sandbox logs"),
            (.get, "/v2/sandboxes/:sandboxID/logs", "sandbox logs"),
            (.put, "/sandboxes/:sandboxID/network", "changing a sandbox's network"),
        ]
        for (method, path, what) in unsupported {
            router.on(RouterPath(path), method: method) { request, context in
                await self.call(request) { hangar in
                    _ = try await self.liveSandbox(hangar, id: try Self.id(context))
                    throw GatewayError(.notImplemented, "\(what) is not supported yet by Hangar")
                }
            }
        }
    }

    // MARK: The calls

    func create(_ hangar: Hangar, request: Request) async throws -> Response {
        let body = try await Self.jsonObject(request, required: true)
        guard let templateID = body["templateID"] as? String, !templateID.isEmpty else {
            throw GatewayError(.badRequest, "templateID is required (a template name, e.g. base)")
        }
        guard let mapping = configuration.templates[templateID] else {
            let known = configuration.templates.keys.sorted().joined(separator: ", ")
            throw GatewayError(
                .badRequest,
                "template '\(templateID.prefix(100))' not found (this gateway knows: \(known))"
            )
        }
        let timeout = try Self.seconds(body["timeout"], field: "timeout") ?? Self.defaultTimeoutSeconds
        var metadata = try Self.stringMap(body["metadata"], field: "metadata")
        if metadata[Self.templateMetadataKey] != nil {
            throw GatewayError(
                .badRequest,
                "metadata key \(Self.templateMetadataKey) is reserved by the Hangar gateway"
            )
        }
        metadata[Self.templateMetadataKey] = templateID
        let env = try Self.stringMap(body["envVars"], field: "envVars")
        try Self.checkSupported(body)
        var options = SandboxOptions(
            runtime: mapping.runtime,
            template: mapping.template,
            timeout: .seconds(timeout),
            env: env,
            metadata: metadata,
            grants: try Self.networkGrants(body)
        )
        if let key = request.headers[Self.idempotencyKey], !key.isEmpty {
            // The SDK allows keys of up to 255 characters, Hangar's request ids up to 128 bytes: a longer
            // key is replaced by its hash (as unique, and the same on every retry).
            options.requestID = key.utf8.count <= 128 ? key : "sha256-" + GatewayAPIKey.sha256(key)
        }
        let sandbox = try await hangar.createSandbox(options)
        return try Self.json(
            created(sandbox.id, tenant: hangar.tenant, templateID: templateID, nodeID: sandbox.nodeID),
            status: .created
        )
    }

    func list(_ hangar: Hangar, request: Request) async throws -> Response {
        let query = Self.queryPairs(request.uri.query ?? "")
        var listRequest = Hangar_V1_SandboxListRequest()
        if let text = query["limit"] {
            guard let limit = Int(text), (1...1000).contains(limit) else {
                throw GatewayError(.badRequest, "limit must be 1-1000, not \(text.prefix(20))")
            }
            listRequest.limit = UInt32(limit)
        } else {
            listRequest.limit = 100
        }
        if let token = query["nextToken"], !token.isEmpty {
            guard SandboxAddress.isValidID(token) else { throw GatewayError(.badRequest, "invalid nextToken") }
            listRequest.beforeID = token
        }
        if let metadata = query["metadata"], !metadata.isEmpty {
            for (key, value) in Self.queryPairs(metadata) {
                listRequest.metadata[Self.formDecode(key)] = Self.formDecode(value)
            }
        }
        if let template = query["template"], !template.isEmpty {
            listRequest.metadata[Self.templateMetadataKey] = template
        }
        if let order = query["order"], order != "desc" {
            throw GatewayError(.badRequest, "order=\(order.prefix(20)) is not supported yet by Hangar (only desc)")
        }
        var startedAfter: Int64?
        if let text = query["startedAfter"], !text.isEmpty {
            guard let date = Self.parseDate(text) else {
                throw GatewayError(.badRequest, "startedAfter must be an RFC 3339 time, not \(text.prefix(40))")
            }
            startedAfter = Int64((date.timeIntervalSince1970 * 1000).rounded(.up))
        }
        if let states = query["state"], !states.isEmpty {
            var running = false
            for state in states.split(separator: ",") {
                switch state {
                case "running": running = true
                case "paused": break  // Hangar cannot pause: never any
                default: throw GatewayError(.badRequest, "unknown state '\(state.prefix(20))' (running or paused)")
                }
            }
            guard running else { return try Self.json([Any]()) }
        }
        let reply = try await control(hangar, "list", listRequest, as: Hangar_V1_SandboxListReply.self)
        guard reply.error.isEmpty else { throw GatewayError(.unavailable, reply.error) }
        var page = reply.sandboxes
        var more = reply.more
        if let startedAfter, let older = page.firstIndex(where: { $0.createdAtMs < startedAfter }) {
            page.removeSubrange(older...)  // newest first: every later one is older too
            more = false
        }
        var response = try Self.json(page.map { listed($0, tenant: hangar.tenant, detail: false) })
        if more, let last = page.last { response.headers[Self.nextToken] = last.id }
        return response
    }

    func info(_ hangar: Hangar, id: String) async throws -> Response {
        let info = try await liveSandbox(hangar, id: id)
        return try Self.json(listed(info, tenant: hangar.tenant, detail: true))
    }

    func kill(_ hangar: Hangar, id: String) async throws -> Response {
        _ = try await liveSandbox(hangar, id: id)
        var kill = Hangar_V1_SandboxKillRequest()
        kill.sandboxID = id
        _ = try await sandboxReply(hangar, "kill", kill, id: id)
        await authority.directory.forget(id, tenant: hangar.tenant)
        return Response(status: .noContent)
    }

    func setTimeout(_ hangar: Hangar, id: String, request: Request) async throws -> Response {
        let body = try await Self.jsonObject(request, required: true)
        guard let seconds = try Self.seconds(body["timeout"], field: "timeout") else {
            throw GatewayError(.badRequest, "timeout (seconds) is required")
        }
        _ = try await setTimeout(hangar, id: id, seconds: seconds)
        return Response(status: .noContent)
    }

    func refresh(_ hangar: Hangar, id: String, request: Request) async throws -> Response {
        let body = try await Self.jsonObject(request, required: false)
        let seconds = try Self.seconds(body["duration"], field: "duration") ?? 60
        _ = try await extendTimeout(hangar, info: try await liveSandbox(hangar, id: id), seconds: seconds)
        return Response(status: .noContent)
    }

    func connect(_ hangar: Hangar, id: String, request: Request) async throws -> Response {
        let body = try await Self.jsonObject(request, required: false)
        var info = try await liveSandbox(hangar, id: id)
        if let seconds = try Self.seconds(body["timeout"], field: "timeout") {
            info = try await extendTimeout(hangar, info: info, seconds: seconds)
        }
        let templateID = info.metadata[Self.templateMetadataKey] ?? info.template
        return try Self.json(created(id, tenant: hangar.tenant, templateID: templateID, nodeID: info.nodeID))
    }

    func resume(_ hangar: Hangar, id: String) async throws -> Response {
        _ = try await liveSandbox(hangar, id: id)
        // E2B answers a resume of a sandbox that is not paused with 409; a Hangar sandbox never is.
        throw GatewayError(.conflict, "sandbox \(id) is already running (Hangar cannot pause sandboxes yet)")
    }

    // MARK: Answers

    /// A create or connect reply (E2B's `Sandbox` model).
    func created(_ id: String, tenant: String, templateID: String, nodeID: String) -> [String: Any] {
        [
            "sandboxID": id,
            "templateID": templateID,
            "clientID": nodeID.isEmpty ? "hangar" : nodeID,
            "envdVersion": Self.envdVersion,
            "envdAccessToken": authority.tokens.token(.envd, tenant: tenant, sandbox: id),
            "trafficAccessToken": authority.tokens.token(.traffic, tenant: tenant, sandbox: id),
            "domain": configuration.domain.map { $0 as Any } ?? NSNull(),
        ]
    }

    /// E2B's `ListedSandbox`, or with `detail` its `SandboxDetail` (plus the envd token and domain).
    func listed(_ info: Hangar_V1_SandboxInfo, tenant: String, detail: Bool) -> [String: Any] {
        var metadata = info.metadata
        let templateID = metadata.removeValue(forKey: Self.templateMetadataKey) ?? info.template
        let endMs = info.endsAtMs > 0 ? info.endsAtMs : (info.endedAtMs > 0 ? info.endedAtMs : info.createdAtMs)
        var result: [String: Any] = [
            "sandboxID": info.id,
            "templateID": templateID,
            "clientID": info.nodeID.isEmpty ? "hangar" : info.nodeID,
            "startedAt": Self.formatDate(info.createdAtMs),
            "endAt": Self.formatDate(endMs),
            // Hangar's CPU share (1000 = one core) rounded up; 1 when the node's default applies.
            "cpuCount": max(1, (Int(info.limits.cpuMillis) + 999) / 1000),
            // 0 when the node's default applies (Hangar sets no fixed memory size).
            "memoryMB": Int(info.limits.memoryBytes >> 20),
            "diskSizeMB": 0,
            "state": "running",
            "envdVersion": Self.envdVersion,
            "metadata": metadata,
        ]
        if detail {
            result["envdAccessToken"] = authority.tokens.token(.envd, tenant: tenant, sandbox: info.id)
            result["domain"] = configuration.domain.map { $0 as Any } ?? NSNull()
            result["allowInternetAccess"] = false
        }
        return result
    }

    // MARK: Hangar calls

    /// Runs `body` for the tenant of the request's API key; any failure becomes E2B's error answer.
    func call(_ request: Request, _ body: (Hangar) async throws -> Response) async -> Response {
        do {
            return try await body(try await authority.client(forAPIKeyOf: request))
        } catch {
            let failure = GatewayError.from(error)
            if failure.kind == .internal {
                logger.error(
                    "control-plane call failed",
                    metadata: ["error": "\(error)", "path": "\(request.uri.path)"]
                )
            }
            return failure.restResponse
        }
    }

    /// The tenant's sandbox `id` while it is live (starting or running); 404 otherwise.
    func liveSandbox(_ hangar: Hangar, id: String) async throws -> Hangar_V1_SandboxInfo {
        var get = Hangar_V1_SandboxGetRequest()
        get.sandboxID = id
        let info = try await sandboxReply(hangar, "get", get, id: id)
        guard info.state == .sandboxStarting || info.state == .sandboxRunning else {
            throw GatewayError(.notFound, "sandbox \(id) not found (it has ended)")
        }
        return info
    }

    func setTimeout(_ hangar: Hangar, id: String, seconds: Int) async throws -> Hangar_V1_SandboxInfo {
        var timeout = Hangar_V1_SandboxSetTimeoutRequest()
        timeout.sandboxID = id
        timeout.timeoutMs = UInt32(seconds * 1000)
        return try await sandboxReply(hangar, "timeout", timeout, id: id)
    }

    /// Sets the timeout of `info`'s sandbox to `seconds` from now, unless it already ends later.
    func extendTimeout(
        _ hangar: Hangar,
        info: Hangar_V1_SandboxInfo,
        seconds: Int
    ) async throws
        -> Hangar_V1_SandboxInfo
    {
        guard info.endsAtMs < unixMilliseconds() + Int64(seconds) * 1000 else { return info }
        return try await setTimeout(hangar, id: info.id, seconds: seconds)
    }

    /// get, timeout or kill: the sandbox after the call, or its error as E2B's status.
    func sandboxReply(
        _ hangar: Hangar,
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        id: String
    )
        async throws -> Hangar_V1_SandboxInfo
    {
        let reply = try await control(hangar, verb, request, as: Hangar_V1_SandboxReply.self)
        switch reply.outcome {
        case .info(let info): return info
        case .error(let error):
            switch error.code {
            case .sandboxNotFound, .sandboxNotRunning:
                throw GatewayError(.notFound, "sandbox \(id) not found")
            case .sandboxInvalidRequest: throw GatewayError(.badRequest, error.message)
            case .sandboxLimitExceeded: throw GatewayError(.badRequest, error.message)
            case .sandboxUnavailable: throw GatewayError(.unavailable, error.message)
            default: throw GatewayError(.internal, "the scheduler answered \(verb): \(error.message)")
            }
        case nil: throw GatewayError(.badGateway, "the scheduler sent an empty answer to \(verb)")
        }
    }

    /// One control request on `hangar.sandbox.<tenant>.<verb>` (the tenant of `hangar`).
    func control<Reply: SwiftProtobuf.Message>(
        _ hangar: Hangar,
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        as: Reply.Type
    ) async throws -> Reply {
        let subject = Subjects.sandbox(tenant: hangar.tenant, verb: verb)
        let answer: NATSMessage
        do {
            answer = try await hangar.connection.request(
                subject,
                payload: try request.serializedData(),
                timeout: hangar.timeouts.control
            )
        } catch let error as NATSError {
            switch error.kind {
            case .noResponders: throw GatewayError(.unavailable, "no scheduler is answering on \(subject)")
            case .timeout: throw GatewayError(.timeout, "the scheduler did not answer \(verb) in time")
            default: throw GatewayError(.badGateway, "NATS failed on \(subject): \(error)")
            }
        }
        do {
            return try Reply(serializedBytes: answer.payload)
        } catch {
            throw GatewayError(.badGateway, "the scheduler's answer to \(verb) is not a \(Reply.protoMessageName)")
        }
    }

    // MARK: Request parsing

    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let nextToken = HTTPField.Name("X-Next-Token")!

    static func id(_ context: GatewayContext) throws -> String {
        guard let id = context.parameters.get("sandboxID"), SandboxAddress.isValidID(id) else {
            throw GatewayError(.notFound, "sandbox not found")
        }
        return id
    }

    /// The request's JSON object body; `{}` for an empty body unless `required`.
    static func jsonObject(_ request: Request, required: Bool) async throws -> [String: Any] {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maxControlBodyBytes)
        } catch {
            throw GatewayError(.payloadTooLarge, "a request body is limited to \(maxControlBodyBytes) bytes")
        }
        if buffer.readableBytes == 0 {
            if required { throw GatewayError(.badRequest, "a JSON body is required") }
            return [:]
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)),
            let dictionary = object as? [String: Any]
        else { throw GatewayError(.badRequest, "the body is not a JSON object") }
        return dictionary
    }

    /// A whole number of seconds in 1...24 h; nil when absent or null.
    static func seconds(_ value: Any?, field: String) throws -> Int? {
        guard let value, !(value is NSNull) else { return nil }
        // `as? Int` takes whole JSON numbers only (3.5 does not convert).
        guard let seconds = value as? Int, (1...maxTimeoutSeconds).contains(seconds) else {
            throw GatewayError(.badRequest, "\(field) must be a whole number of seconds, 1-\(maxTimeoutSeconds)")
        }
        return seconds
    }

    /// A JSON object of strings; empty when absent or null.
    static func stringMap(_ value: Any?, field: String) throws -> [String: String] {
        guard let value, !(value is NSNull) else { return [:] }
        guard let map = value as? [String: Any] else {
            throw GatewayError(.badRequest, "\(field) must be an object of strings")
        }
        var strings: [String: String] = [:]
        for (key, item) in map {
            guard let text = item as? String else {
                throw GatewayError(.badRequest, "\(field).\(key.prefix(64)) must be a string")
            }
            strings[key] = text
        }
        return strings
    }

    /// Refuses the E2B options Hangar cannot honour yet (see the differences above).
    static func checkSupported(_ body: [String: Any]) throws {
        func isSet(_ key: String) -> Bool { body[key].map { !($0 is NSNull) } ?? false }
        if body["autoPause"] as? Bool == true {
            throw GatewayError(.badRequest, "autoPause is not supported yet by Hangar (sandboxes cannot be paused)")
        }
        if let resume = body["autoResume"] as? [String: Any], resume["enabled"] as? Bool == true {
            throw GatewayError(.badRequest, "autoResume is not supported yet by Hangar (sandboxes cannot be paused)")
        }
        for (key, what) in [("mcp", "MCP servers"), ("iam", "workload identity (iam)"), ("volumeMounts", "volumes")]
        where isSet(key) {
            if key == "volumeMounts", let mounts = body[key] as? [Any], mounts.isEmpty { continue }
            throw GatewayError(.badRequest, "\(what) are not supported yet by Hangar")
        }
    }

    /// E2B's network options of a create body as Hangar grants: `allow_internet_access` true is
    /// `allow_net 0.0.0.0/0` (any destination); false is no network; neither option given is nil,
    /// the tenant's default for sandboxes (built in: no network, where E2B's default is on); `network.allowOut` entries are `allow_net` and `network.denyOut` entries
    /// `deny_net`, passed on unchanged for the scheduler to check (what it refuses, e.g. a name it
    /// cannot enforce yet or a destination beyond the tenant's maximum, comes back as a 400 with
    /// its message). Network features Hangar does not have (`egressProxy`, `rules`,
    /// `maskRequestHost`, `dnsServers`, `httpsPorts`) are refused 400, never ignored.
    static func networkGrants(_ body: [String: Any]) throws -> SandboxGrants? {
        var grants = SandboxGrants()
        let internetKey = ["allow_internet_access", "allowInternetAccess"].first {
            body[$0] != nil && !(body[$0] is NSNull)
        }
        let networkGiven = body["network"].map { !($0 is NSNull) } ?? false
        // Neither option: the tenant's default for sandboxes (the scheduler applies it).
        guard internetKey != nil || networkGiven else { return nil }
        if let internetKey {
            guard let internet = body[internetKey] as? Bool else {
                throw GatewayError(.badRequest, "\(internetKey) must be true or false")
            }
            if internet { grants.allowNet.append(Self.allTraffic) }
        }
        guard let raw = body["network"], !(raw is NSNull) else { return grants }
        guard let network = raw as? [String: Any] else {
            throw GatewayError(.badRequest, "network must be an object")
        }
        for (key, what) in [
            ("egressProxy", "an egress proxy (network.egressProxy)"),
            ("rules", "per-host request rules (network.rules)"),
            ("maskRequestHost", "network.maskRequestHost"),
            ("dnsServers", "custom DNS servers (network.dnsServers)"),
            ("httpsPorts", "network.httpsPorts"),
        ] {
            guard let value = network[key], !(value is NSNull) else { continue }
            if let list = value as? [Any], list.isEmpty { continue }
            if let map = value as? [String: Any], map.isEmpty { continue }
            throw GatewayError(.badRequest, "\(what) is not supported yet by Hangar")
        }
        grants.allowNet += try destinations(network["allowOut"], field: "network.allowOut")
            .filter { !grants.allowNet.contains($0) }
        grants.denyNet = try destinations(network["denyOut"], field: "network.denyOut")
        return grants
    }

    /// E2B's "all traffic" (`ctx.all_traffic` in the SDK): any IPv4 destination.
    static let allTraffic = "0.0.0.0/0"

    /// A list of destinations (CIDRs, addresses, host names) of E2B's network options.
    private static func destinations(_ value: Any?, field: String) throws -> [String] {
        guard let value, !(value is NSNull) else { return [] }
        guard let list = value as? [Any] else { throw GatewayError(.badRequest, "\(field) must be a list of strings") }
        guard list.count <= 32 else {
            throw GatewayError(.badRequest, "\(field) has \(list.count) entries; Hangar takes at most 32")
        }
        return try list.map { entry in
            guard let text = entry as? String, !text.isEmpty else {
                throw GatewayError(.badRequest, "\(field) must be a list of non-empty strings")
            }
            return text
        }
    }

    /// A query string's pairs, form-decoded (`+` is a space); the first of repeated names wins.
    static func queryPairs(_ query: String) -> [String: String] {
        var pairs: [String: String] = [:]
        for item in query.split(separator: "&") where !item.isEmpty {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = formDecode(String(parts[0]))
            if pairs[key] == nil { pairs[key] = parts.count > 1 ? formDecode(String(parts[1])) : "" }
        }
        return pairs
    }

    /// `text` with `+` as a space and `%XX` decoded (left as is where it is not valid UTF-8).
    static func formDecode(_ text: String) -> String {
        let spaced = text.replacingOccurrences(of: "+", with: " ")
        return spaced.removingPercentEncoding ?? spaced
    }

    static func parseDate(_ text: String) -> Date? {
        (try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
            ?? (try? Date(text, strategy: Date.ISO8601FormatStyle()))
    }

    /// RFC 3339 with milliseconds, UTC.
    static func formatDate(_ milliseconds: Int64) -> String {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
            .formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    static func json(_ object: Any, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
