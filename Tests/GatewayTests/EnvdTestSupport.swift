import Foundation
import HangarClient
import HangarClusterTestSupport
import HangarGateway
import HangarNATS
import HangarNode
import Hummingbird
import HummingbirdTesting
import Logging
import SwiftProtobuf
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A real cluster (bubblewrap sandboxes), a gateway serving on a free port, and one sandbox of
/// tenant "a" created through the Hangar client, with its envd token: for the envd API's tests.
struct EnvdHarness: Sendable {
    let port: Int
    let sandbox: Sandbox
    let token: String
    let tokens: SandboxTokens
    let cluster: AuthorizedCluster

    static let secret = Data("envd-test-secret-0123456789".utf8)

    /// Runs `body` with a harness; the sandboxes and the cluster are cleaned up however it ends.
    static func with(
        maxUploadBytes: Int = 100 << 20,
        _ body: @Sendable (EnvdHarness) async throws -> Void
    )
        async throws
    {
        try await withSandboxCluster { cluster, _ in
            let connection = try await cluster.login(.gateway("gw"))
            defer { Task { await connection.close() } }
            let gateway = try gateway(connection, maxUploadBytes: maxUploadBytes)
            let tokens = gateway.authority.tokens
            let sandbox = try await gateway.authority.directory.client(for: "a").createSandbox(
                .init(timeout: .seconds(600))
            )
            try await Application(responder: gateway.responder()).test(.live) { client in
                try await body(
                    EnvdHarness(
                        port: try #require(client.port),
                        sandbox: sandbox,
                        token: tokens.token(.envd, tenant: "a", sandbox: sandbox.id),
                        tokens: tokens,
                        cluster: cluster
                    )
                )
            }
        }
    }

    /// A gateway over `connection` with the harness's secret and no API keys.
    static func gateway(_ connection: NATSConnection, maxUploadBytes: Int = 100 << 20) throws -> Gateway {
        Gateway(
            configuration: GatewayConfiguration(secret: secret, maxUploadBytes: maxUploadBytes),
            authority: GatewayAuthority(
                keys: StaticAPIKeys([:]),
                tokens: try SandboxTokens(secret: secret),
                directory: SandboxDirectory(connection: connection)
            ),
            logger: Logger(label: "envd-test")
        )
    }

    /// Runs `body` with this harness's sandbox served by a second gateway: its own NATS login and
    /// state, sharing only the secret (another gateway process of the cluster, or this one restarted).
    func withSecondGateway(_ body: @Sendable (EnvdHarness) async throws -> Void) async throws {
        let connection = try await cluster.login(.gateway("gw"))
        let gateway = try Self.gateway(connection)
        do {
            try await Application(responder: gateway.responder()).test(.live) { client in
                try await body(
                    EnvdHarness(
                        port: try #require(client.port),
                        sandbox: sandbox,
                        token: token,
                        tokens: tokens,
                        cluster: cluster
                    )
                )
            }
        } catch {
            await connection.close()
            throw error
        }
        await connection.close()
    }

    struct HTTPAnswer: Sendable {
        var status: Int
        var contentType: String
        var body: Data
        var text: String { String(decoding: body, as: UTF8.self) }
        /// The body as a JSON object.
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
    }

    /// One HTTP call to the gateway, addressed to the sandbox's envd (unless `headers` say otherwise).
    func http(
        _ method: String,
        _ path: String,
        headers: [String: String] = [:],
        token: String? = nil,
        body: Data? = nil
    ) async throws -> HTTPAnswer {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        request.httpMethod = method
        request.timeoutInterval = 120
        request.setValue(sandbox.id, forHTTPHeaderField: "E2b-Sandbox-Id")
        request.setValue("49983", forHTTPHeaderField: "E2b-Sandbox-Port")
        request.setValue(token ?? self.token, forHTTPHeaderField: "X-Access-Token")
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        request.httpBody = body
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = try #require(response as? HTTPURLResponse)
        return HTTPAnswer(
            status: http.statusCode,
            contentType: http.value(forHTTPHeaderField: "Content-Type") ?? "",
            body: data
        )
    }

    /// A unary Connect call with a JSON body.
    func unary(_ method: String, _ json: String, token: String? = nil, user: String? = nil) async throws -> HTTPAnswer {
        var headers = ["Content-Type": "application/json"]
        if let user { headers["Authorization"] = "Basic " + Data("\(user):".utf8).base64EncodedString() }
        return try await http("POST", "/\(method)", headers: headers, token: token, body: Data(json.utf8))
    }

    /// A server-streaming Connect call with a JSON body: its messages and its end-of-stream error.
    struct StreamAnswer: Sendable {
        var status: Int
        var messages: [Data]
        /// The end-of-stream JSON, `{}` when the call succeeded.
        var end: [String: Any] { (try? JSONSerialization.jsonObject(with: endData)) as? [String: Any] ?? [:] }
        var endData: Data
        var body: Data
    }

    func stream(
        _ method: String,
        _ json: String,
        token: String? = nil,
        user: String? = nil
    ) async throws
        -> StreamAnswer
    {
        var headers = ["Content-Type": "application/connect+json"]
        if let user { headers["Authorization"] = "Basic " + Data("\(user):".utf8).base64EncodedString() }
        let message = Data(json.utf8)
        var envelope = Data([0])
        withUnsafeBytes(of: UInt32(message.count).bigEndian) { envelope.append(contentsOf: $0) }
        envelope.append(message)
        let answer = try await http("POST", "/\(method)", headers: headers, token: token, body: envelope)
        var result = StreamAnswer(status: answer.status, messages: [], endData: Data(), body: answer.body)
        guard answer.status == 200 else { return result }
        var bytes = answer.body[...]
        while bytes.count >= 5 {
            let flags = bytes[bytes.startIndex]
            let length = bytes.dropFirst().prefix(4).reduce(0) { $0 << 8 | Int($1) }
            let payload = Data(bytes.dropFirst(5).prefix(length))
            bytes = bytes.dropFirst(5 + length)
            if flags & 0x02 != 0 { result.endData = payload } else { result.messages.append(payload) }
        }
        return result
    }

    /// A process call's events, decoded.
    static func events(_ answer: StreamAnswer) throws -> [Process_ProcessEvent] {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = false
        return try answer.messages.map { try Process_StartResponse(jsonUTF8Data: $0, options: options).event }
    }

    /// A command's stdout, stderr and end from its events.
    static func outcome(
        _ events: [Process_ProcessEvent]
    ) -> (
        stdout: String, stderr: String, end: Process_ProcessEvent.EndEvent?
    ) {
        var stdout = Data()
        var stderr = Data()
        var end: Process_ProcessEvent.EndEvent?
        for event in events {
            switch event.event {
            case .data(let data):
                switch data.output {
                case .stdout(let bytes): stdout += bytes
                case .stderr(let bytes): stderr += bytes
                default: break
                }
            case .end(let ended): end = ended
            default: break
            }
        }
        return (String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self), end)
    }

    /// The JSON of a StartRequest running `command` with bash -l -c, as the SDK sends it.
    static func startJSON(
        _ command: String,
        stdin: Bool? = nil,
        cwd: String? = nil,
        envs: [String: String] = [:]
    )
        throws -> String
    {
        var process: [String: Any] = ["cmd": "/bin/bash", "args": ["-l", "-c", command]]
        if !envs.isEmpty { process["envs"] = envs }
        if let cwd { process["cwd"] = cwd }
        var request: [String: Any] = ["process": process]
        if let stdin { request["stdin"] = stdin }
        return String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
    }
}
