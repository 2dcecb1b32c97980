import Foundation
import HangarNATS
import HangarShared

/// Stateful sandboxes on the node (issue 16): the scheduler asks the node to start one
/// (`hangar.node.<node>.sandbox.start`, request/reply) and to kill one
/// (`hangar.node.<node>.sandbox.kill`); the node's ``SandboxHost`` holds them, each in a slot of the
/// node's, until then; one that stops on its own is reported on `hangar.node.<node>.sandbox.died`.
///
/// Timeouts: the scheduler kills a sandbox at its timeout (and tells the node each new one on
/// `hangar.node.<node>.sandbox.timeout`); the node kills it itself `sandboxTimeoutGrace` later, so a
/// sandbox ends even while no scheduler runs (reported as died with `timed_out`).
extension NodeAgent {
    /// How long after a sandbox's timeout the node kills it if the scheduler has not.
    static let sandboxTimeoutGrace = Duration.seconds(2)

    /// Slots held by stateful sandboxes: those the host holds and those being started.
    var sandboxSlotsUsed: Int {
        guard let sandboxHost else { return 0 }
        let held = Set(sandboxHost.sandboxIDs)
        let starting = sandboxesStarting.withLock { $0.subtracting(held).count }
        return held.count + starting
    }

    /// Answers one start request (after the host has created the sandbox, or refused it).
    func handleSandboxStart(_ message: NATSMessage) async {
        var reply = Hangar_V1_SandboxStartReply()
        switch await startSandbox(message.payload) {
        case .success:
            reply.ok = true
        case .failure(let refusal):
            reply.refused = refusal.refused
            logger.info("refused a sandbox", metadata: ["reason": "\(refusal.refused.message)"])
        }
        if let payload = try? reply.serializedData() {
            try? nats.reply(to: message, payload: payload)
        }
    }

    private func startSandbox(_ payload: Data) async -> Result<Void, Refusal> {
        guard let start = try? Hangar_V1_SandboxStart(serializedBytes: payload) else {
            return .failure(Refusal(.badAssignment, "the payload is not a hangar.v1.SandboxStart"))
        }
        guard Subjects.isValidToken(start.sandboxID), Subjects.isValidToken(start.tenant) else {
            return .failure(Refusal(.badAssignment, "the start has no valid sandbox id or tenant"))
        }
        guard let sandboxHost else {
            return .failure(Refusal(.runtimeUnavailable, "node \(config.nodeID) holds no stateful sandboxes"))
        }
        // Placed on an earlier life of this node: the scheduler will end it LOST when it sees the
        // restart; starting it here would hold a sandbox nobody owns.
        guard start.nodeIncarnation.isEmpty || start.nodeIncarnation == incarnation else {
            return .failure(
                Refusal(
                    .badAssignment,
                    "placed on incarnation \(start.nodeIncarnation) of this node, which has restarted since (now \(incarnation))"
                )
            )
        }
        // From a scheduler that has lost the lease to a newer one.
        if let refusal = termFence.admit(start.schedulerTerm) {
            return .failure(Refusal(.staleTerm, refusal.description))
        }
        if sandboxHost.sandboxIDs.contains(start.sandboxID) { return .success(()) }  // a repeated start
        guard runtimeAvailable(start.runtime) else {
            return .failure(Refusal(.runtimeUnavailable, "runtime '\(start.runtime)' is not available here"))
        }
        let used = runningCount + sandboxSlotsUsed
        let admitted = sandboxesStarting.withLock { starting in
            guard !starting.contains(start.sandboxID), used < config.slots else { return false }
            starting.insert(start.sandboxID)
            return true
        }
        guard admitted else { return .failure(Refusal(.noFreeSlot, "all \(config.slots) slots are busy")) }
        defer { _ = sandboxesStarting.withLock { $0.remove(start.sandboxID) } }
        let id = start.sandboxID
        let report = sandboxDeathReport()
        do throws(SandboxRefusal) {
            try await sandboxHost.start(start) { message in report(id, message) }
        } catch {
            return .failure(Refusal(.runtimeUnavailable, error.message))
        }
        if start.timeoutMs > 0 {
            let deadline = ContinuousClock.now + .milliseconds(start.timeoutMs) + Self.sandboxTimeoutGrace
            sandboxDeadlines.withLock { $0[id] = deadline }
            sandboxHost.noteDeadline(id, unixMs: Self.unixTime(of: deadline))
        }
        logger.debug("sandbox started", metadata: ["sandbox.id": "\(id)", "tenant": "\(start.tenant)"])
        return .success(())
    }

    /// Reports a sandbox that died on its own (sandbox id, message) on `hangar.node.<node>.sandbox.died`.
    func sandboxDeathReport() -> @Sendable (_ sandboxID: String, _ message: String) -> Void {
        let nats = self.nats
        let subject = Subjects.sandboxDied(node: config.nodeID)
        let logger = self.logger
        return { id, message in
            var died = Hangar_V1_SandboxDied()
            died.sandboxID = id
            died.message = message
            logger.notice("sandbox died on its own", metadata: ["sandbox.id": "\(id)", "message": "\(message)"])
            do {
                try nats.publish(subject, payload: try died.serializedData())
            } catch {
                logger.warning("could not report a sandbox's death", metadata: ["error": "\(error)"])
            }
        }
    }

    /// `deadline` as unix milliseconds.
    static func unixTime(of deadline: ContinuousClock.Instant) -> Int64 {
        let now = unixMilliseconds()
        let (seconds, attoseconds) = (deadline - ContinuousClock.now).components
        return now + seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Unix milliseconds `deadlineUnixMs` as an instant of this process's clock.
    static func instant(unixMilliseconds deadlineUnixMs: Int64) -> ContinuousClock.Instant {
        let now = unixMilliseconds()
        return ContinuousClock.now + .milliseconds(deadlineUnixMs - now)
    }

    /// Kills a sandbox the scheduler no longer places here (killed, timed out, or unknown to it).
    func handleSandboxKill(_ message: NATSMessage) async {
        guard let kill = try? Hangar_V1_SandboxKill(serializedBytes: message.payload), let sandboxHost else {
            logger.warning("ignored a malformed sandbox kill")
            return
        }
        if let refusal = termFence.admit(kill.schedulerTerm) {
            logger.warning(
                "ignored a sandbox kill",
                metadata: ["sandbox.id": "\(kill.sandboxID)", "reason": "\(refusal)"]
            )
            return
        }
        logger.info(
            "killing stateful sandbox",
            metadata: ["sandbox.id": "\(kill.sandboxID)", "reason": "\(kill.reason)"]
        )
        _ = sandboxDeadlines.withLock { $0.removeValue(forKey: kill.sandboxID) }
        await sandboxHost.kill(kill.sandboxID, reason: kill.reason)
    }

    /// A sandbox's timeout was set again: the node's own deadline moves with it.
    func handleSandboxTimeout(_ message: NATSMessage) {
        guard let timeout = try? Hangar_V1_SandboxSetTimeout(serializedBytes: message.payload) else {
            logger.warning("ignored a malformed sandbox timeout")
            return
        }
        if let refusal = termFence.admit(timeout.schedulerTerm) {
            logger.warning(
                "ignored a sandbox timeout",
                metadata: ["sandbox.id": "\(timeout.sandboxID)", "reason": "\(refusal)"]
            )
            return
        }
        let deadline = ContinuousClock.now + .milliseconds(timeout.timeoutMs) + Self.sandboxTimeoutGrace
        let moved = sandboxDeadlines.withLock { deadlines in
            guard deadlines[timeout.sandboxID] != nil else { return false }
            deadlines[timeout.sandboxID] = deadline
            return true
        }
        if moved { sandboxHost?.noteDeadline(timeout.sandboxID, unixMs: Self.unixTime(of: deadline)) }
    }

    /// Kills the sandboxes whose timeout (plus the grace) passed without the scheduler killing
    /// them, and reports each as died with `timed_out`.
    func killTimedOutSandboxes() async {
        guard let sandboxHost else { return }
        let now = ContinuousClock.now
        let held = Set(sandboxHost.sandboxIDs)
        let due: [String] = sandboxDeadlines.withLock { deadlines in
            // Forget those the host no longer holds (died on their own, or killed).
            for id in deadlines.keys where !held.contains(id) { deadlines.removeValue(forKey: id) }
            let due = deadlines.filter { $0.value <= now }.map(\.key).sorted()
            for id in due { deadlines.removeValue(forKey: id) }
            return due
        }
        for id in due {
            let message = "its timeout passed and node \(config.nodeID) killed it (the scheduler had not)"
            logger.notice("killing a stateful sandbox at its timeout", metadata: ["sandbox.id": "\(id)"])
            await sandboxHost.kill(id, reason: message)
            var died = Hangar_V1_SandboxDied()
            died.sandboxID = id
            died.message = message
            died.timedOut = true
            do {
                try nats.publish(Subjects.sandboxDied(node: config.nodeID), payload: try died.serializedData())
            } catch {
                logger.warning("could not report a sandbox's timeout", metadata: ["error": "\(error)"])
            }
        }
    }
}
