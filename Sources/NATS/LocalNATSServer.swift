import Foundation
import Logging

/// A `nats-server` child process on a free loopback port, for `hangar dev` and tests.
/// JetStream is on, stored under `directory`; the maximum payload is raised so that job output
/// fits in one message.
public final class LocalNATSServer: Sendable {
    public let port: Int
    public let directory: URL
    public var url: String { "nats://127.0.0.1:\(port)" }
    private let process: Process
    private let logFile: URL

    /// The largest message the server accepts.
    public static let maxPayload = 16 * 1024 * 1024

    /// Starts nats-server and waits until it accepts connections. `executable` defaults to the first
    /// `nats-server` on PATH (or /usr/sbin, where Debian puts it). `extraConfig` is appended to the
    /// generated configuration (e.g. `include "/abs/authorization.conf"` to turn authorization on).
    public init(directory: URL, port: Int? = nil, executable: String? = nil, extraConfig: String = "") async throws {
        let binary = try executable ?? Self.findExecutable()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let chosenPort = try port ?? Self.freePort()
        let config = directory.appendingPathComponent("nats.conf")
        let storeDir = directory.appendingPathComponent("jetstream").path
        try """
        listen: 127.0.0.1:\(chosenPort)
        max_payload: \(Self.maxPayload)
        max_pending: \(Self.maxPayload * 8)
        jetstream {
            store_dir: "\(storeDir)"
            max_memory_store: 268435456
            max_file_store: 1073741824
        }
        \(extraConfig)
        """.write(to: config, atomically: true, encoding: .utf8)
        logFile = directory.appendingPathComponent("nats-server.log")
        FileManager.default.createFile(atPath: logFile.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-c", config.path]
        let log = try FileHandle(forWritingTo: logFile)
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        self.port = chosenPort
        self.directory = directory
        try await waitUntilReady()
    }

    private func waitUntilReady() async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            guard process.isRunning else {
                let log = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
                throw LocalNATSServerError("nats-server exited at start (status \(process.terminationStatus)): \(log)")
            }
            if Self.canConnect(port: port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        throw LocalNATSServerError("nats-server did not listen on 127.0.0.1:\(port) within 10 s; see \(logFile.path)")
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it to exit.
    public func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Kills the server at once, as a crash would.
    public func crash() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Tells the server to re-read its configuration (SIGHUP), e.g. after users were added.
    public func reload() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGHUP)
    }

    /// The server's process id.
    public var pid: Int32 { process.processIdentifier }

    public var isRunning: Bool { process.isRunning }

    deinit { stop() }

    static func findExecutable() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/usr/local/sbin", "/usr/bin"] {
            let candidate = "\(dir)/nats-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw LocalNATSServerError("nats-server is not installed: apt-get install -y nats-server")
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LocalNATSServerError("socket(): errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw LocalNATSServerError("bind(127.0.0.1:0): errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}

/// Why the local nats-server could not be started.
public struct LocalNATSServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
