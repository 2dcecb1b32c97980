import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// `hangar.admin.<verb>`: `nodes`, `job`.
    nonisolated func handleAdmin(_ message: NATSMessage) async {
        let verb = Subjects.token(message.subject, at: 2).map(String.init) ?? ""
        let payload: Data?
        switch verb {
        case "nodes":
            payload = try? await nodesReply().serializedData()
        case "job":
            var reply = Hangar_V1_JobReply()
            if let request = try? Hangar_V1_JobRequest(serializedBytes: message.payload) {
                reply = await jobReply(request.jobID)
            } else {
                reply.error = "the payload is not a hangar.v1.JobRequest"
            }
            payload = try? reply.serializedData()
        default:
            logger.info("unknown admin verb", metadata: ["verb": "\(verb)"])
            payload = nil
        }
        if let payload, let replyTo = message.replyTo {
            try? nats.publish(replyTo, payload: payload)
        }
    }

    func nodesReply() -> Hangar_V1_NodesReply {
        let now = ContinuousClock.now
        var reply = Hangar_V1_NodesReply()
        reply.nodes = cluster.nodes.sorted { $0.key < $1.key }.map { id, node in
            var info = Hangar_V1_NodeInfo()
            info.lastHeartbeat = node.heartbeat
            info.state = cluster.isUp(id, at: now) ? .up : .down
            info.slotsReserved = UInt32(node.reserved)
            let (seconds, attoseconds) = (now - node.lastSeen).components
            info.lastSeenMsAgo = seconds * 1000 + attoseconds / 1_000_000_000_000_000
            return info
        }
        return reply
    }

    func jobReply(_ id: String) async -> Hangar_V1_JobReply {
        var reply = Hangar_V1_JobReply()
        if let entry = jobs[id] {
            reply.tenant = entry.submission.tenant
            reply.status = entry.nodeID == nil ? .queued : .running
            return reply
        }
        do {
            if let lookup = try await store.job(id: id) {
                reply.tenant = lookup.tenant
                if let result = lookup.result {
                    reply.result = result
                } else {
                    reply.error = "job \(id) is recorded as \(lookup.status) but has no result"
                }
            } else {
                reply.error = "no job with id '\(id)'"
            }
        } catch {
            reply.error = "the store could not be read: \(error)"
        }
        return reply
    }
}
