import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Every 250 ms: the core's timers (nodes gone silent, drain deadlines, retry backoffs, queue
    /// deadlines, recovery, store writes to try again), the tenants file and retention.
    func tick() async {
        let now = ContinuousClock.now
        handle(.tick)
        sendHeldIfLeading()
        reloadTenantsIfChanged(now: now)
        await pruneIfDue(now: now)
    }

    private func reloadTenantsIfChanged(now: ContinuousClock.Instant) {
        guard let file = config.tenantsFile, now - lastTenantsCheck >= .seconds(2) else { return }
        lastTenantsCheck = now
        let stamp = modificationDate(file)
        guard stamp != tenantsFileStamp else { return }
        tenantsFileStamp = stamp
        do {
            handle(.tenantsChanged(try TenantDirectory.load(path: file)))
            logger.notice("tenants reloaded", metadata: ["file": "\(file)", "tenants": "\(tenants.tenants.count)"])
        } catch {
            logger.error("tenants file not reloaded; keeping the previous one", metadata: ["error": "\(error)"])
        }
    }

    nonisolated func sendCancel(jobID: String, attempt: UInt32, nodeID: String, reason: String) {
        var cancel = Hangar_V1_CancelAttempt()
        cancel.schedulerTerm = config.term
        cancel.jobID = jobID
        cancel.attempt = attempt
        cancel.reason = reason
        if let payload = try? cancel.serializedData() {
            try? control.publish(Subjects.nodeCancel(node: nodeID), payload: payload)
        }
    }

    // MARK: Heartbeats

    func handleHeartbeat(_ message: NATSMessage) {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init), Subjects.isValidToken(nodeID),
            let heartbeat = try? Hangar_V1_NodeHeartbeat(serializedBytes: message.payload)
        else {
            logger.warning("ignored a malformed heartbeat", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        if let known = nodeIncarnations[nodeID] {
            if known != heartbeat.incarnation {
                logger.notice("node restarted (new incarnation)", metadata: ["node.id": "\(nodeID)"])
                nodeIncarnations[nodeID] = heartbeat.incarnation
            }
        } else {
            logger.info("node joined", metadata: ["node.id": "\(nodeID)", "slots": "\(heartbeat.capacity.slotsTotal)"])
            nodeIncarnations[nodeID] = heartbeat.incarnation
        }
        handle(.heartbeat(nodeID: nodeID, heartbeat))
    }
}
