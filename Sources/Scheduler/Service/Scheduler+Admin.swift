import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// `hangar.admin.<verb>`: `nodes`, `job`, `drain`, `eligibility`, `audit`, `stats`, `jobs`, `cluster`, and the
    /// gateway's API keys: `apikey-create`, `apikey-revoke`, `apikey-list` (Scheduler+APIKeys.swift).
    nonisolated func handleAdmin(_ message: NATSMessage) async {
        let verb = Subjects.token(message.subject, at: 2).map(String.init) ?? ""
        guard mayAnswerOperator(message) else { return }
        let payload: Data?
        switch verb {
        case "nodes":
            payload = try? await nodesReply().serializedData()
        case "stats":
            payload = try? await clusterStats().serializedData()
        case "cluster":
            payload = try? await clusterStatus().serializedData()
        case "jobs":
            payload = try? await jobsReply(message.payload).serializedData()
        case "job":
            var reply = Hangar_V1_JobReply()
            if let request = try? Hangar_V1_JobRequest(serializedBytes: message.payload) {
                reply = await jobReply(request.jobID)
            } else {
                reply.error = "the payload is not a hangar.v1.JobRequest"
            }
            payload = try? reply.serializedData()
        case "drain":
            var reply = Hangar_V1_AdminReply()
            if let request = try? Hangar_V1_DrainRequest(serializedBytes: message.payload) {
                reply = await drain(request)
            } else {
                reply.message = "the payload is not a hangar.v1.DrainRequest"
            }
            payload = try? reply.serializedData()
        case "eligibility":
            var reply = Hangar_V1_AdminReply()
            if let request = try? Hangar_V1_EligibilityRequest(serializedBytes: message.payload) {
                reply = await setEligibility(request)
            } else {
                reply.message = "the payload is not a hangar.v1.EligibilityRequest"
            }
            payload = try? reply.serializedData()
        case "audit":
            var reply = Hangar_V1_AuditReply()
            if let request = try? Hangar_V1_AuditRequest(serializedBytes: message.payload) {
                reply = await audit(request)
            } else {
                reply.message = "the payload is not a hangar.v1.AuditRequest"
            }
            payload = try? reply.serializedData()
        case "apikey-create", "apikey-revoke", "apikey-list":
            payload = await apiKeyAdminReply(verb: verb, payload: message.payload)
        default:
            logger.info("unknown admin verb", metadata: ["verb": "\(verb)"])
            var reply = Hangar_V1_AdminReply()
            reply.message =
                "unknown admin verb '\(verb)'; known: nodes, job, drain, eligibility, audit, stats, jobs, cluster, apikey-create, apikey-revoke, apikey-list"
            payload = try? reply.serializedData()
        }
        if let payload, let replyTo = message.replyTo {
            try? nats.publish(replyTo, payload: payload)
        }
    }

    func nodesReply() -> Hangar_V1_NodesReply {
        let now = ContinuousClock.now
        var reply = Hangar_V1_NodesReply()
        let cluster = core.cluster
        var sandboxCounts: [String: [String: UInt32]] = [:]
        for entry in sandboxes.entries.values where !entry.stored.nodeID.isEmpty && entry.stored.state != .sandboxEnded
        {
            sandboxCounts[entry.stored.nodeID, default: [:]][entry.stored.tenant, default: 0] += 1
        }
        reply.nodes = cluster.views.sorted { $0.id < $1.id }.compactMap { view in
            guard let record = cluster.records[view.id] else { return nil }
            var info = Hangar_V1_NodeInfo()
            info.lastHeartbeat = record.heartbeat
            info.state = !view.up ? .down : (view.draining ? .draining : .up)
            info.eligible = view.eligible
            info.draining = view.draining
            info.drainDeadlineMs = record.drainDeadline
            info.slotsReserved = UInt32(view.slotsReserved)
            info.cpuMillisReserved = UInt32(clamping: view.cpuReserved)
            info.memoryBytesReserved = view.memoryReserved
            info.cpuMillisAllocatable = view.cpuMillis
            info.sandboxesByTenant = sandboxCounts[view.id] ?? [:]
            let (seconds, attoseconds) = (now - record.lastSeen).components
            info.lastSeenMsAgo = seconds * 1000 + attoseconds / 1_000_000_000_000_000
            return info
        }
        return reply
    }

    func jobReply(_ id: String) async -> Hangar_V1_JobReply {
        var reply = Hangar_V1_JobReply()
        if let job = core.jobs[id] {
            reply.tenant = job.tenant
            reply.attempt = job.attempts
            switch job.phase {
            case .running(_, let node, _), .restored(_, let node, _):
                reply.status = .running
                reply.nodeID = node
            case .finishing(let outcome, _, _) where outcome.node != nil:
                reply.status = .running  // its result is being stored
                reply.nodeID = outcome.node ?? ""
            default:
                reply.status = .queued
            }
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

    func drain(_ request: Hangar_V1_DrainRequest) async -> Hangar_V1_AdminReply {
        var control = nodeControls[request.nodeID] ?? NodeControl()
        control.draining = request.drain
        control.drainDeadline =
            request.drain && request.deadlineMs > 0 ? unixMilliseconds() + Int64(request.deadlineMs) : 0
        let actor = request.actor.isEmpty ? "operator" : "operator:\(request.actor)"
        return await setControl(
            control,
            nodeID: request.nodeID,
            actor: actor,
            event: request.drain ? "node.drain" : "node.undrain"
        )
    }

    func setEligibility(_ request: Hangar_V1_EligibilityRequest) async -> Hangar_V1_AdminReply {
        var control = nodeControls[request.nodeID] ?? NodeControl()
        control.eligible = request.eligible
        let actor = request.actor.isEmpty ? "operator" : "operator:\(request.actor)"
        return await setControl(
            control,
            nodeID: request.nodeID,
            actor: actor,
            event: request.eligible ? "node.eligible" : "node.ineligible"
        )
    }

    private func setControl(
        _ control: NodeControl,
        nodeID: String,
        actor: String,
        event: String
    ) async -> Hangar_V1_AdminReply {
        var reply = Hangar_V1_AdminReply()
        guard core.cluster.view(nodeID) != nil else {
            reply.message = "no node '\(nodeID)' has reported to this scheduler"
            return reply
        }
        do {
            try await store.write(.nodeControl(nodeID: nodeID, control: control, actor: actor, event: event))
        } catch {
            reply.message = "could not record the change: \(error)"
            return reply
        }
        nodeControls[nodeID] = control
        applyControl(control, to: nodeID)
        logger.notice("operator action", metadata: ["node.id": "\(nodeID)", "event": "\(event)", "actor": "\(actor)"])
        reply.ok = true
        reply.message =
            "\(nodeID): eligible=\(control.eligible) draining=\(control.draining)"
            + (control.drainDeadline > 0 ? " deadline in \((control.drainDeadline - unixMilliseconds()) / 1000) s" : "")
        return reply
    }

    /// Hands an operator's node setting to the core (the drain deadline, unix ms in the store, as
    /// a point on the core's clock).
    func applyControl(_ control: NodeControl, to nodeID: String) {
        let deadline =
            control.draining && control.drainDeadline > 0
            ? ContinuousClock.now + .milliseconds(control.drainDeadline - unixMilliseconds()) : nil
        handle(.nodeControl(nodeID: nodeID, control, drainDeadline: deadline))
    }

    nonisolated func audit(_ request: Hangar_V1_AuditRequest) async -> Hangar_V1_AuditReply {
        var reply = Hangar_V1_AuditReply()
        do {
            if request.verify {
                reply = try await store.auditVerification()
            } else {
                reply.events = try await store.auditRows(
                    tenant: request.tenant.isEmpty ? nil : request.tenant,
                    jobID: request.jobID.isEmpty ? nil : request.jobID,
                    sinceMs: request.sinceMs,
                    limit: request.limit == 0 ? 100 : Int(min(request.limit, 10_000))
                )
            }
        } catch {
            reply.message = "the store could not be read: \(error)"
        }
        return reply
    }

    func loadNodeControls() async throws {
        nodeControls = try await store.nodeControls()
        for (nodeID, control) in nodeControls.sorted(by: { $0.key < $1.key }) { applyControl(control, to: nodeID) }
    }
}
