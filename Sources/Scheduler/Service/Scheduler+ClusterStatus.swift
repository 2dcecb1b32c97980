import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// `hangar.admin.cluster`: the NATS servers this scheduler's connection knows, where each of
    /// Hangar's streams has its copies (leader, followers, lag), and this scheduler.
    public nonisolated func clusterStatus() async -> Hangar_V1_ClusterStatusReply {
        var reply = Hangar_V1_ClusterStatusReply()
        reply.natsServers = nats.knownServers
        reply.streamReplicas = UInt32(config.streamReplicas)
        let jetStream = try? nats.jetStream(timeout: .seconds(2))
        // The store log is in use only with a leader lease (several schedulers).
        for name in Streams.all where name != Streams.storeLog || config.term != 0 {
            var stream = Hangar_V1_StreamStatus()
            stream.name = name
            do {
                guard let jetStream else {
                    throw NATSError(kind: .closed, operation: "JetStream", message: "unavailable")
                }
                if let status = try await jetStream.streamStatus(name) {
                    stream.replicas = UInt32(status.replicas)
                    stream.leader = status.leader
                    stream.messages = status.messages
                    stream.bytes = status.bytes
                    stream.followers = status.followers.map { follower in
                        var replica = Hangar_V1_StreamReplica()
                        replica.server = follower.server
                        replica.current = follower.current
                        // nats-server 2.9 flags a peer offline only in some cases; a copy whose
                        // server died shows as not current and not heard from: Raft's heartbeat is
                        // 1 s, so 5 s of silence means down or cut off.
                        replica.offline = follower.offline || (!follower.current && follower.lastSeen >= .seconds(5))
                        replica.lag = follower.lag
                        replica.lastSeenMs =
                            follower.lastSeen.components.seconds * 1000 + follower.lastSeen.components.attoseconds
                            / 1_000_000_000_000_000
                        return replica
                    }
                } else {
                    stream.error = "no such stream (the scheduler creates it at start)"
                }
            } catch {
                stream.error = "\(error)"
            }
            reply.streams.append(stream)
        }
        var this = Hangar_V1_SchedulerStatus()
        this.id = Self.processID
        // A scheduler serves only while it leads (a standby waits for the lease and answers nothing).
        this.role = config.term == 0 ? "single" : config.holdsLease?() ?? true ? "leader" : "suspended"
        this.term = config.term
        this.natsServer = nats.connectedURL
        this.holder = config.leaseHolder ?? ""
        this.logApplied = store.leadingLogPosition ?? 0
        reply.schedulers = [this] + (await otherSchedulers())
        return reply
    }

    /// How a scheduler names its process: host and process id.
    public static var processID: String { "\(ProcessInfo.processInfo.hostName) pid \(getpid())" }

    /// How long an announcement counts: three of them missed (they come every 2 s).
    static let presenceLifetime: Duration = .seconds(6)

    /// An announcement on ``Subjects/schedulerPresence``; anything that is not one is ignored.
    func heardPresence(_ message: NATSMessage) {
        guard let status = try? Hangar_V1_SchedulerStatus(serializedBytes: message.payload),
            !status.holder.isEmpty, status.holder.utf8.count <= 200, status.holder != config.leaseHolder
        else { return }
        let now = ContinuousClock.now
        presences[status.holder] = (status, now)
        // Forget the long gone, so that restarts (a new holder each) do not pile up.
        presences = presences.filter { now - $0.value.heardAt < .seconds(60) }
    }

    /// The other schedulers heard within ``presenceLifetime``, by id.
    func otherSchedulers() -> [Hangar_V1_SchedulerStatus] {
        let now = ContinuousClock.now
        return presences.values.filter { now - $0.heardAt < Self.presenceLifetime }
            .map { entry in
                var status = entry.status
                status.lastSeenMs = Int64(clamping: entry.heardAt.milliseconds(until: now))
                return status
            }
            .sorted { ($0.id, $0.holder) < ($1.id, $1.holder) }
    }
}
