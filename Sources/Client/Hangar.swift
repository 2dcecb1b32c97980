import Foundation
import HangarNATS
import HangarShared
import Logging
import SwiftProtobuf

/// A tenant's client of a Hangar cluster: creates, finds and lists its stateful sandboxes.
///
/// ```swift
/// let hangar = try await Hangar.connect(url: "nats://127.0.0.1:4222", credentials: "acme.creds", tenant: "acme")
/// let sandbox = try await hangar.createSandbox(.init(timeout: .seconds(600)))
/// let result = try await sandbox.commands.run(["sh", "-c", "echo hi"])
/// ```
///
/// Control calls go to the scheduler on `hangar.sandbox.<tenant>.<verb>`; a ``Sandbox``'s commands,
/// files and code go straight to the node that holds it. Every call waits at most its timeout
/// (``Timeouts``).
public final class Hangar: Sendable {
    /// How long calls wait for an answer, unless a call is given its own.
    public struct Timeouts: Sendable {
        /// get, list, set the timeout, kill: the scheduler's answer.
        public var control: Duration
        /// create: the scheduler answers once a node runs the sandbox (its creation timeout is 10 s).
        public var create: Duration
        /// A file operation, ps or a signal: the node's answer.
        public var operation: Duration
        /// Creating, restarting, removing or listing code contexts (a kernel may take seconds to start).
        public var contexts: Duration
        /// How much longer than a command's or cell's own timeout its stream may take to end.
        public var streamGrace: Duration

        /// The defaults: control 5 s, create 40 s, operation 30 s, contexts 40 s, stream grace 30 s.
        public init(
            control: Duration = .seconds(5),
            create: Duration = .seconds(40),
            operation: Duration = .seconds(30),
            contexts: Duration = .seconds(40),
            streamGrace: Duration = .seconds(30)
        ) {
            self.control = control
            self.create = create
            self.operation = operation
            self.contexts = contexts
            self.streamGrace = streamGrace
        }
    }

    /// The NATS connection every call uses.
    public let connection: NATSConnection
    /// The tenant this client acts as: the token of every subject it uses.
    public let tenant: String
    /// How long calls wait.
    public let timeouts: Timeouts
    private let ownsConnection: Bool

    /// A client over an existing connection, logged in as `tenant` (its replies under the tenant's
    /// inbox prefix). ``close()`` leaves that connection open.
    public convenience init(connection: NATSConnection, tenant: String, timeouts: Timeouts = Timeouts()) throws {
        try self.init(connection: connection, tenant: tenant, timeouts: timeouts, ownsConnection: false)
    }

    private init(connection: NATSConnection, tenant: String, timeouts: Timeouts, ownsConnection: Bool) throws {
        guard Subjects.isValidToken(tenant) else {
            throw HangarClientError(
                .invalidArgument,
                "a tenant is 1-64 characters of A-Z a-z 0-9 _ -, not '\(tenant)'"
            )
        }
        self.connection = connection
        self.tenant = tenant
        self.timeouts = timeouts
        self.ownsConnection = ownsConnection
    }

    /// Connects to the NATS server(s) at `url` (comma-separated) as `tenant`, with the credentials
    /// file `hangar tenant add` wrote for it (or a NATS `.creds` file); nil for a server without
    /// authorization. ``close()`` closes the connection.
    public static func connect(
        url: String,
        credentials: String? = nil,
        tenant: String,
        name: String = "hangar-client",
        connectTimeout: Duration = .seconds(5),
        timeouts: Timeouts = Timeouts(),
        logger: Logger = Logger(label: "hangar.client")
    ) async throws -> Hangar {
        let servers = url.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !servers.isEmpty else { throw HangarClientError(.invalidArgument, "no NATS server URL given") }
        var options = NATSConnectionOptions(
            servers: servers,
            name: name,
            connectTimeout: connectTimeout,
            logger: logger
        )
        if let credentials { try applyCredentials(credentials, tenant: tenant, to: &options) }
        let connection: NATSConnection
        do {
            connection = try await NATSConnection(options: options)
        } catch let error as NATSError {
            let using = credentials.map { "credentials \($0)" } ?? "no credentials"
            let why =
                switch error.connectFailure {
                case .authorization: "the server refused the login (authorization violation)"
                case .nothingListening: "nothing is listening there"
                case .other: "\(error)"
                }
            throw HangarClientError(.connection, "cannot connect to NATS at \(url) with \(using): \(why)")
        }
        do {
            return try Hangar(connection: connection, tenant: tenant, timeouts: timeouts, ownsConnection: true)
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Closes the connection if ``connect(url:credentials:tenant:name:connectTimeout:timeouts:logger:)``
    /// opened it; sandboxes keep running until killed or timed out.
    public func close() async {
        if ownsConnection { await connection.drain() }
    }

    /// Creates a sandbox and returns it once it runs on a node. Throws ``HangarClientError`` with
    /// kind `.refused` (and the scheduler's reason as its code) if it could not be created.
    public func createSandbox(
        _ options: SandboxOptions = SandboxOptions(),
        timeout: Duration? = nil
    ) async throws
        -> Sandbox
    {
        let request = try options.request()
        let reply = try await control(
            "create",
            request,
            as: Hangar_V1_SandboxCreateReply.self,
            timeout: timeout ?? timeouts.create
        )
        switch reply.outcome {
        case .created(let info):
            guard info.state == .sandboxRunning, !info.nodeID.isEmpty else {
                throw HangarClientError(
                    .refused,
                    "sandbox \(info.id) could not be created: \(info.message)",
                    code: "SANDBOX_FAILED"
                )
            }
            return Sandbox(hangar: self, info: SandboxInfo(info))
        case .rejected(let rejected):
            let field = rejected.field.isEmpty ? "" : " (\(rejected.field))"
            let kind: HangarClientError.Kind = rejected.reason == .invalidRequest ? .invalidArgument : .refused
            throw HangarClientError(
                kind,
                "the scheduler refused the sandbox\(field): \(rejected.message)",
                code: "\(rejected.reason)"
            )
        case nil:
            throw HangarClientError(.badReply, "the scheduler sent an empty answer to create")
        }
    }

    /// The running sandbox `id` of this tenant. Throws kind `.notFound` if there is none, and
    /// `.notRunning` if it has ended (or has not started yet).
    public func sandbox(_ id: String) async throws -> Sandbox {
        let info = try await sandboxInfo(id)
        guard info.state == .running, let node = info.nodeID, !node.isEmpty else {
            let why = info.message.isEmpty ? "" : ": \(info.message)"
            throw HangarClientError(.notRunning, "sandbox \(id) is \(info.stateName), not running\(why)")
        }
        return Sandbox(hangar: self, info: info)
    }

    /// What the scheduler knows of sandbox `id` of this tenant, running or not.
    public func sandboxInfo(_ id: String) async throws -> SandboxInfo {
        var request = Hangar_V1_SandboxGetRequest()
        request.sandboxID = id
        return try await controlInfo("get", request)
    }

    /// This tenant's sandboxes, newest first: the live ones (starting and running) unless `states`
    /// says otherwise; only those whose metadata has every pair of `metadata`; at most `limit` (1-1000).
    public func listSandboxes(
        metadata: [String: String] = [:],
        states: Set<SandboxInfo.State> = [],
        limit: Int = 100
    ) async throws -> [SandboxInfo] {
        guard (1...1000).contains(limit) else {
            throw HangarClientError(.invalidArgument, "the limit of a list must be 1...1000, not \(limit)")
        }
        var request = Hangar_V1_SandboxListRequest()
        request.metadata = metadata
        request.limit = UInt32(limit)
        request.states = states.sorted { $0.rawValue < $1.rawValue }.map(\.wire)
        let reply = try await control("list", request, as: Hangar_V1_SandboxListReply.self)
        guard reply.error.isEmpty else { throw HangarClientError(.refused, reply.error) }
        return reply.sandboxes.map(SandboxInfo.init)
    }

    /// Sends get, timeout or kill and returns the sandbox as the scheduler answered.
    package func controlInfo(_ verb: String, _ request: some SwiftProtobuf.Message) async throws -> SandboxInfo {
        let reply = try await control(verb, request, as: Hangar_V1_SandboxReply.self)
        switch reply.outcome {
        case .info(let info): return SandboxInfo(info)
        case .error(let error): throw HangarClientError(error)
        case nil: throw HangarClientError(.badReply, "the scheduler sent an empty answer to \(verb)")
        }
    }

    /// Sends a control request on `hangar.sandbox.<tenant>.<verb>` and decodes the scheduler's answer.
    package func control<Reply: SwiftProtobuf.Message>(
        _ verb: String,
        _ request: some SwiftProtobuf.Message,
        as: Reply.Type,
        timeout: Duration? = nil
    ) async throws -> Reply {
        let subject = Subjects.sandbox(tenant: tenant, verb: verb)
        return try await self.request(
            subject,
            request,
            as: Reply.self,
            who: "scheduler",
            timeout: timeout ?? timeouts.control
        )
    }

    /// One request, one answer of type `Reply`; NATS failures said as ``HangarClientError``s about `who`.
    package func request<Reply: SwiftProtobuf.Message>(
        _ subject: String,
        _ request: some SwiftProtobuf.Message,
        as: Reply.Type,
        who: String,
        timeout: Duration
    ) async throws -> Reply {
        let answer: NATSMessage
        do {
            answer = try await connection.request(subject, payload: try request.serializedData(), timeout: timeout)
        } catch let error as NATSError {
            throw HangarClientError.nats(error, who: who, subject: subject, timeout: timeout)
        }
        do {
            return try Reply(serializedBytes: answer.payload)
        } catch {
            throw HangarClientError(.badReply, "the \(who)'s answer on \(subject) is not a \(Reply.protoMessageName)")
        }
    }
}

/// Sets the login of `file`: a hangar credentials file (JSON, from `hangar tenant add`) or a NATS
/// `.creds` file (JWT and NKey seed). A hangar file of another tenant is refused here.
private func applyCredentials(_ file: String, tenant: String, to options: inout NATSConnectionOptions) throws {
    let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: file)).read(upToCount: 64)) ?? nil
    if let head, String(decoding: head, as: UTF8.self).contains("-----BEGIN NATS USER JWT") {
        options.credentialsFile = file
        return
    }
    let credentials: NATSCredentials
    do {
        credentials = try NATSCredentials.load(path: file)
    } catch {
        throw HangarClientError(.invalidArgument, "\(error)")
    }
    if credentials.role == Principal.tenant(tenant).role, credentials.name != tenant {
        throw HangarClientError(
            .invalidArgument,
            "\(file) holds the credentials of tenant '\(credentials.name)', not '\(tenant)'"
        )
    }
    options.logIn(with: credentials)
}
