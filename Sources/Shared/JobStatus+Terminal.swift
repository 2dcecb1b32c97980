extension Hangar_V1_JobStatus {
    /// Whether a job in this status is finished for good.
    public var isTerminal: Bool {
        switch self {
        case .succeeded, .failed, .timedOut, .oomKilled, .outputLimit, .cancelled, .rejected, .lost, .error, .expired:
            true
        default: false
        }
    }

    /// The name users see: `SUCCEEDED`, `TIMED_OUT`, ...
    public var displayName: String {
        switch self {
        case .unspecified: "UNSPECIFIED"
        case .submitted: "SUBMITTED"
        case .queued: "QUEUED"
        case .placed: "PLACED"
        case .running: "RUNNING"
        case .succeeded: "SUCCEEDED"
        case .failed: "FAILED"
        case .timedOut: "TIMED_OUT"
        case .oomKilled: "OOM_KILLED"
        case .outputLimit: "OUTPUT_LIMIT"
        case .cancelled: "CANCELLED"
        case .rejected: "REJECTED"
        case .lost: "LOST"
        case .error: "ERROR"
        case .expired: "EXPIRED"
        case .UNRECOGNIZED(let value): "UNRECOGNIZED(\(value))"
        }
    }
}

extension Hangar_V1_RejectReason {
    /// The machine-readable reason code: `invalid_request`, `no_capacity`, ...
    public var code: String {
        switch self {
        case .unspecified: "unspecified"
        case .invalidRequest: "invalid_request"
        case .noCapacity: "no_capacity"
        case .limitExceeded: "limit_exceeded"
        case .unsupported: "unsupported"
        case .rateLimited: "rate_limited"
        case .quotaExceeded: "quota_exceeded"
        case .queueFull: "queue_full"
        case .shuttingDown: "shutting_down"
        case .notAllowed: "not_allowed"
        case .UNRECOGNIZED(let value): "unrecognized_\(value)"
        }
    }
}
