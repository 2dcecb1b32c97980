import Foundation
import Synchronization

extension LocalNATSServer {
    /// A server's place in a cluster of servers on loopback (see ``LocalNATSCluster``).
    public struct ClusterMembership: Sendable {
        /// The cluster's name, the same on every member.
        public var clusterName: String
        /// This server's name (unique in the cluster; JetStream's Raft groups know it by this).
        public var serverName: String
        /// The port this server takes routes from the others on.
        public var routePort: Int
        /// The route ports of every member (nats-server skips a route to itself).
        public var routes: [Int]

        public init(clusterName: String, serverName: String, routePort: Int, routes: [Int]) {
            self.clusterName = clusterName
            self.serverName = serverName
            self.routePort = routePort
            self.routes = routes
        }

        /// The lines of nats-server's configuration that make it a member.
        var configuration: String {
            let routeURLs = routes.map { "nats-route://127.0.0.1:\($0)" }.joined(separator: ", ")
            return """
                server_name: "\(serverName)"
                cluster {
                    name: "\(clusterName)"
                    listen: 127.0.0.1:\(routePort)
                    routes: [\(routeURLs)]
                }
                """
        }
    }
}

/// Several `nats-server` child processes on loopback, clustered by routes, with JetStream clustered
/// over them (Raft: a stream of R3 keeps every acknowledged message on a majority), for the fault
/// test, benchmarks and tests. Each member has a folder of its own under `directory`
/// (`n1`, `n2`, …), its client port and route port fixed at the start, so that a member killed
/// with ``crash(_:)`` comes back by ``restart(_:)`` on the same ports and with its JetStream data,
/// the way a server restarts on its host.
public final class LocalNATSCluster: Sendable {
    /// Where a member runs when each has a host of its own: a network namespace and the address
    /// it listens on there (clients, routes and monitoring).
    public struct MemberHost: Sendable {
        public var address: String
        public var namespace: String

        public init(address: String, namespace: String) {
            self.address = address
            self.namespace = namespace
        }
    }

    /// The members' client URLs, in order: give all of them to every client.
    public let urls: [String]
    public let directory: URL
    private let clientPorts: [Int]
    private let routePorts: [Int]
    private let monitoringPorts: [Int]
    private let extraConfig: String
    private let memberConfig: @Sendable (Int) -> String
    private let configTemplate: URL?
    /// Each member's address: its host's, or `127.0.0.1`.
    private let addresses: [String]
    private let hosts: [MemberHost]?
    private let members: Mutex<[LocalNATSServer?]>

    /// The cluster's name in the servers' configuration.
    public static let clusterName = "hangar"

    /// Starts `size` clustered servers and waits until JetStream has elected its metadata leader
    /// (streams can then be created). `extraConfig` is appended to every member's configuration
    /// (e.g. the `include` of Hangar's authorization: the accounts must be the same everywhere).
    ///
    /// With `configTemplate` (`deploy/cluster/nats-server.conf`, for three members) every member
    /// runs that file as it is, given its settings through the environment the way the systemd
    /// unit gives them (`HANGAR_NATS_NAME`, `_LISTEN`, `_MONITOR`, `_STORE`, `_CLUSTER_LISTEN`,
    /// `_ROUTE_1`…`_3`), and `extraConfig` becomes the `authorization.conf` next to it.
    /// `memberConfig(index)` is appended to member `index`'s configuration only (e.g. its own
    /// `pid_file`); not with `configTemplate`. With `configTemplate` and `hosts` (one per member),
    /// each member runs in its host's network namespace and listens on its address only: routes,
    /// clients and monitoring cross real links.
    public init(
        size: Int = 3,
        directory: URL,
        extraConfig: String = "",
        configTemplate: URL? = nil,
        hosts: [MemberHost]? = nil,
        memberConfig: @escaping @Sendable (Int) -> String = { _ in "" }
    ) async throws {
        guard hosts == nil || configTemplate != nil else {
            throw LocalNATSServerError("servers on hosts of their own need a configuration template")
        }
        guard size >= 1 else { throw LocalNATSServerError("a cluster needs at least one server") }
        guard hosts == nil || hosts?.count == size else {
            throw LocalNATSServerError("\(hosts?.count ?? 0) hosts for \(size) servers: give one per server")
        }
        // Ports are chosen before starting, since every member's configuration names the others'
        // route ports; a port taken meanwhile makes that member fail at start, and it is reported.
        var ports = Set<Int>()
        while ports.count < 3 * size { ports.insert(try LocalNATSServer.freePort()) }
        let chosen = Array(ports)
        clientPorts = Array(chosen[..<size])
        routePorts = Array(chosen[size..<2 * size])
        monitoringPorts = Array(chosen[(2 * size)...])
        self.configTemplate = configTemplate
        addresses = hosts?.map(\.address) ?? Array(repeating: "127.0.0.1", count: size)
        self.hosts = hosts
        urls = zip(addresses, clientPorts).map { "nats://\($0):\($1)" }
        self.directory = directory
        self.extraConfig = extraConfig
        self.memberConfig = memberConfig
        members = Mutex(Array(repeating: nil, count: size))
        // The members' logs are appended to (a folder used before keeps its earlier runs' logs):
        // only what this start writes counts.
        let logStarts = (0..<size).map { index in
            (try? FileManager.default.attributesOfItem(
                atPath: folder(of: index).appendingPathComponent(
                    "nats-server.log"
                ).path
            )[.size] as? Int) ?? 0
        }
        do {
            let started = try await withThrowingTaskGroup(of: (Int, LocalNATSServer).self) { group in
                for index in 0..<size {
                    group.addTask { (index, try await self.startMember(index)) }
                }
                var started: [(Int, LocalNATSServer)] = []
                for try await member in group { started.append(member) }
                return started
            }
            members.withLock { members in
                for (index, server) in started { members[index] = server }
            }
            try await waitForMetadataLeader(logStarts: logStarts)
            for index in 0..<size { try await waitUntilHealthy(index) }
        } catch {
            stop()
            throw error
        }
    }

    /// The number of members, running or not.
    public var size: Int { clientPorts.count }

    /// The member's folder (its configuration, JetStream data and log).
    public func folder(of index: Int) -> URL { directory.appendingPathComponent("n\(index + 1)") }

    /// The member's log file.
    public func logPath(of index: Int) -> String { folder(of: index).appendingPathComponent("nats-server.log").path }

    /// Whether the member's process is running.
    public func isRunning(_ index: Int) -> Bool { members.withLock { $0[index]?.isRunning ?? false } }

    /// Kills the member at once (SIGKILL), as a crash of its host would.
    public func crash(_ index: Int) {
        let server = members.withLock { members in
            let server = members[index]
            members[index] = nil
            return server
        }
        server?.crash()
    }

    /// Starts the member again on its ports, with the JetStream data it had, and waits (up to 30 s)
    /// until its `/healthz` says it is current: routed to the others and caught up on every stream
    /// it holds a copy of. Only then may another member go down without a stream losing its
    /// majority (the same rule as upgrading a production cluster one host at a time).
    public func restart(_ index: Int) async throws {
        crash(index)
        let server = try await startMember(index)
        members.withLock { $0[index] = server }
        try await waitUntilHealthy(index)
    }

    /// Waits (up to 30 s) until the member's `/healthz` answers 200.
    public func waitUntilHealthy(_ index: Int) async throws {
        guard let port = members.withLock({ $0[index]?.monitoringPort }) else {
            throw LocalNATSServerError("nats-server n\(index + 1) is not running")
        }
        let deadline = ContinuousClock.now + .seconds(30)
        var last = ""
        while ContinuousClock.now < deadline {
            last = Self.get(host: addresses[index], port: port, path: "/healthz")
            if last.hasPrefix("HTTP/1.0 200") || last.hasPrefix("HTTP/1.1 200") { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw LocalNATSServerError(
            "nats-server n\(index + 1) was not healthy within 30 s (last answer: \(last.prefix(200))); see \(logPath(of: index))"
        )
    }

    /// Waits (up to `limit`) until every stream has settled, as the running members' `/jsz`
    /// say: each stream has a leader, and its leader reports every copy current and online, e.g.
    /// after a member's link was cut and healed, when its rejoining can set off elections. Only
    /// then may another member go down without a stream stalling.
    public func waitUntilStreamsSettled(within limit: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + limit
        var problem = "no answer"
        while ContinuousClock.now < deadline {
            let ports = members.withLock { $0.map { $0?.monitoringPort } }
            let answers = ports.enumerated().compactMap { index, port in
                port.map { ("n\(index + 1)", Self.get(host: addresses[index], port: $0, path: "/jsz?streams=true")) }
            }
            problem = Self.unsettledStreams(answers)
            if problem.isEmpty { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw LocalNATSServerError("the streams did not settle within \(limit): \(problem)")
    }

    /// What keeps the streams in the members' `/jsz?streams=true` answers (member name, answer)
    /// from being settled: "" when every stream a member holds has a leader that answered and
    /// reports every copy current and online.
    static func unsettledStreams(_ answers: [(member: String, answer: String)]) -> String {
        var streams: [String: (leader: String, reportedBy: [String: [[String: Any]]])] = [:]
        for (member, answer) in answers {
            guard let body = answer.range(of: "\r\n\r\n").map({ answer[$0.upperBound...] }),
                let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            else { return "\(member)'s /jsz did not answer" }
            for account in json["account_details"] as? [[String: Any]] ?? [] {
                for stream in account["stream_detail"] as? [[String: Any]] ?? [] {
                    let name = stream["name"] as? String ?? "?"
                    let cluster = stream["cluster"] as? [String: Any] ?? [:]
                    let leader = cluster["leader"] as? String ?? ""
                    // Only the leader's own word counts: a member back from a partition may still
                    // name a leader that has stepped down.
                    if leader == member { streams[name, default: ("", [:])].leader = leader }
                    streams[name, default: ("", [:])].reportedBy[member] =
                        cluster["replicas"] as? [[String: Any]] ?? []
                }
            }
        }
        var problems: [String] = []
        for (name, stream) in streams.sorted(by: { $0.key < $1.key }) {
            guard let replicas = stream.reportedBy[stream.leader] else {
                problems.append(stream.leader.isEmpty ? "\(name) has no leader" : "\(name)'s leader did not answer")
                continue
            }
            for replica in replicas where replica["current"] as? Bool != true || replica["offline"] as? Bool == true {
                problems.append("\(name)'s copy on \(replica["name"] as? String ?? "?") is not current")
            }
        }
        return problems.joined(separator: "; ")
    }

    /// A plain HTTP/1.0 GET: the whole answer, or "" when the port does not answer.
    static func get(host: String = "127.0.0.1", port: Int, path: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr(host)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return "" }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { return "" }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while answer.count < 1 << 20 {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            answer += buffer[..<count]
        }
        return String(decoding: answer, as: UTF8.self)
    }

    /// Stops every member.
    public func stop() {
        let servers = members.withLock { members in
            let servers = members.compactMap { $0 }
            members = Array(repeating: nil, count: members.count)
            return servers
        }
        for server in servers { server.stop() }
    }

    deinit { stop() }

    private func startMember(_ index: Int) async throws -> LocalNATSServer {
        if let configTemplate {
            let folder = folder(of: index)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let config = folder.appendingPathComponent("nats-server.conf")
            try? FileManager.default.removeItem(at: config)
            try FileManager.default.copyItem(at: configTemplate, to: config)
            try extraConfig.write(
                to: folder.appendingPathComponent("authorization.conf"),
                atomically: true,
                encoding: .utf8
            )
            var environment = [
                "HANGAR_NATS_NAME": "n\(index + 1)",
                "HANGAR_NATS_LISTEN": "\(addresses[index]):\(clientPorts[index])",
                "HANGAR_NATS_MONITOR": "\(addresses[index]):\(monitoringPorts[index])",
                "HANGAR_NATS_STORE": folder.appendingPathComponent("jetstream").path,
                "HANGAR_NATS_CLUSTER_LISTEN": "\(addresses[index]):\(routePorts[index])",
            ]
            for (number, port) in routePorts.enumerated() {
                environment["HANGAR_NATS_ROUTE_\(number + 1)"] = "nats-route://\(addresses[number]):\(port)"
            }
            return try await LocalNATSServer(
                configFile: config,
                environment: environment,
                directory: folder,
                networkNamespace: hosts?[index].namespace
            )
        }
        let membership = LocalNATSServer.ClusterMembership(
            clusterName: Self.clusterName,
            serverName: "n\(index + 1)",
            routePort: routePorts[index],
            routes: routePorts
        )
        return try await LocalNATSServer(
            directory: folder(of: index),
            port: clientPorts[index],
            extraConfig: extraConfig + "\n" + memberConfig(index),
            cluster: membership
        )
    }

    /// Waits (up to 30 s) until a member's log says JetStream's metadata leader was elected.
    private func waitForMetadataLeader(logStarts: [Int]) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            for index in 0..<size {
                let whole = FileManager.default.contents(atPath: logPath(of: index)) ?? Data()
                let log = String(decoding: whole.dropFirst(logStarts[index]), as: UTF8.self)
                if log.contains("JetStream cluster new metadata leader")
                    || log.contains("Self is new JetStream cluster metadata leader")
                {
                    return
                }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw LocalNATSServerError(
            "the \(size) nats-servers did not elect a JetStream metadata leader within 30 s; see \(logPath(of: 0))"
        )
    }
}
