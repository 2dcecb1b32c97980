import CNATS
import Foundation

/// Reads the subject out of a server permission violation, e.g.
/// `Permissions Violation for Subscription to "hangar.result.b.>"`.
enum PermissionViolation {
    enum Operation: String {
        case publish = "Publish to "
        case subscribe = "Subscription to "
    }

    /// The quoted subject of a violation of `operation`, or nil if `text` is another error.
    static func subject(in text: String, operation: Operation) -> String? {
        guard let range = text.range(of: "Permissions Violation for " + operation.rawValue, options: .caseInsensitive)
        else { return nil }
        let rest = text[range.upperBound...]
        guard rest.first == "\"", let end = rest.dropFirst().firstIndex(of: "\"") else { return nil }
        return String(rest[rest.index(after: rest.startIndex)..<end])
    }
}

extension NATSConnection {
    /// The permission violations the server reported on this connection (the latest 64), e.g.
    /// `Permissions Violation for Publish to "hangar.submit.b"`.
    public var permissionViolations: [String] { events.violations.texts }

    /// Subscribes and waits until the server has processed the subscription. Throws
    /// `.permissionDenied` if the server refused it (this user may not subscribe to `subject`).
    public func subscribeConfirmed(
        _ subject: String,
        queueGroup: String? = nil,
        bufferLimit: Int = 65_536,
        timeout: Duration = .seconds(5)
    ) async throws -> NATSSubscription {
        let subscription = try subscribe(subject, queueGroup: queueGroup, bufferLimit: bufferLimit)
        do {
            try await confirm(subject: subject, operation: .subscribe, timeout: timeout)
        } catch {
            subscription.unsubscribe()
            throw error
        }
        return subscription
    }

    /// Publishes and waits until the server has processed the message. Throws `.permissionDenied`
    /// if the server refused it (this user may not publish on `subject`).
    public func publishConfirmed(
        _ subject: String,
        payload: Data,
        replyTo: String? = nil,
        headers: [String: String] = [:],
        timeout: Duration = .seconds(5)
    ) async throws {
        try publish(subject, payload: payload, replyTo: replyTo, headers: headers)
        try await confirm(subject: subject, operation: .publish, timeout: timeout)
    }

    /// Flushes (the server answers a PING after everything sent before it, its -ERR included) and
    /// then looks for a violation naming `subject`.
    private func confirm(
        subject: String,
        operation: PermissionViolation.Operation,
        timeout: Duration
    ) async throws {
        try await flush(timeout: timeout)
        // libnats stores the server's -ERR text on the connection before it reads the PONG, so a
        // refusal of this publish or subscription is visible now.
        let text = lastErrorText()
        guard PermissionViolation.subject(in: text, operation: operation) == subject else { return }
        // The last error naming this subject means the server refused it: now, or earlier on this
        // connection, and permissions do not change while it is connected (a server reload that
        // loosens them is the exception). libnats' error callback, which counts each refusal, can
        // arrive much later, so it is not waited for.
        throw NATSError(kind: .permissionDenied, operation: "\(operation)(\(subject))", message: text)
    }

    /// The connection's last error text (libnats keeps the latest `-ERR` from the server).
    private func lastErrorText() -> String {
        var text: UnsafePointer<CChar>?
        guard natsConnection_GetLastError(handle, &text) != NATS_OK, let text else { return "" }
        return String(cString: text)
    }
}
