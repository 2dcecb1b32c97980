import Foundation
import Logging

/// A `nats-server` child process on a loopback port, for `hangar dev` and tests. Without a port
/// given, nats-server picks a free one itself and reports it in a ports file: choosing one here and
/// handing it over would race with other servers started meanwhile (tests run many at once), and a
/// client could end up talking to another test's server.
/// JetStream is on, stored under `directory`; the maximum payload is raised so that job output
/// fits in one message.
public final class LocalNATSServer: Sendable {
    public let port: Int
    /// The port of the server's monitoring endpoint (`/healthz`, `/varz`, `/jsz`), if it has one
    /// (cluster members do).
    public let monitoringPort: Int?
    public let directory: URL
    /// The address it listens on (127.0.0.1 unless asked for another).
    public let host: String
    public var url: String { "nats://\(host):\(port)" }
    private let process: Process
    private let logFile: URL

    /// The server's log (its standard output and error).
    public var logPath: String { logFile.path }

    /// The largest message the server accepts.
    public static let maxPayload = 16 * 1024 * 1024

    /// Starts nats-server and waits until it accepts connections. `executable` defaults to the first
    /// `nats-server` on PATH (or /usr/sbin, where Debian puts it). `extraConfig` is appended to the
    /// generated configuration (e.g. `include "/abs/authorization.conf"` to turn authorization on).
    /// With `cluster`, the server joins a cluster of servers on loopback.
    public convenience init(
        directory: URL,
        port: Int? = nil,
        executable: String? = nil,
        extraConfig: String = "",
        cluster: ClusterMembership? = nil,
        host: String = "127.0.0.1"
    ) async throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = directory.appendingPathComponent("nats.conf")
        let storeDir = directory.appendingPathComponent("jetstream").path
        try """
        listen: \(host):\(port.map(String.init) ?? "-1")
        max_payload: \(Self.maxPayload)
        max_pending: \(Self.maxPayload * 8)
        jetstream {
            store_dir: "\(storeDir)"
            max_memory_store: 268435456
            max_file_store: 1073741824
        }
        \(cluster.map { $0.configuration + "\nhttp: 127.0.0.1:-1" } ?? "")
        \(extraConfig)
        """.write(to: config, atomically: true, encoding: .utf8)
        try await self.init(configFile: config, environment: [:], directory: directory, executable: executable)
    }

    /// Runs nats-server on an existing configuration file (e.g. `deploy/cluster/nats-server.conf`),
    /// with `environment` added to this process's for the `$VARIABLES` the file names, and waits
    /// until it accepts connections. Its log, and the ports file it writes once it listens, go to
    /// `directory`. With `networkNamespace` it runs in that network namespace (`nsenter --net`,
    /// which execs it: the process is the server's), e.g. a test's separate host.
    public init(
        configFile config: URL,
        environment: [String: String],
        directory: URL,
        executable: String? = nil,
        networkNamespace: String? = nil
    ) async throws {
        let binary = try executable ?? Self.findExecutable()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let portsDirectory = directory.appendingPathComponent("ports")
        try? FileManager.default.removeItem(at: portsDirectory)
        try FileManager.default.createDirectory(at: portsDirectory, withIntermediateDirectories: true)
        logFile = directory.appendingPathComponent("nats-server.log")
        // Appended to: a server restarted in the same folder keeps its earlier runs' log.
        if !FileManager.default.fileExists(atPath: logFile.path) {
            _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        }
        let process = Process()
        let arguments = ["-c", config.path, "--ports_file_dir", portsDirectory.path]
        if let networkNamespace {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            process.arguments = ["--net=/run/netns/\(networkNamespace)", "--", binary] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = arguments
        }
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let log = try FileHandle(forWritingTo: logFile)
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        self.directory = directory
        do {
            (self.host, self.port, self.monitoringPort) = try await Self.waitUntilReady(
                process,
                portsDirectory: portsDirectory,
                logFile: logFile
            )
        } catch {
            Self.stop(process)
            throw error
        }
    }

    /// Waits for the server's ports file (written once it listens) and returns its client port.
    private static func waitUntilReady(
        _ process: Process,
        portsDirectory: URL,
        logFile: URL
    ) async throws -> (host: String, client: Int, monitoring: Int?) {
        let deadline = ContinuousClock.now + .seconds(10)
        let file = portsDirectory.appendingPathComponent("nats-server_\(process.processIdentifier).ports")
        while ContinuousClock.now < deadline {
            guard process.isRunning else {
                let log = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
                throw LocalNATSServerError("nats-server exited at start (status \(process.terminationStatus)): \(log)")
            }
            if let data = FileManager.default.contents(atPath: file.path),
                let ports = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let url = (ports["nats"] as? [String])?.first,
                let port = url.split(separator: ":").last.flatMap({ Int($0) }),
                let host = url.split(separator: "/").last?.split(separator: ":").first.map(String.init),
                canConnect(host: host, port: port)
            {
                let monitoring = (ports["monitoring"] as? [String])?.first?.split(separator: ":").last.flatMap {
                    Int($0)
                }
                return (host, port, monitoring)
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw LocalNATSServerError("nats-server did not report a listening port within 10 s; see \(logFile.path)")
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it to exit.
    public func stop() { Self.stop(process) }

    private static func stop(_ process: Process) {
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

    /// A TCP port on 127.0.0.1 that was free a moment ago, chosen below the kernel's range of
    /// ephemeral ports (`net.ipv4.ip_local_port_range`, from 32768 by default) when it can be: the
    /// kernel gives ports of that range to outgoing connections, and one of them taking a port
    /// chosen here before its server bound it made a cluster member fail at start ("address
    /// already in use", seen in CI). Otherwise a port the kernel picks.
    public static func freePort() throws -> Int {
        let low =
            (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
            .flatMap { $0.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } } ?? 32768
        if low > 11_000 {
            for _ in 0..<64 {
                if let port = try bindLoopback(port: Int.random(in: 10_000..<low)) { return port }
            }
        }
        guard let port = try bindLoopback(port: 0) else {
            throw LocalNATSServerError("bind(127.0.0.1:0): errno \(errno)")
        }
        return port
    }

    /// Binds a TCP socket to 127.0.0.1:`port` (0: any) and closes it; the port it got, or nil when
    /// that port is in use.
    private static func bindLoopback(port: Int) throws -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LocalNATSServerError("socket(): errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { return nil }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func canConnect(host: String, port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr(host)
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
