import HangarNATS
import HangarShared

/// Why a call of the Hangar client failed: a ``Kind`` to branch on and a message for a person.
public struct HangarClientError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure this is.
    public enum Kind: Sendable, Equatable {
        /// No such sandbox (or code context, or file) of this tenant.
        case notFound
        /// The sandbox (or code context) has ended, or is ending.
        case notRunning
        /// The scheduler or the node refused the request; ``HangarClientError/code`` says why.
        case refused
        /// The code context is running another cell.
        case busy
        /// No answer came within the call's timeout.
        case timedOut
        /// Nobody listens on the subject: no scheduler (control) or node (data plane) is answering.
        case noResponders
        /// NATS refused this connection the subject: the credentials belong to another tenant.
        case permissionDenied
        /// The connection to NATS failed or is closed.
        case connection
        /// An argument is invalid (checked before anything is sent, or by the scheduler or node).
        case invalidArgument
        /// An answer could not be read.
        case badReply
    }

    /// What kind of failure this is.
    public let kind: Kind
    /// What went wrong, in words a person can act on.
    public let message: String
    /// The scheduler's or node's own code when it sent one (e.g. `SANDBOX_BUSY`, `NOT_FOUND`, `NO_CAPACITY`).
    public let code: String?

    /// An error of `kind` saying `message`.
    public init(_ kind: Kind, _ message: String, code: String? = nil) {
        self.kind = kind
        self.message = message
        self.code = code
    }

    /// The message, with the code when there is one.
    public var description: String { code.map { "\(message) [\($0)]" } ?? message }
}

extension HangarClientError {
    /// The error a scheduler or node sent as a `SandboxError`.
    init(_ error: Hangar_V1_SandboxError) {
        let kind: Kind =
            switch error.code {
            case .sandboxNotFound, .sandboxContextNotFound: .notFound
            case .sandboxNotRunning, .sandboxContextEnded: .notRunning
            case .sandboxInvalidRequest: .invalidArgument
            case .sandboxBusy: .busy
            default: .refused
            }
        self.init(kind, error.message, code: Self.codeName(error.code))
    }

    /// The error a sandbox's agent sent (a file that does not exist, no space, ...), about `subject`.
    init(_ error: Hangar_V1_AgentError, about subject: String) {
        let kind: Kind =
            switch error.code {
            case .notFound: .notFound
            case .invalid: .invalidArgument
            default: .refused
            }
        let name =
            switch error.code {
            case .internal: "INTERNAL"
            case .notFound: "NOT_FOUND"
            case .exists: "EXISTS"
            case .notADirectory: "NOT_A_DIRECTORY"
            case .isADirectory: "IS_A_DIRECTORY"
            case .permissionDenied: "PERMISSION_DENIED"
            case .invalid: "INVALID"
            case .noSpace: "NO_SPACE"
            case .tooLarge: "TOO_LARGE"
            case .UNRECOGNIZED(let value): "AGENT_ERROR_\(value)"
            }
        self.init(kind, "\(subject): \(error.message)", code: name)
    }

    /// A NATS failure of a call to `who` ("the scheduler", "node n1") on `subject`, in those words.
    static func nats(_ error: NATSError, who: String, subject: String, timeout: Duration) -> HangarClientError {
        switch error.kind {
        case .noResponders:
            HangarClientError(.noResponders, "no \(who) is answering on \(subject)")
        case .timeout:
            HangarClientError(.timedOut, "\(who) did not answer on \(subject) within \(timeout)")
        case .permissionDenied:
            HangarClientError(
                .permissionDenied,
                "NATS refused \(subject) to this connection (use the credentials of the sandbox's tenant): \(error)"
            )
        case .closed:
            HangarClientError(.connection, "the connection to NATS is closed: \(error)")
        default:
            HangarClientError(.connection, "NATS failed on \(subject): \(error)")
        }
    }

    /// `SANDBOX_NOT_FOUND` and so on, as in sandbox.proto.
    private static func codeName(_ code: Hangar_V1_SandboxErrorCode) -> String {
        switch code {
        case .unspecified: "SANDBOX_ERROR_CODE_UNSPECIFIED"
        case .sandboxNotFound: "SANDBOX_NOT_FOUND"
        case .sandboxInvalidRequest: "SANDBOX_INVALID_REQUEST"
        case .sandboxNotRunning: "SANDBOX_NOT_RUNNING"
        case .sandboxLimitExceeded: "SANDBOX_LIMIT_EXCEEDED"
        case .sandboxUnavailable: "SANDBOX_UNAVAILABLE"
        case .sandboxContextNotFound: "SANDBOX_CONTEXT_NOT_FOUND"
        case .sandboxBusy: "SANDBOX_BUSY"
        case .sandboxContextEnded: "SANDBOX_CONTEXT_ENDED"
        case .UNRECOGNIZED(let value): "SANDBOX_ERROR_\(value)"
        }
    }
}
