import CNATS

/// An error from the NATS binding: which call failed, the libnats status and its text.
public struct NATSError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure this is, for callers that branch on it.
    public enum Kind: Sendable, Equatable {
        /// A libnats call returned a non-OK status.
        case status(Int32)
        /// No reply arrived within the request's timeout.
        case timeout
        /// Nobody is subscribed to the request's subject.
        case noResponders
        /// The connection is closed.
        case closed
        /// An argument was invalid before reaching libnats.
        case invalidArgument
        /// The server refused a publish or subscription: the connection's user lacks the permission.
        case permissionDenied
        /// The server refused the credentials (unknown user, wrong password).
        case authenticationFailed
    }

    public let kind: Kind
    /// The libnats function or binding operation that failed.
    public let operation: String
    public let message: String

    public init(kind: Kind, operation: String, message: String) {
        self.kind = kind
        self.operation = operation
        self.message = message
    }

    init(status: natsStatus, operation: String) {
        let text = String(cString: natsStatus_GetText(status))
        var detail = ""
        var lastStatus = NATS_OK
        if let last = nats_GetLastError(&lastStatus), lastStatus == status {
            detail = String(cString: last)
        }
        let kind: Kind
        switch status {
        case NATS_TIMEOUT: kind = .timeout
        case NATS_NO_RESPONDERS: kind = .noResponders
        case NATS_CONNECTION_CLOSED: kind = .closed
        case NATS_NOT_PERMITTED: kind = .permissionDenied
        case NATS_CONNECTION_AUTH_FAILED: kind = .authenticationFailed
        default: kind = .status(Int32(status.rawValue))
        }
        self.init(
            kind: kind,
            operation: operation,
            message: detail.isEmpty || detail == text ? text : "\(text): \(detail)"
        )
    }

    public var description: String { "\(operation): \(message)" }

    /// Throws a `NATSError` unless `status` is `NATS_OK`.
    static func check(_ status: natsStatus, _ operation: @autoclosure () -> String) throws(NATSError) {
        if status != NATS_OK {
            throw NATSError(status: status, operation: operation())
        }
    }
}

extension NATSError {
    /// Why a connect failed, as far as the server's answer tells.
    public enum ConnectFailure: Sendable, Equatable {
        /// The server refused the login: unknown user, wrong password or key (`Authorization Violation`).
        case authorization
        /// No server answered at any URL tried (nothing listening, connection refused).
        case nothingListening
        /// Anything else (TLS, a protocol error, a timeout after connecting).
        case other
    }

    /// Why an NKey login failed when the server asked for none: it sent no nonce to sign.
    static let noNonceMessage =
        "authorization violation: the server sent no nonce to sign, so it takes no NKey login "
        + "(authorization is off there, or these credentials are for another server)"

    /// What a failed `NATSConnection.init` means. libnats reports a refused login during the
    /// handshake as a generic error whose text is the server's `-ERR 'Authorization Violation'`,
    /// and later ones as `NATS_CONNECTION_AUTH_FAILED`; both are `.authorization`.
    public var connectFailure: ConnectFailure {
        let text = message.lowercased()
        if kind == .authenticationFailed || text.contains("authorization violation")
            || text.contains("authentication") || message.contains(Self.noNonceMessage)
        {
            return .authorization
        }
        if kind == .status(Int32(NATS_NO_SERVER.rawValue)) { return .nothingListening }
        return .other
    }
}
