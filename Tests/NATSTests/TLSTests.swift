import Foundation
import HangarNATS
import HangarTestSupport
import Testing

@Suite("TLS to a real nats-server")
struct TLSTests {
    @Test("with the CA the connection is TLS and works; without it, or in plain text, it is refused")
    func tlsWithCA() async throws {
        let directory = try makeTemporaryDirectory("hangar-nats-tls")
        defer { try? FileManager.default.removeItem(at: directory) }
        let pki = try TestPKI(in: directory.appendingPathComponent("pki"))
        let server = try await LocalNATSServer(
            directory: directory.appendingPathComponent("nats"),
            extraConfig: """
                tls {
                    cert_file: "\(pki.serverCertificate.path)"
                    key_file: "\(pki.serverKey.path)"
                }
                """
        )
        defer { server.stop() }

        var options = NATSConnectionOptions(servers: ["tls://127.0.0.1:\(server.port)"], name: "tls-client")
        options.tlsCAFile = pki.caCertificate.path
        let connection = try await NATSConnection(options: options)
        let subscription = try connection.subscribe("tls.echo")
        try await connection.flush()
        try connection.publish("tls.echo", payload: Data("over TLS".utf8))
        var iterator = subscription.makeAsyncIterator()
        let message = try #require(await iterator.next())
        #expect(String(decoding: message.payload, as: UTF8.self) == "over TLS")
        await connection.close()

        // The CA file alone makes a nats:// URL a TLS connection too.
        var plainURL = NATSConnectionOptions(servers: [server.url], name: "tls-by-ca")
        plainURL.tlsCAFile = pki.caCertificate.path
        let byCA = try await NATSConnection(options: plainURL)
        await byCA.close()

        // Not trusting the server's CA: the handshake fails; plain text: the server refuses it.
        await #expect(throws: NATSError.self) {
            _ = try await NATSConnection(
                options: NATSConnectionOptions(servers: ["tls://127.0.0.1:\(server.port)"], name: "no-ca")
            )
        }
        await #expect(throws: NATSError.self) {
            _ = try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: "plain"))
        }
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
private struct TestPKI {
    let caCertificate: URL
    let serverCertificate: URL
    let serverKey: URL

    init(in folder: URL) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        caCertificate = folder.appendingPathComponent("ca.pem")
        serverCertificate = folder.appendingPathComponent("server.pem")
        serverKey = folder.appendingPathComponent("server-key.pem")
        let caKey = folder.appendingPathComponent("ca-key.pem")
        let request = folder.appendingPathComponent("server.csr")
        let extensions = folder.appendingPathComponent("server.ext")
        try "subjectAltName=IP:127.0.0.1\n".write(to: extensions, atomically: true, encoding: .utf8)
        try Self.openssl([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey.path, "-out", caCertificate.path,
            "-days", "1", "-subj", "/CN=hangar test CA",
        ])
        try Self.openssl([
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", serverKey.path, "-out", request.path, "-subj",
            "/CN=127.0.0.1",
        ])
        try Self.openssl([
            "x509", "-req", "-in", request.path, "-CA", caCertificate.path, "-CAkey", caKey.path, "-CAcreateserial",
            "-out", serverCertificate.path, "-days", "1", "-extfile", extensions.path,
        ])
    }

    private static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw LocalNATSServerError("openssl \(arguments.prefix(2).joined(separator: " ")) failed")
        }
    }
}
