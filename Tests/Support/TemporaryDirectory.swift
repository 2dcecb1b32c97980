import Foundation
import HangarNATS
import HangarShared

/// A fresh folder under the system temp dir, for one test.
public func makeTemporaryDirectory(_ prefix: String = "hangar-test") throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Starts a real nats-server on a free loopback port in a temp folder, runs `body`, stops it.
public func withNATSServer<T>(_ body: (LocalNATSServer) async throws -> T) async throws -> T {
    let directory = try makeTemporaryDirectory("hangar-nats")
    let server = try await LocalNATSServer(directory: directory)
    defer {
        server.stop()
        try? FileManager.default.removeItem(at: directory)
    }
    return try await body(server)
}

/// A client connection for tests.
public func connectForTest(_ server: LocalNATSServer, name: String = "test") async throws -> NATSConnection {
    try await NATSConnection(options: NATSConnectionOptions(servers: [server.url], name: name))
}

/// A connection that logs in with `credentials` (user, password, inbox prefix).
public func connectForTest(
    _ server: LocalNATSServer,
    credentials: NATSCredentials,
    name: String = "test"
) async throws -> NATSConnection {
    var options = NATSConnectionOptions(servers: [server.url], name: name)
    options.logIn(with: credentials)
    return try await NATSConnection(options: options)
}

/// Starts nats-server with authorization on: the users of `auth` (see `AuthDirectory`) only.
public func startAuthorizedServer(_ auth: AuthDirectory, in directory: URL) async throws -> LocalNATSServer {
    let folder = directory.appendingPathComponent("nats")
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    return try await LocalNATSServer(directory: folder, extraConfig: auth.includeLine(fromConfigIn: folder))
}

/// The real `hangar` binary of this build (next to the test bundle), or `$HANGAR_BINARY`.
public func hangarBinary() throws -> URL {
    if let path = ProcessInfo.processInfo.environment["HANGAR_BINARY"] { return URL(fileURLWithPath: path) }
    var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("hangar")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    throw LocalNATSServerError(
        "no hangar binary next to \(CommandLine.arguments[0]); run `swift build` first or set HANGAR_BINARY"
    )
}
