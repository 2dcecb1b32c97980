import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("NATS binding under server authorization")
struct PermissionViolationTests {
    /// A server where `client` may publish only on `allowed` and subscribe only to its inbox
    /// `_INBOX.c.>`, and `service` may do anything.
    func withServer(_ body: (LocalNATSServer) async throws -> Void) async throws {
        let directory = try makeTemporaryDirectory("hangar-nats-auth")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(
            directory: directory,
            extraConfig: """
                authorization {
                  users = [
                    {user: "client", password: "secret-client", permissions: {publish: {allow: ["allowed"]}, subscribe: {allow: ["_INBOX.c.>"]}}}
                    {user: "service", password: "secret-service"}
                  ]
                }
                """
        )
        defer { server.stop() }
        try await body(server)
    }

    func connect(_ server: LocalNATSServer, user: String, inbox: String = "_INBOX") async throws -> NATSConnection {
        var options = NATSConnectionOptions(servers: [server.url], name: user)
        options.user = user
        options.password = "secret-\(user)"
        options.inboxPrefix = inbox
        return try await NATSConnection(options: options)
    }

    @Test("refused publish, request and subscription throw permissionDenied; the custom inbox prefix carries replies")
    func violationsSurface() async throws {
        try await withServer { server in
            let service = try await connect(server, user: "service")
            let client = try await connect(server, user: "client", inbox: "_INBOX.c")
            let requests = try service.subscribe("allowed")
            let responder = Task {
                for await message in requests { try? service.reply(to: message, payload: Data("pong".utf8)) }
            }
            defer { responder.cancel() }
            try await service.flush()

            // Allowed: a request whose reply comes back on the client's own inbox prefix.
            let answer = try await client.request("allowed", payload: Data("ping".utf8), timeout: .seconds(5))
            #expect(String(decoding: answer.payload, as: UTF8.self) == "pong")

            // Refused: a request fails at once with the server's text, not after its timeout.
            let started = ContinuousClock.now
            await #expect(throws: NATSError.self) {
                do {
                    _ = try await client.request("forbidden", payload: Data(), timeout: .seconds(30))
                } catch let error as NATSError {
                    #expect(error.kind == .permissionDenied)
                    #expect(error.message.contains("Publish to \"forbidden\""), "\(error)")
                    throw error
                }
            }
            #expect(ContinuousClock.now - started < .seconds(10))
            await #expect(throws: NATSError.self) { try await client.publishConfirmed("forbidden", payload: Data()) }
            await #expect(throws: NATSError.self) { _ = try await client.subscribeConfirmed("_INBOX.other.>") }
            // The same refusal twice is still a refusal (the connection's last error did not change).
            await #expect(throws: NATSError.self) { _ = try await client.subscribeConfirmed("_INBOX.other.>") }
            // Allowed operations after refusals still pass.
            try await client.publishConfirmed("allowed", payload: Data())
            let own = try await client.subscribeConfirmed("_INBOX.c.mine")
            own.unsubscribe()
            #expect(client.permissionViolations.count >= 4)
            await client.close()
            await service.close()
        }
    }

    @Test("a wrong password fails the connect with authenticationFailed")
    func badPassword() async throws {
        try await withServer { server in
            var options = NATSConnectionOptions(servers: [server.url], name: "intruder")
            options.user = "client"
            options.password = "wrong"
            await #expect(throws: NATSError.self) {
                do {
                    _ = try await NATSConnection(options: options)
                } catch let error as NATSError {
                    #expect(error.kind == .authenticationFailed, "\(error)")
                    throw error
                }
            }
        }
    }
}
