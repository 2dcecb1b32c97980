import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Every 250 ms: nodes gone silent, drain deadlines, retry backoffs, queue timeouts, tenants file.
    func tick() async {
        let now = ContinuousClock.now
        for nodeID in cluster.detectDown(at: now) {
            logger.warning("node down: no heartbeat within TTL + grace", metadata: ["node.id": "\(nodeID)"])
            try? await store.write(.audit(actor: "scheduler", event: "node.down", jobID: nil, detail: nodeID))
            loseAttempts(on: nodeID, reason: "node \(nodeID) stopped sending heartbeats")
        }
        for nodeID in cluster.drainsExpired(nowMs: unixMilliseconds()) {
            cluster.setDraining(nodeID, true, deadline: 0)
            try? await store.write(.audit(actor: "scheduler", event: "node.drain.deadline", jobID: nil, detail: nodeID))
            for entry in jobs.values where entry.nodeID == nodeID && !entry.finishing {
                cancelAttempt(entry, reason: "the drain deadline of node \(nodeID) passed")
            }
            loseAttempts(on: nodeID, reason: "the drain deadline of node \(nodeID) passed")
        }
        let ready = delayed.filter { $0.readyAt <= now }
        if !ready.isEmpty {
            delayed.removeAll { $0.readyAt <= now }
            for item in ready {
                if let entry = jobs[item.jobID], entry.nodeID == nil { requeue(entry) }
            }
        }
        settleRecovered(now: now)
        expireQueued(now: now)
        reloadTenantsIfChanged(now: now)
        await pruneIfDue(now: now)
        pump()
    }

    /// The node's running attempts are LOST: retried after a backoff while the job's retry policy
    /// allows, else the job ends LOST with the reason.
    func loseAttempts(on nodeID: String, reason: String) {
        for entry in jobs.values where entry.nodeID == nodeID && !entry.finishing {
            loseAttempt(entry.id, reason: reason)
        }
    }

    /// The job's current attempt is LOST: retried after a backoff while its retry policy allows,
    /// else the job ends LOST with the reason.
    func loseAttempt(_ jobID: String, reason: String) {
        guard var entry = jobs[jobID], let nodeID = entry.nodeID, !entry.finishing else { return }
        let now = ContinuousClock.now
        let attempt = entry.attempt
        releaseAttempt(&entry)
        entry.lostOn = nodeID
        entry.losses += 1
        entry.recovered = false
        jobs[entry.id] = entry
        let store = self.store
        let lost = StoreWrite.attemptEnded(jobID: entry.id, attempt: attempt, status: "LOST", detail: reason)
        Task { try? await store.write(lost) }
        if entry.losses < entry.submission.maxAttempts {
            let backoff = entry.submission.backoff * (1 << min(Int(entry.losses) - 1, 10))
            delayed.append((now + backoff, entry.id))
            logger.info(
                "attempt lost; retrying",
                metadata: [
                    "job.id": "\(entry.id)", "attempt": "\(attempt)", "node.id": "\(nodeID)", "retry.in": "\(backoff)",
                ]
            )
        } else {
            finishWithoutNode(
                entry,
                status: .lost,
                message:
                    "\(reason); attempt \(attempt) lost and no retries left (max_attempts \(entry.submission.maxAttempts))"
            )
        }
    }

    /// Ends EXPIRED the queued jobs that waited longer than the queue timeout, saying why they did not
    /// fit. An accepted job never ends REJECTED, and a job that already ran (an attempt of it was
    /// lost with its node) is retried by its policy, never expired.
    private func expireQueued(now: ContinuousClock.Instant) {
        let delayedIDs = Set(delayed.map(\.jobID))
        for entry in jobs.values
        where entry.nodeID == nil && !entry.finishing && entry.committed && entry.losses == 0
            && now - entry.acceptedAt >= config.queueTimeout && !delayedIDs.contains(entry.id)
        {
            queue.remove(tenant: entry.tenant, jobID: entry.id)
            let why = entry.lastPlacementProblem.isEmpty ? "no node fits" : entry.lastPlacementProblem
            finishWithoutNode(entry, status: .expired, message: "no capacity within \(config.queueTimeout): \(why)")
        }
    }

    private func reloadTenantsIfChanged(now: ContinuousClock.Instant) {
        guard let file = config.tenantsFile, now - lastTenantsCheck >= .seconds(2) else { return }
        lastTenantsCheck = now
        let stamp = modificationDate(file)
        guard stamp != tenantsFileStamp else { return }
        tenantsFileStamp = stamp
        do {
            tenants = try TenantDirectory.load(path: file)
            logger.notice("tenants reloaded", metadata: ["file": "\(file)", "tenants": "\(tenants.tenants.count)"])
        } catch {
            logger.error("tenants file not reloaded; keeping the previous one", metadata: ["error": "\(error)"])
        }
    }

    /// Tells the node to kill the sandbox of the entry's current attempt. No answer is awaited.
    nonisolated func cancelAttempt(_ entry: JobEntry, reason: String) {
        guard let nodeID = entry.nodeID else { return }
        sendCancel(jobID: entry.id, attempt: entry.attempt, nodeID: nodeID, reason: reason)
    }

    nonisolated func sendCancel(jobID: String, attempt: UInt32, nodeID: String, reason: String) {
        var cancel = Hangar_V1_CancelAttempt()
        cancel.jobID = jobID
        cancel.attempt = attempt
        cancel.reason = reason
        if let payload = try? cancel.serializedData() {
            try? control.publish(Subjects.nodeCancel(node: nodeID), payload: payload)
        }
    }

    // MARK: Heartbeats

    func handleHeartbeat(_ message: NATSMessage) async {
        guard let nodeID = Subjects.token(message.subject, at: 2).map(String.init), Subjects.isValidToken(nodeID),
            let heartbeat = try? Hangar_V1_NodeHeartbeat(serializedBytes: message.payload)
        else {
            logger.warning("ignored a malformed heartbeat", metadata: ["nats.subject": "\(message.subject)"])
            return
        }
        let event = cluster.record(heartbeat, from: nodeID, at: .now)
        switch event {
        case .joined:
            logger.info("node joined", metadata: ["node.id": "\(nodeID)", "slots": "\(heartbeat.capacity.slotsTotal)"])
            if let control = nodeControls[nodeID] { applyControl(control, to: nodeID) }
        case .returned:
            logger.notice("node is back", metadata: ["node.id": "\(nodeID)"])
            try? await store.write(.audit(actor: "scheduler", event: "node.up", jobID: nil, detail: nodeID))
        case .restarted:
            logger.notice("node restarted (new incarnation)", metadata: ["node.id": "\(nodeID)"])
            loseAttempts(on: nodeID, reason: "node \(nodeID) restarted")
        case .alive:
            break
        }
        if !heartbeat.runningJobs.isEmpty { reconcile(nodeID, running: heartbeat.runningJobs) }
        pump()
    }

    /// Kills sandboxes a node runs for attempts the scheduler no longer assigns to it.
    private func reconcile(_ nodeID: String, running: [String]) {
        for key in running {
            let parts = key.split(separator: "/")
            guard parts.count == 2, let attempt = UInt32(parts[1]) else { continue }
            let jobID = String(parts[0])
            if let entry = jobs[jobID], entry.nodeID == nodeID, entry.attempt == attempt { continue }
            logger.info(
                "node runs an attempt it no longer owns; killing it",
                metadata: ["node.id": "\(nodeID)", "job.id": "\(jobID)"]
            )
            sendCancel(
                jobID: jobID,
                attempt: attempt,
                nodeID: nodeID,
                reason: "the scheduler no longer assigns this attempt to this node"
            )
        }
    }
}
