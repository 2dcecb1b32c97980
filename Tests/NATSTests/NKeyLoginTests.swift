import Foundation
import HangarNATS
import HangarTestSupport
import Testing

/// NKey challenge–response through the binding's signature callback (run under ASan by
/// scripts/check-leaks). The key pair is a fixed test pair (made by `hangar tenant add`), not a secret.
@Suite("NATS binding: NKey logins")
struct NKeyLoginTests {
    static let nkey = "UCRZ2GL3TRAKY2QRIVOO3GXDPZDUIWKQDUPWOBBF2SZ5QWSQQ2ANZTU4"
    static let seed = "SUAJ775AZCOLHGD4QFJBL2ZKTTKXSVZH7NF7FOWFXIOFVM5RD3BZ23WJCE"
    /// Another pair's seed: a valid key, but not the one the server knows.
    static let otherSeed = "SUAPT555YKXFUN7R6S2HH5OHGLBDREPWHDX47YFQWLRNACNGS7IMOMGG5M"

    @Test("the server lets in the holder of the seed and refuses another seed or none")
    func nkeyLogin() async throws {
        let directory = try makeTemporaryDirectory("hangar-nats-nkey")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(
            directory: directory,
            extraConfig: "authorization { users = [ {nkey: \"\(Self.nkey)\"} ] }"
        )
        defer { server.stop() }
        var options = NATSConnectionOptions(servers: [server.url], name: "nkey")
        options.nkey = Self.nkey
        options.nkeySeed = Self.seed
        let connection = try await NATSConnection(options: options)
        let echo = try connection.subscribe("echo")
        let responder = Task {
            for await message in echo {
                if let reply = message.replyTo { try? connection.publish(reply, payload: message.payload) }
            }
        }
        let answer = try await connection.request("echo", payload: Data("hi".utf8), timeout: .seconds(5))
        #expect(answer.payload == Data("hi".utf8))
        responder.cancel()
        echo.unsubscribe()
        await connection.close()

        options.nkeySeed = Self.otherSeed
        do {
            let wrong = try await NATSConnection(options: options)
            await wrong.close()
            Issue.record("the server let in a connection signing with another seed")
        } catch let error as NATSError {
            #expect(error.kind == .authenticationFailed, "\(error)")
        }
        options.nkeySeed = nil
        do {
            let missing = try await NATSConnection(options: options)
            await missing.close()
            Issue.record("an NKey login without a seed connected")
        } catch let error as NATSError {
            #expect(error.kind == .invalidArgument, "\(error)")
        }
    }
}

extension NKeyLoginTests {
    /// 1,500 logins: libnats 3.4.1 sends a nonce signature that starts with a zero byte as none, so
    /// about one login in 256 would be refused without the retry in the binding (`NKeySignature`);
    /// the chance that 1,500 logins meet no such nonce is about 0.3%.
    @Test("1,500 NKey logins, 12 at a time from one process, all get in")
    func concurrentLogins() async throws {
        let directory = try makeTemporaryDirectory("hangar-nats-nkey-many")
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await LocalNATSServer(
            directory: directory,
            extraConfig: "authorization { users = [ {nkey: \"\(Self.nkey)\"} ] }"
        )
        defer { server.stop() }
        var options = NATSConnectionOptions(servers: [server.url], name: "nkey-many")
        options.nkey = Self.nkey
        options.nkeySeed = Self.seed
        let login = options
        for _ in 0..<125 {
            let failures = await withTaskGroup(of: String?.self) { group in
                for _ in 0..<12 {
                    group.addTask {
                        do {
                            let connection = try await NATSConnection(options: login)
                            await connection.close()
                            return nil
                        } catch {
                            return "\(error)"
                        }
                    }
                }
                var failures: [String] = []
                for await failure in group { if let failure { failures.append(failure) } }
                return failures
            }
            #expect(failures.isEmpty, "\(failures.count) of 12 concurrent logins failed: \(failures.first ?? "")")
        }
    }
}
