import Foundation
import HangarNATS
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarClient

/// The client's errors without a cluster: nothing listening, no scheduler or node answering, a
/// scheduler that does not answer in time, arguments refused before anything is sent.
@Suite("HangarClient: errors without a cluster")
struct HangarClientErrorTests {
    @Test("nothing listening at the URL is a connection error that names it")
    func nothingListening() async throws {
        let port = try await withNATSServer { server in server.url }  // a port nothing listens on any more
        do {
            _ = try await Hangar.connect(url: port, tenant: "a", connectTimeout: .milliseconds(500))
            Issue.record("connected to \(port)")
        } catch let error as HangarClientError {
            #expect(error.kind == .connection && error.message.contains(port), "\(error)")
        }
    }

    @Test("no scheduler, no node, a scheduler that does not answer, and bad arguments")
    func noResponders() async throws {
        try await withNATSServer { server in
            let timeouts = Hangar.Timeouts(control: .milliseconds(300), operation: .milliseconds(300))
            let hangar = try await Hangar.connect(url: server.url, tenant: "a", timeouts: timeouts)
            await expectError(.noResponders, "no scheduler is answering") { _ = try await hangar.listSandboxes() }
            await expectError(.noResponders, "no scheduler is answering") { _ = try await hangar.sandbox("s1") }

            // A data-plane call to a node that is gone: one request, and a stream.
            var info = Hangar_V1_SandboxInfo()
            info.id = "s1"
            info.nodeID = "gone"
            info.state = .sandboxRunning
            let sandbox = Sandbox(hangar: hangar, info: SandboxInfo(info))
            await expectError(.noResponders, "no node gone is answering") { _ = try await sandbox.files.read("x") }
            await expectError(.noResponders, "no node is answering") { _ = try await sandbox.commands.run(["true"]) }
            await expectError(.noResponders, "no node is answering") { _ = try await sandbox.runCode("1") }

            // A scheduler that takes the request and never answers: bounded by the control timeout.
            let silent = try await hangar.connection.subscribeConfirmed(Subjects.sandbox(tenant: "a", verb: ">"))
            await expectError(.timedOut, "did not answer") { _ = try await hangar.listSandboxes() }
            silent.unsubscribe()

            // Refused before anything is sent.
            await expectError(.invalidArgument, "1...1000") { _ = try await hangar.listSandboxes(limit: 0) }
            await expectError(.invalidArgument, "at most 24 hours") {
                _ = try await hangar.createSandbox(.init(timeout: .seconds(90_000)))
            }
            await expectError(.invalidArgument, "argv[0]") { _ = try await sandbox.commands.run([]) }
            await expectError(.invalidArgument, "over 1 MiB") {
                _ = try await sandbox.commands.run(["cat"], stdin: Data(count: (1 << 20) + 1))
            }
            #expect(throws: HangarClientError.self) { try Hangar(connection: hangar.connection, tenant: "a.b") }
            await hangar.close()
        }
    }
}

/// Expects `body` to throw a ``HangarClientError`` of `kind` whose message contains `words`.
private func expectError(
    _ kind: HangarClientError.Kind,
    _ words: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected a \(kind) error, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as HangarClientError {
        #expect(error.kind == kind && error.message.contains(words), "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a HangarClientError of \(kind), got \(error)", sourceLocation: sourceLocation)
    }
}
