import Foundation
import HangarNATS
import HangarShared
import SwiftProtobuf

/// A running sandbox of the tenant: its commands, files and code go straight to the node that
/// holds it (`hangar.sbx.<node>.<tenant>.<sandbox>.<verb>`); its lifecycle (timeout, kill, info) to
/// the scheduler. Get one from ``Hangar/createSandbox(_:timeout:)`` or ``Hangar/sandbox(_:)``.
public struct Sandbox: Sendable {
    /// The client it belongs to.
    public let hangar: Hangar
    /// The sandbox's id.
    public let id: String
    /// The node that holds it.
    public let nodeID: String
    /// What the scheduler said of it when this value was made (see ``info()`` for now).
    public let initialInfo: SandboxInfo

    init(hangar: Hangar, info: SandboxInfo) {
        self.hangar = hangar
        self.id = info.id
        self.nodeID = info.nodeID ?? ""
        self.initialInfo = info
    }

    /// Run commands in the sandbox.
    public var commands: Commands { Commands(sandbox: self) }

    /// Read and write the sandbox's files.
    public var files: Files { Files(sandbox: self) }

    /// What the scheduler knows of it now (its state, when it ends).
    public func info() async throws -> SandboxInfo {
        try await hangar.sandboxInfo(id)
    }

    /// Whether it still runs.
    public func isRunning() async throws -> Bool {
        try await info().state == .running
    }

    /// Sets its timeout again: it ends `timeout` from now (never past its maximum lifetime).
    @discardableResult
    public func setTimeout(_ timeout: Duration) async throws -> SandboxInfo {
        var request = Hangar_V1_SandboxSetTimeoutRequest()
        request.sandboxID = id
        request.timeoutMs = try milliseconds(timeout, what: "a sandbox's timeout")
        return try await hangar.controlInfo("timeout", request)
    }

    /// Kills it: its processes and everything it wrote are gone.
    @discardableResult
    public func kill() async throws -> SandboxInfo {
        var request = Hangar_V1_SandboxKillRequest()
        request.sandboxID = id
        return try await hangar.controlInfo("kill", request)
    }

    /// The error a node sent: a sandbox the node no longer holds (or whose agent is gone) is said
    /// as not running, with how it ended, when the scheduler says it has ended.
    package func nodeError(_ error: Hangar_V1_SandboxError) async -> HangarClientError {
        guard error.code == .sandboxNotFound || error.code == .sandboxNotRunning,
            let info = try? await info(), info.state != .running
        else {
            return HangarClientError(error)
        }
        let why = info.message.isEmpty ? "" : ": \(info.message)"
        return HangarClientError(
            .notRunning,
            "sandbox \(id) is \(info.stateName), not running\(why)",
            code: "SANDBOX_NOT_RUNNING"
        )
    }

    /// The subject of data-plane `verb` for this sandbox.
    package func subject(_ verb: String) -> String {
        Subjects.sandboxData(node: nodeID, tenant: hangar.tenant, sandbox: id, verb: verb)
    }

    /// One file operation, signal or ps: the node's answer, or its error thrown.
    package func operation(
        _ verb: String,
        _ request: Hangar_V1_SandboxOpRequest,
        about: String,
        timeout: Duration? = nil
    ) async throws -> Hangar_V1_SandboxOpReply {
        let reply = try await hangar.request(
            subject(verb),
            request,
            as: Hangar_V1_SandboxOpReply.self,
            who: "node \(nodeID)",
            timeout: timeout ?? hangar.timeouts.operation
        )
        switch reply.outcome {
        case .error(let error): throw await nodeError(error)
        case .agentError(let error): throw HangarClientError(error, about: about)
        case nil: throw HangarClientError(.badReply, "node \(nodeID) sent an empty answer to \(verb)")
        default: return reply
        }
    }

    /// Sends `request` on data-plane `verb` with a reply inbox of this connection's own, and yields
    /// each answer's payload until the consumer stops. It throws `.timedOut` once `within` passes,
    /// and `.notRunning` as soon as the sandbox's lifecycle event says it ended meanwhile.
    package func stream(
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        within: Duration
    ) -> AsyncThrowingStream<
        Data, any Error
    > {
        let connection = hangar.connection
        let subject = subject(verb)
        let lifecycleSubject = Subjects.sandboxEvents(tenant: hangar.tenant, sandbox: id)
        let (node, sandbox) = (nodeID, id)
        let inbox =
            connection.options.inboxPrefix + ".\(verb)." + UUID().uuidString.replacingOccurrences(of: "-", with: "")
        let payload: Data
        do {
            payload = try request.serializedData()
        } catch {
            return AsyncThrowingStream { $0.finish(throwing: error) }
        }
        return AsyncThrowingStream { continuation in
            let task = Task {
                var subscriptions: [NATSSubscription] = []
                defer { for subscription in subscriptions { subscription.unsubscribe() } }
                let answers: NATSSubscription
                let lifecycle: NATSSubscription
                do {
                    answers = try await connection.subscribeConfirmed(inbox)
                    subscriptions.append(answers)
                    lifecycle = try await connection.subscribeConfirmed(lifecycleSubject)
                    subscriptions.append(lifecycle)
                    try await connection.publishConfirmed(subject, payload: payload, replyTo: inbox)
                } catch let error as NATSError {
                    continuation.finish(
                        throwing: HangarClientError.nats(error, who: "node \(node)", subject: subject, timeout: within)
                    )
                    return
                } catch {
                    continuation.finish(throwing: error)
                    return
                }
                // Either ends the answers early: the timeout, or the sandbox's end.
                let timer = Task {
                    try await Task.sleep(for: within)
                    continuation.finish(
                        throwing: HangarClientError(.timedOut, "node \(node) did not finish \(verb) within \(within)")
                    )
                    answers.unsubscribe()
                }
                let watcher = Task {
                    for await message in lifecycle {
                        guard let event = try? Hangar_V1_SandboxEvent(serializedBytes: message.payload),
                            event.kind == .sandboxEventEnded
                        else { continue }
                        let why = event.message.isEmpty ? "" : ": \(event.message)"
                        continuation.finish(
                            throwing: HangarClientError(
                                .notRunning,
                                "sandbox \(sandbox) ended while \(verb) ran\(why)",
                                code: "SANDBOX_NOT_RUNNING"
                            )
                        )
                        answers.unsubscribe()
                        return
                    }
                }
                await withTaskCancellationHandler {
                    for await message in answers {
                        // A real answer is never empty; an empty one is the server's "no responders".
                        guard !message.payload.isEmpty else {
                            continuation.finish(
                                throwing: HangarClientError(.noResponders, "no node is answering on \(subject)")
                            )
                            break
                        }
                        continuation.yield(message.payload)
                    }
                } onCancel: {
                    answers.unsubscribe()
                }
                timer.cancel()
                watcher.cancel()
                lifecycle.unsubscribe()
                continuation.finish(throwing: HangarClientError(.badReply, "node \(node) stopped answering \(verb)"))
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
