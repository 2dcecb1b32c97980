import Foundation
import Glibc
import HTTPTypes
import HangarClient
import HangarClusterTestSupport
import HangarGateway
import HangarNode
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

/// The code-interpreter API (port 49999) end to end: the gateway over a real cluster (nats-server with
/// authorization, scheduler, node n1 with bubblewrap sandboxes running Hangar's kernel), called with
/// the requests e2b-code-interpreter 2.11.5 sends.
@Suite("Gateway: the code interpreter's /execute and /contexts", .serialized, .enabled(if: geteuid() == 0))
struct CodeInterpreterGatewayTests {
    static let secret = Data("code-interpreter-test-secret-0123456789".utf8)

    @Test(
        "state across cells, 1+1, stdout with timestamps, a matplotlib png, a DataFrame's html, an exception and the next cell, contexts, 404, 401, 422, a vanished client"
    )
    func endToEnd() async throws {
        try await withSandboxCluster { cluster, _ in try await exercise(cluster) }
    }

    private func exercise(_ cluster: AuthorizedCluster) async throws {
        let hangar = try Hangar(connection: cluster.tenantA, tenant: "a")
        let sandbox = try await hangar.createSandbox(.init(timeout: .seconds(600)))
        let tokens = try SandboxTokens(secret: Self.secret)
        let gatewayConnection = try await cluster.login(.gateway("gw"))
        defer { Task { await gatewayConnection.close() } }
        let gateway = Gateway(
            configuration: GatewayConfiguration(secret: Self.secret),
            authority: GatewayAuthority(
                keys: StaticAPIKeys([:]),
                tokens: tokens,
                directory: SandboxDirectory(connection: gatewayConnection)
            ),
            logger: Logger(label: "gateway-test")
        )
        let api = API(sandbox: sandbox.id, token: tokens.token(.traffic, tenant: "a", sandbox: sandbox.id))
        let app = Application(responder: gateway.responder())
        try await app.test(.live) { client in
            // State across cells; the last expression is the main result; the SDK's line types.
            let first = try await api.execute(client, ["code": "x = 1"])
            #expect(first.status == .ok)
            #expect(first.lines.last?["type"] as? String == "end_of_execution", "\(first.lines)")
            #expect(first.results.isEmpty && first.error == nil)
            let second = try await api.execute(
                client,
                ["code": "x += 1; x", "context_id": NSNull(), "language": NSNull(), "env_vars": NSNull()]
            )
            #expect(second.mainText == "2", "\(second.lines)")
            #expect((second.results.first?["is_main_result"] as? Bool) == true)
            #expect(second.executionCount.map { $0 >= 2 } == true, "\(second.lines)")

            // stdout and stderr lines with ISO timestamps; a string's repr loses its quotes (as in E2B).
            let printed = try await api.execute(
                client,
                ["code": "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n'text'"]
            )
            let stdout = printed.lines.filter { $0["type"] as? String == "stdout" }
            // One line per printed line, as Jupyter sends it (Hangar's kernel reads "hello" and "\n").
            #expect(stdout.map { $0["text"] as? String ?? "" } == ["hello\n"], "\(printed.lines)")
            #expect(
                printed.lines.contains {
                    $0["type"] as? String == "stderr" && ($0["text"] as? String ?? "").contains("oops")
                }
            )
            let stamp = try #require(stdout.first?["timestamp"] as? String)
            #expect(stamp.hasSuffix("+00:00") && stamp.count == 32, "\(stamp)")
            #expect(printed.mainText == "text")

            // Any text survives the ASCII-only JSON lines.
            let unicode = try await api.execute(client, ["code": "print('h\u{e9}llo \u{2028} \u{1F600}')"])
            #expect(
                unicode.lines.first { $0["type"] as? String == "stdout" }?["text"] as? String
                    == "h\u{e9}llo \u{2028} \u{1F600}\n"
            )
            #expect(!unicode.text.contains("\u{2028}"))

            // Hangar's own `timeout` (seconds) interrupts the cell and keeps the context.
            let interrupted = try await api.execute(client, ["code": "import time\ntime.sleep(30)", "timeout": 0.5])
            #expect(interrupted.error?["name"] as? String == "KeyboardInterrupt", "\(interrupted.lines)")

            // A matplotlib figure arrives as a png result (not the main result).
            let chart = try await api.execute(
                client,
                ["code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.title('t')"]
            )
            let png = try #require(chart.results.compactMap { $0["png"] as? String }.first, "\(chart.lines)")
            #expect(Data(base64Encoded: png)?.starts(with: [0x89, 0x50, 0x4E, 0x47]) == true)

            // A DataFrame as html and text; JSON results parsed into `json`.
            let frame = try await api.execute(
                client,
                ["code": "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})"]
            )
            let table = try #require(frame.results.first { $0["is_main_result"] as? Bool == true }, "\(frame.lines)")
            #expect((table["html"] as? String ?? "").contains("<table"))
            #expect((table["text"] as? String ?? "").contains("a  b"))

            // An exception is an error line; the context survives.
            let failing = try await api.execute(client, ["code": "y = 7\n1 / 0"])
            let error = try #require(failing.error, "\(failing.lines)")
            #expect(error["name"] as? String == "ZeroDivisionError")
            #expect(error["value"] as? String == "division by zero")
            #expect((error["traceback"] as? String ?? "").contains("ZeroDivisionError"))
            #expect(try await api.execute(client, ["code": "x + y"]).mainText == "9")

            // Bash by language; an unknown language, both a context and a language, bad bodies.
            let bash = try await api.execute(client, ["code": "echo from-bash $((2 * 21))", "language": "bash"])
            #expect(bash.lines.contains { ($0["text"] as? String) == "from-bash 42\n" }, "\(bash.lines)")
            let cobol = try await api.execute(client, ["code": "1", "language": "cobol"])
            #expect(cobol.status == .internalServerError && cobol.text.contains("Failed to create context"))
            if FileManager.default.isExecutableFile(atPath: "/usr/bin/node") {
                // JavaScript as E2B's SDKs name it ("js"), with variables for one cell only.
                let script = try await api.execute(
                    client,
                    [
                        "code": "const k = 6; k * 7 + ' ' + process.env.ONLY_HERE", "language": "js",
                        "env_vars": ["ONLY_HERE": "yes"],
                    ]
                )
                #expect(script.mainText == "42 yes", "\(script.lines)")
                let later = try await api.execute(
                    client,
                    ["code": "k + ' ' + process.env.ONLY_HERE", "language": "js"]
                )
                #expect(later.mainText == "6 undefined", "\(later.lines)")
            }
            let both = try await api.execute(client, ["code": "1", "language": "python", "context_id": "ctx-1"])
            #expect(both.status == .badRequest && both.text == "Only one of context_id or language can be provided")
            let malformed = try await api.call(client, "/execute", .post, body: "{not json")
            #expect(malformed.status == .unprocessableContent && malformed.text.contains("json_invalid"))
            let noCode = try await api.call(client, "/execute", .post, body: "{\"language\": \"python\"}")
            #expect(noCode.status == .unprocessableContent && noCode.text.contains("\"code\""))

            // Environment variables for one cell only.
            let env = try await api.execute(
                client,
                ["code": "import os\nos.environ['ONLY_HERE']", "env_vars": ["ONLY_HERE": "yes"]]
            )
            #expect(env.mainText == "yes", "\(env.lines)")
            let after = try await api.execute(client, ["code": "os.environ.get('ONLY_HERE', 'gone')"])
            #expect(after.mainText == "gone", "\(after.lines)")

            // Contexts: create (cwd), run in it, list, restart (state gone), remove (then 404).
            let created = try await api.call(
                client,
                "/contexts",
                .post,
                body: "{\"language\": \"python\", \"cwd\": \"/tmp\"}"
            )
            #expect(created.status == .ok, "\(created.text)")
            let context = try #require(created.json as? [String: Any])
            let id = try #require(context["id"] as? String)
            #expect(context["language"] as? String == "python" && context["cwd"] as? String == "/tmp")
            #expect(
                try await api.execute(client, ["code": "import os\nz = 3\nos.getcwd()", "context_id": id]).mainText
                    == "/tmp"
            )
            #expect(
                try await api.execute(client, ["code": "'z' in globals(), 'x' in globals()", "context_id": id]).mainText
                    == "(True, False)"
            )
            let listed = try await api.call(client, "/contexts", .get)
            let contexts = try #require(listed.json as? [[String: Any]], "\(listed.text)")
            #expect(contexts.contains { $0["id"] as? String == id && $0["cwd"] as? String == "/tmp" })
            #expect(contexts.contains { $0["language"] as? String == "bash" })
            let restarted = try await api.call(client, "/contexts/\(id)/restart", .post)
            #expect(restarted.status == .ok && restarted.text == "null")
            let cleared = try await api.execute(client, ["code": "z", "context_id": id])
            #expect(cleared.error?["name"] as? String == "NameError", "\(cleared.lines)")
            let removed = try await api.call(client, "/contexts/\(id)", .delete)
            #expect(removed.status == .ok && removed.text == "null")
            let gone = try await api.execute(client, ["code": "1", "context_id": id])
            #expect(gone.status == .notFound && gone.text == "Context \(id) not found")
            #expect(try await api.call(client, "/contexts/\(id)", .delete).status == .notFound)
            #expect(try await api.call(client, "/contexts/\(id)/restart", .post).status == .notFound)

            // A cell whose interpreter dies is reported; the next cell restarts the context (as Jupyter
            // restarts a dead kernel).
            let fragile = try #require(
                try await api.call(client, "/contexts", .post, body: "{}").json as? [String: Any]
            )
            let fragileID = try #require(fragile["id"] as? String)
            let died = try await api.execute(client, ["code": "import os\nos._exit(3)", "context_id": fragileID])
            #expect(died.status == .ok && died.error?["name"] as? String == "InterpreterDied", "\(died.lines)")
            #expect(try await api.execute(client, ["code": "6 * 7", "context_id": fragileID]).mainText == "42")

            // Two cells at once in one context: the second waits for the first (E2B queues them too).
            async let slow = api.execute(client, ["code": "import time\ntime.sleep(1.5)\n'slow'"])
            async let quick = api.execute(client, ["code": "'quick'"])
            let (slowAnswer, quickAnswer) = try await (slow, quick)
            #expect(
                slowAnswer.mainText == "slow" && quickAnswer.mainText == "quick",
                "\(slowAnswer.lines) \(quickAnswer.lines)"
            )

            // Tokens: none, another sandbox's, the envd token (X-Access-Token) also admits.
            #expect(
                try await API(sandbox: sandbox.id, token: nil).execute(client, ["code": "1"]).status == .unauthorized
            )
            let otherToken = tokens.token(.traffic, tenant: "a", sandbox: "other")
            #expect(
                try await API(sandbox: sandbox.id, token: otherToken).execute(client, ["code": "1"]).status
                    == .unauthorized
            )
            #expect(
                try await API(sandbox: sandbox.id, token: otherToken).call(client, "/contexts", .get).status
                    == .unauthorized
            )
            let envd = API(
                sandbox: sandbox.id,
                token: nil,
                envdToken: tokens.token(.envd, tenant: "a", sandbox: sandbox.id)
            )
            #expect(try await envd.execute(client, ["code": "x"]).mainText == "2")

            // A client that goes away mid-cell: the cell is interrupted, the context keeps its state.
            let port = try #require(client.port)
            let body = "{\"code\": \"import time\\nprint('started', flush=True)\\ntime.sleep(120)\"}"
            try await RawHTTP.sendAndDrop(
                port: port,
                path: "/execute",
                headers: api.rawHeaders,
                body: body,
                until: "started"
            )
            let started = ContinuousClock.now
            let next = try await api.execute(client, ["code": "x * 10"])
            #expect(next.mainText == "20", "\(next.lines)")
            #expect(ContinuousClock.now - started < .seconds(20))
        }
        try await sandbox.kill()
    }
}

/// The requests the SDK makes, for one sandbox.
struct API {
    let sandbox: String
    let token: String?
    var envdToken: String? = nil

    var headers: HTTPFields {
        var fields: HTTPFields = [.e2bSandboxID: sandbox, .e2bSandboxPort: "49999", .contentType: "application/json"]
        if let token { fields[.e2bTrafficAccessToken] = token }
        if let envdToken { fields[.xAccessToken] = envdToken }
        return fields
    }

    var rawHeaders: [(String, String)] { headers.map { ($0.name.rawName, $0.value) } }

    struct Answer {
        let status: HTTPResponse.Status
        let text: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) }
        var lines: [[String: Any]] {
            text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }
        var results: [[String: Any]] { lines.filter { $0["type"] as? String == "result" } }
        var mainText: String? { results.first { $0["is_main_result"] as? Bool == true }?["text"] as? String }
        var error: [String: Any]? { lines.first { $0["type"] as? String == "error" } }
        var executionCount: Int? {
            lines.first { $0["type"] as? String == "number_of_executions" }?["execution_count"] as? Int
        }
    }

    func call(
        _ client: some TestClientProtocol,
        _ path: String,
        _ method: HTTPRequest.Method,
        body: String? = nil
    ) async throws -> Answer {
        try await client.execute(uri: path, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) })
        {
            Answer(status: $0.status, text: String(buffer: $0.body))
        }
    }

    func execute(_ client: some TestClientProtocol, _ body: [String: Any]) async throws -> Answer {
        let data = try JSONSerialization.data(withJSONObject: body)
        return try await call(client, "/execute", .post, body: String(decoding: data, as: UTF8.self))
    }
}

/// A client that sends a request, reads its answer until it holds `until`, and closes the connection.
enum RawHTTP {
    static func sendAndDrop(
        port: Int,
        path: String,
        headers: [(String, String)],
        body: String,
        until marker: String
    ) async throws {
        try await Task.detached {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw RawHTTPError("socket: \(errno)") }
            defer { close(fd) }
            var timeout = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else { throw RawHTTPError("connect: \(errno)") }
            var request = "POST \(path) HTTP/1.1\r\nHost: localhost\r\nContent-Length: \(body.utf8.count)\r\n"
            for (name, value) in headers { request += "\(name): \(value)\r\n" }
            request += "\r\n" + body
            let bytes = Array(request.utf8)
            guard send(fd, bytes, bytes.count, 0) == bytes.count else { throw RawHTTPError("send: \(errno)") }
            var received = ""
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !received.contains(marker) {
                let count = recv(fd, &buffer, buffer.count, 0)
                guard count > 0 else { throw RawHTTPError("the answer ended before '\(marker)': \(received)") }
                received += String(decoding: buffer[0..<count], as: UTF8.self)
            }
        }.value
    }
}

struct RawHTTPError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
