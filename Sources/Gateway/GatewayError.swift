import Foundation
import HTTPTypes
import HangarClient
import Hummingbird

/// A failure the gateway answers with: an HTTP status for REST calls and the matching Connect code
/// for Connect-RPC calls, and a message for a person.
public struct GatewayError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure, which fixes both the HTTP status and the Connect code.
    public enum Kind: Sendable {
        case badRequest, unauthorized, forbidden, notFound, conflict, payloadTooLarge, tooManyRequests
        case notImplemented, badGateway, unavailable, timeout, `internal`

        /// The HTTP status of a REST answer.
        public var status: HTTPResponse.Status {
            switch self {
            case .badRequest: .badRequest
            case .unauthorized: .unauthorized
            case .forbidden: .forbidden
            case .notFound: .notFound
            case .conflict: .conflict
            case .payloadTooLarge: .contentTooLarge
            case .tooManyRequests: .tooManyRequests
            case .notImplemented: .notImplemented
            case .badGateway: .badGateway
            case .unavailable: .serviceUnavailable
            case .timeout: .gatewayTimeout
            case .internal: .internalServerError
            }
        }

        /// The Connect protocol's error code (connectrpc.com/docs/protocol#error-codes).
        public var connectCode: String {
            switch self {
            case .badRequest, .payloadTooLarge: "invalid_argument"
            case .unauthorized: "unauthenticated"
            case .forbidden: "permission_denied"
            case .notFound: "not_found"
            case .conflict: "already_exists"
            case .tooManyRequests: "resource_exhausted"
            case .notImplemented: "unimplemented"
            case .badGateway, .unavailable: "unavailable"
            case .timeout: "deadline_exceeded"
            case .internal: "internal"
            }
        }
    }

    /// What kind of failure.
    public let kind: Kind
    /// What went wrong.
    public let message: String

    /// A failure of `kind` saying `message`.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    /// The gateway's answer to a failed call of the Hangar client: a sandbox that has ended is 502
    /// "was not found" (as E2B's proxy), other things not found stay not found, a refusal for
    /// capacity or quota becomes 429, a timeout 504, anything NATS-side 502.
    public init(_ error: HangarClientError) {
        // A node's answer that the sandbox has ended or is not there: what E2B's proxy says of a
        // killed or timed-out sandbox, 502 "... was not found" (SandboxNotRunningException in the SDKs).
        if error.code == "SANDBOX_NOT_RUNNING" || error.code == "SANDBOX_NOT_FOUND" {
            self.init(.badGateway, "The sandbox was not found: \(error.message)")
            return
        }
        switch error.kind {
        case .notFound: self.init(.notFound, error.message)
        case .notRunning: self.init(.notFound, error.message)
        case .invalidArgument: self.init(.badRequest, error.message)
        case .busy: self.init(.conflict, error.message)
        case .timedOut: self.init(.timeout, error.message)
        case .refused:
            switch error.code {
            case "NO_CAPACITY", "QUOTA_EXCEEDED", "RATE_LIMITED": self.init(.tooManyRequests, error.message)
            case "INVALID_REQUEST": self.init(.badRequest, error.message)
            case "NOT_FOUND", "SANDBOX_NOT_FOUND", "SANDBOX_CONTEXT_NOT_FOUND": self.init(.notFound, error.message)
            default: self.init(.badRequest, error.message)
            }
        case .noResponders, .connection, .badReply, .permissionDenied: self.init(.badGateway, error.message)
        }
    }

    /// Any error as the gateway answers it (anything unknown is a 500 that says what it was).
    public static func from(_ error: any Error) -> GatewayError {
        switch error {
        case let error as GatewayError: error
        case let error as HangarClientError: GatewayError(error)
        default: GatewayError(.internal, "\(error)")
        }
    }

    /// E2B's REST error body, `{"code": STATUS, "message": "..."}`, with this error's status.
    public var restResponse: Response {
        let body: [String: Any] = ["code": Int(kind.status.code), "message": message]
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: kind.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
