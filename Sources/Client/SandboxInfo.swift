import Foundation
import HangarShared

/// How to create a sandbox (``Hangar/createSandbox(_:timeout:)``).
public struct SandboxOptions: Sendable {
    /// The runtime: "process" (bubblewrap, the default) or another a node offers.
    public var runtime: String
    /// The template (root filesystem): "host" by default.
    public var template: String
    /// Idle time before the scheduler kills it; nil for the scheduler's default (5 minutes).
    public var timeout: Duration?
    /// The default environment of its commands.
    public var env: [String: String]
    /// Your own labels, to find it again with ``Hangar/listSandboxes(metadata:states:limit:)`` (at most 32).
    public var metadata: [String: String]
    /// The memory limit of the whole sandbox, in bytes; nil for the node's default.
    public var memoryBytes: UInt64?
    /// Node labels the node must have, every one.
    public var nodeLabels: [String: String]
    /// An idempotency key: a repeat of a create with the same key returns the sandbox the first made.
    public var requestID: String?
    /// What it may touch beyond its own image: host paths bound in, network destinations. nil (the
    /// default): the tenant's default for sandboxes (`sandbox_default_grants` in the tenants file;
    /// built in: nothing, no network); a value, even an empty one, is exactly that.
    public var grants: SandboxGrants?

    /// Options with every field given or defaulted.
    public init(
        runtime: String = "process",
        template: String = "host",
        timeout: Duration? = nil,
        env: [String: String] = [:],
        metadata: [String: String] = [:],
        memoryBytes: UInt64? = nil,
        nodeLabels: [String: String] = [:],
        requestID: String? = nil,
        grants: SandboxGrants? = nil
    ) {
        self.grants = grants
        self.runtime = runtime
        self.template = template
        self.timeout = timeout
        self.env = env
        self.metadata = metadata
        self.memoryBytes = memoryBytes
        self.nodeLabels = nodeLabels
        self.requestID = requestID
    }

    /// The create request these options make; throws for a timeout outside 1 ms ... 24 h.
    func request() throws -> Hangar_V1_SandboxCreateRequest {
        var request = Hangar_V1_SandboxCreateRequest()
        request.runtime = runtime
        request.template = template
        request.env = env
        request.metadata = metadata
        request.labels = nodeLabels
        request.requestID = requestID ?? ""
        if let timeout { request.timeoutMs = try milliseconds(timeout, what: "a sandbox's timeout") }
        if let memoryBytes { request.limits.memoryBytes = memoryBytes }
        if let grants {
            request.grants = .with {
                $0.allowRead = grants.allowRead
                $0.allowWrite = grants.allowWrite
                $0.allowNet = grants.allowNet
                $0.denyRead = grants.denyRead
                $0.denyWrite = grants.denyWrite
                $0.denyNet = grants.denyNet
            }
        }
        return request
    }
}

/// What a sandbox may touch beyond its own image, Deno-style, as for a job (`hangar run
/// --allow-read ...`): a deny always wins over an allow. Paths are absolute host paths, recursive,
/// bound at the same path in the sandbox (read-only for `allowRead`, read-write for `allowWrite`);
/// network entries are IPv4 addresses or CIDRs (host names, `*.domain` and ports where the
/// scheduler accepts them). The tenant's policy bounds what may be asked: beyond it the create is
/// refused (`.refused`, code `NOT_ALLOWED`) naming the grant; a runtime that cannot enforce a grant
/// refuses it too (`UNSUPPORTED`), never runs without it.
public struct SandboxGrants: Sendable, Equatable {
    /// Host paths it may read.
    public var allowRead: [String]
    /// Host paths it may read and write.
    public var allowWrite: [String]
    /// Destinations it may reach (its only network: without any, it has none).
    public var allowNet: [String]
    /// Host paths never readable (nor writable), even inside an allowed one.
    public var denyRead: [String]
    /// Host paths never writable, even inside one of `allowWrite`.
    public var denyWrite: [String]
    /// Destinations never reachable, even inside one of `allowNet`.
    public var denyNet: [String]

    /// Grants with every list given or empty.
    public init(
        allowRead: [String] = [],
        allowWrite: [String] = [],
        allowNet: [String] = [],
        denyRead: [String] = [],
        denyWrite: [String] = [],
        denyNet: [String] = []
    ) {
        self.allowRead = allowRead
        self.allowWrite = allowWrite
        self.allowNet = allowNet
        self.denyRead = denyRead
        self.denyWrite = denyWrite
        self.denyNet = denyNet
    }
}

/// What the scheduler knows of one sandbox.
public struct SandboxInfo: Sendable, Equatable {
    /// Where a sandbox is in its life.
    public enum State: Int, Sendable, Hashable, CaseIterable {
        /// Accepted; waiting for a node, or its node is creating it.
        case starting = 1
        /// Its node holds it and it takes commands.
        case running = 2
        /// Gone for good; ``SandboxInfo/endReason`` says why.
        case ended = 3

        var wire: Hangar_V1_SandboxState {
            switch self {
            case .starting: .sandboxStarting
            case .running: .sandboxRunning
            case .ended: .sandboxEnded
            }
        }
    }

    /// Why a sandbox ended.
    public enum EndReason: String, Sendable, Equatable {
        /// Its tenant killed it.
        case killed
        /// Its timeout, or its maximum lifetime, passed.
        case timedOut
        /// Its node died or restarted: its state is gone.
        case lost
        /// It could not be created.
        case failed
        /// It stopped on its own on its node.
        case died
    }

    /// The sandbox's id.
    public var id: String
    /// The tenant it belongs to.
    public var tenant: String
    /// Where it is; nil for a state this client does not know.
    public var state: State?
    /// Why it ended, once ended.
    public var endReason: EndReason?
    /// Why it ended, or why it still waits.
    public var message: String
    /// The node that holds (or held) it; nil while it waits.
    public var nodeID: String?
    /// Its runtime.
    public var runtime: String
    /// Its template.
    public var template: String
    /// The tenant's labels.
    public var metadata: [String: String]
    /// When it was created.
    public var createdAt: Date
    /// When its timeout passes unless set again; nil while not placed, or once ended.
    public var endsAt: Date?
    /// When it ended.
    public var endedAt: Date?
    /// The idempotency key it was created with, if any.
    public var requestID: String?

    init(_ info: Hangar_V1_SandboxInfo) {
        id = info.id
        tenant = info.tenant
        state =
            switch info.state {
            case .sandboxStarting: .starting
            case .sandboxRunning: .running
            case .sandboxEnded: .ended
            default: nil
            }
        endReason =
            switch info.endReason {
            case .sandboxKilled: .killed
            case .sandboxTimedOut: .timedOut
            case .sandboxLost: .lost
            case .sandboxFailed: .failed
            case .sandboxDied: .died
            default: nil
            }
        message = info.message
        nodeID = info.nodeID.isEmpty ? nil : info.nodeID
        runtime = info.runtime
        template = info.template
        metadata = info.metadata
        createdAt = date(info.createdAtMs) ?? Date(timeIntervalSince1970: 0)
        endsAt = date(info.endsAtMs)
        endedAt = date(info.endedAtMs)
        requestID = info.requestID.isEmpty ? nil : info.requestID
    }

    /// "running", "starting", or how it ended ("killed", "timedOut", ...).
    public var stateName: String {
        switch state {
        case .starting: "starting"
        case .running: "running"
        case .ended: endReason.map { "ended (\($0.rawValue))" } ?? "ended"
        case nil: "in an unknown state"
        }
    }
}

/// A Unix time in milliseconds as a date; nil for 0.
private func date(_ milliseconds: Int64) -> Date? {
    milliseconds > 0 ? Date(timeIntervalSince1970: Double(milliseconds) / 1000) : nil
}

/// `duration` in whole milliseconds (rounded up) for a wire field; throws unless it is within 1 ms ... 24 h.
func milliseconds(_ duration: Duration, what: String) throws -> UInt32 {
    let (seconds, attoseconds) = duration.components
    guard duration > .zero, seconds < 86_400 || (seconds == 86_400 && attoseconds == 0) else {
        throw HangarClientError(.invalidArgument, "\(what) must be more than 0 and at most 24 hours, not \(duration)")
    }
    let millis = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
    return UInt32(millis)
}
