import CNATS
import Foundation

/// Where a stream's copies are and how current they are, as JetStream reports it.
public struct JetStreamStreamStatus: Sendable, Equatable {
    /// One copy of the stream other than the leader's.
    public struct Follower: Sendable, Equatable {
        /// The server's name (`server_name`).
        public var server: String
        /// Caught up with the leader.
        public var current: Bool
        /// The leader has not heard from it (its server is down or cut off).
        public var offline: Bool
        /// Operations it is behind the leader.
        public var lag: UInt64
        /// Since the leader last heard from it.
        public var lastSeen: Duration

        public init(server: String, current: Bool, offline: Bool, lag: UInt64, lastSeen: Duration) {
            self.server = server
            self.current = current
            self.offline = offline
            self.lag = lag
            self.lastSeen = lastSeen
        }
    }

    public var name: String
    /// The configured number of copies.
    public var replicas: Int
    /// The server whose copy leads (takes the publishes); empty while a leader is being elected, or
    /// on a server that is not clustered.
    public var leader: String
    public var followers: [Follower]
    /// Messages and bytes the stream holds now.
    public var messages: UInt64
    public var bytes: UInt64
    /// The sequence of the oldest message it holds, and of the newest it ever stored (0: none yet).
    public var firstSequence: UInt64 = 0
    public var lastSequence: UInt64 = 0

    public init(name: String, replicas: Int, leader: String, followers: [Follower], messages: UInt64, bytes: UInt64) {
        self.name = name
        self.replicas = replicas
        self.leader = leader
        self.followers = followers
        self.messages = messages
        self.bytes = bytes
    }
}

extension JetStream {
    /// The stream's copies and state; nil if there is no such stream.
    public func streamStatus(_ name: String) async throws(NATSError) -> JetStreamStreamStatus? {
        let context = UncheckedPointer(self.context)
        return try await runBlocking { () throws(NATSError) -> JetStreamStreamStatus? in
            var info: UnsafeMutablePointer<jsStreamInfo>?
            var code = jsErrCode(rawValue: 0)
            let status = js_GetStreamInfo(&info, context.pointer, name, nil, &code)
            if status == NATS_NOT_FOUND || code == JSStreamNotFoundErr { return nil }
            try NATSError.check(status, "stream info of \(name) [js error \(code.rawValue)]")
            guard let info else { return nil }
            defer { jsStreamInfo_Destroy(info) }
            var result = JetStreamStreamStatus(
                name: name,
                replicas: Int(info.pointee.Config?.pointee.Replicas ?? 1),
                leader: "",
                followers: [],
                messages: info.pointee.State.Msgs,
                bytes: info.pointee.State.Bytes
            )
            result.firstSequence = info.pointee.State.FirstSeq
            result.lastSequence = info.pointee.State.LastSeq
            if let cluster = info.pointee.Cluster?.pointee {
                result.leader = cluster.Leader.map { String(cString: $0) } ?? ""
                for index in 0..<Int(cluster.ReplicasLen) {
                    guard let peer = cluster.Replicas?[index]?.pointee else { continue }
                    result.followers.append(
                        .init(
                            server: peer.Name.map { String(cString: $0) } ?? "",
                            current: peer.Current,
                            offline: peer.Offline,
                            lag: peer.Lag,
                            lastSeen: .nanoseconds(peer.Active)
                        )
                    )
                }
            }
            return result
        }
    }
}

extension NATSConnection {
    /// The URL of the server this connection is on now ("" while disconnected).
    public var connectedURL: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard natsConnection_GetConnectedUrl(handle, &buffer, buffer.count) == NATS_OK else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Every server URL this connection knows: the ones it was given and the ones the cluster
    /// told it about.
    public var knownServers: [String] {
        var servers: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        var count: Int32 = 0
        guard natsConnection_GetServers(handle, &servers, &count) == NATS_OK, let servers else { return [] }
        defer {
            for index in 0..<Int(count) { free(servers[index]) }
            free(servers)
        }
        return (0..<Int(count)).compactMap { servers[$0].map { String(cString: $0) } }
    }
}
