import CNATS
import Dispatch
import Foundation
import Logging
import Synchronization

/// How to reach and authenticate to NATS.
public struct NATSConnectionOptions: Sendable {
    /// Server URLs, tried in order (e.g. `nats://127.0.0.1:4222`).
    public var servers: [String]
    /// Shown by the server (`/connz`) so operators can tell connections apart.
    public var name: String
    public var user: String?
    public var password: String?
    public var token: String?
    /// A user NKey (`U…`, in the server's configuration) to log in with instead of a password;
    /// needs ``nkeySeed``.
    public var nkey: String?
    /// The seed (`SU…`) of ``nkey``, which signs the server's nonce at every (re)connect. It stays
    /// in this process; the server only knows the public key.
    public var nkeySeed: String?
    /// A `.creds` file (JWT + NKey seed).
    public var credentialsFile: String?
    /// A PEM file of the CA certificates that may sign the servers' TLS certificates. Given (or
    /// with `tls://` URLs) the connection is TLS and the server's certificate is verified against
    /// them (and its host name against the URL's).
    public var tlsCAFile: String?
    /// Flush every publish at once instead of from libnats' flusher thread: lower latency for
    /// request/reply, less batching under load.
    public var sendAsap: Bool
    /// Keep trying the first connect in the background instead of failing at once.
    public var retryOnFailedConnect: Bool
    /// How long one connection attempt may take.
    public var connectTimeout: Duration
    /// Upper bound of the reconnect backoff; the first retry comes after 50 ms.
    public var maxReconnectDelay: Duration
    /// How often the client pings its server; after ``maxPingsOut`` pings without an answer the
    /// connection counts as dead and the client reconnects (to another server of a cluster). A
    /// server that vanishes without closing its connections (its host lost power or was cut off)
    /// is noticed within `pingInterval × (maxPingsOut + 1)`: 6 s by default, not libnats' 6 min.
    public var pingInterval: Duration
    /// Pings without an answer before the connection counts as dead (see ``pingInterval``).
    public var maxPingsOut: Int
    /// The first tokens of this connection's reply subjects (`<prefix>.<nuid>.<n>`), for libnats'
    /// own inboxes too. Under NATS authorization a user may subscribe only to its own prefix, so
    /// nobody else can read its replies.
    public var inboxPrefix: String
    public var logger: Logger

    public init(
        servers: [String] = ["nats://127.0.0.1:4222"],
        name: String = "hangar",
        user: String? = nil,
        password: String? = nil,
        token: String? = nil,
        credentialsFile: String? = nil,
        sendAsap: Bool = true,
        retryOnFailedConnect: Bool = false,
        connectTimeout: Duration = .seconds(2),
        maxReconnectDelay: Duration = .seconds(2),
        pingInterval: Duration = .seconds(2),
        maxPingsOut: Int = 2,
        inboxPrefix: String = "_INBOX",
        logger: Logger = Logger(label: "hangar.nats")
    ) {
        self.servers = servers
        self.name = name
        self.user = user
        self.password = password
        self.token = token
        self.credentialsFile = credentialsFile
        self.sendAsap = sendAsap
        self.retryOnFailedConnect = retryOnFailedConnect
        self.connectTimeout = connectTimeout
        self.maxReconnectDelay = maxReconnectDelay
        self.pingInterval = pingInterval
        self.maxPingsOut = maxPingsOut
        self.inboxPrefix = inboxPrefix
        self.logger = logger
    }
}

/// A connection to NATS over libnats. Reconnects forever with backoff; every reconnect and
/// disconnect is logged. Close it with ``drain(timeout:)`` or ``close()``.
public final class NATSConnection: @unchecked Sendable {
    // @unchecked Sendable: `handle` is a libnats connection, whose API is documented thread-safe;
    // the Swift-side state lives in `ConnectionEvents` and `ReplyRouter`, both Sendable.
    let handle: OpaquePointer
    let events: ConnectionEvents
    private let router: ReplyRouter
    private let replySubscription: NATSSubscriptionHandle
    public let options: NATSConnectionOptions

    /// Connects, or throws a `NATSError` that names the servers tried.
    public init(options: NATSConnectionOptions) async throws {
        self.options = options
        NATSLibrary.open()  // before any other libnats call
        let router = ReplyRouter(prefix: "\(options.inboxPrefix).\(makeNUID()).")
        let events = ConnectionEvents(
            logger: options.logger,
            maxDelay: options.maxReconnectDelay,
            router: router,
            nkeySeed: options.nkeySeed
        )
        let opened = try await runBlocking { () throws(NATSError) in
            let (handle, subscription) = try Self.open(options: options, events: events, router: router)
            return (UncheckedPointer(handle), subscription)
        }
        let (handle, replySubscription) = opened
        self.handle = handle.pointer
        self.events = events
        self.router = router
        self.replySubscription = replySubscription
    }

    private static func open(
        options: NATSConnectionOptions,
        events: ConnectionEvents,
        router: ReplyRouter
    ) throws(NATSError) -> (OpaquePointer, NATSSubscriptionHandle) {
        var opts: OpaquePointer?
        try NATSError.check(natsOptions_Create(&opts), "natsOptions_Create")
        guard let opts else { throw NATSError(kind: .invalidArgument, operation: "natsOptions_Create", message: "nil") }
        defer { natsOptions_Destroy(opts) }
        guard !options.servers.isEmpty else {
            throw NATSError(kind: .invalidArgument, operation: "connect", message: "no server URL given")
        }
        var cServers = options.servers.map { strdup($0) }
        defer { for server in cServers { free(server) } }
        let serversStatus = cServers.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                natsOptions_SetServers(opts, $0, Int32(buffer.count))
            }
        }
        try NATSError.check(serversStatus, "natsOptions_SetServers(\(options.servers.joined(separator: ",")))")
        try NATSError.check(natsOptions_SetName(opts, options.name), "natsOptions_SetName")
        if let user = options.user {
            try NATSError.check(natsOptions_SetUserInfo(opts, user, options.password ?? ""), "natsOptions_SetUserInfo")
        }
        if let token = options.token {
            try NATSError.check(natsOptions_SetToken(opts, token), "natsOptions_SetToken")
        }
        if let creds = options.credentialsFile {
            try NATSError.check(
                natsOptions_SetUserCredentialsFromFiles(opts, creds, nil),
                "natsOptions_SetUserCredentialsFromFiles(\(creds))"
            )
        }
        if options.tlsCAFile != nil || options.servers.contains(where: { $0.lowercased().hasPrefix("tls://") }) {
            try NATSError.check(natsOptions_SetSecure(opts, true), "natsOptions_SetSecure")
        }
        if let ca = options.tlsCAFile {
            try NATSError.check(
                natsOptions_LoadCATrustedCertificates(opts, ca),
                "natsOptions_LoadCATrustedCertificates(\(ca))"
            )
        }
        if options.inboxPrefix != "_INBOX" {
            try NATSError.check(
                natsOptions_SetCustomInboxPrefix(opts, options.inboxPrefix),
                "natsOptions_SetCustomInboxPrefix(\(options.inboxPrefix))"
            )
        }
        try NATSError.check(natsOptions_SetSendAsap(opts, options.sendAsap), "natsOptions_SetSendAsap")
        // Subscriptions share libnats' pool of delivery threads (each stays on one thread, so its
        // order holds) instead of a thread each: fewer threads to wake on a loaded machine.
        try NATSError.check(
            natsOptions_UseGlobalMessageDelivery(opts, true),
            "natsOptions_UseGlobalMessageDelivery"
        )
        try NATSError.check(natsOptions_SetTimeout(opts, options.connectTimeout.milliseconds), "natsOptions_SetTimeout")
        try NATSError.check(natsOptions_SetMaxReconnect(opts, -1), "natsOptions_SetMaxReconnect")
        try NATSError.check(
            natsOptions_SetPingInterval(opts, max(1, options.pingInterval.milliseconds)),
            "natsOptions_SetPingInterval"
        )
        try NATSError.check(natsOptions_SetMaxPingsOut(opts, Int32(max(1, options.maxPingsOut))), "SetMaxPingsOut")
        try NATSError.check(natsOptions_SetReconnectBufSize(opts, 32 * 1024 * 1024), "natsOptions_SetReconnectBufSize")

        // The events object is retained for libnats; the closed callback releases it. If the
        // connection never comes to exist, we release it below instead.
        let context = Unmanaged.passRetained(events).toOpaque()
        try NATSError.check(
            natsOptions_SetCustomReconnectDelay(opts, connectionReconnectDelay, context),
            "natsOptions_SetCustomReconnectDelay"
        )
        try NATSError.check(natsOptions_SetDisconnectedCB(opts, connectionDisconnected, context), "SetDisconnectedCB")
        try NATSError.check(natsOptions_SetReconnectedCB(opts, connectionReconnected, context), "SetReconnectedCB")
        try NATSError.check(natsOptions_SetClosedCB(opts, connectionClosed, context), "SetClosedCB")
        try NATSError.check(natsOptions_SetErrorHandler(opts, connectionError, context), "SetErrorHandler")
        if let nkey = options.nkey {
            guard options.nkeySeed != nil else {
                Unmanaged<ConnectionEvents>.fromOpaque(context).release()
                throw NATSError(kind: .invalidArgument, operation: "connect", message: "an NKey login needs its seed")
            }
            try NATSError.check(natsOptions_SetNKey(opts, nkey, connectionSignNonce, context), "natsOptions_SetNKey")
        }
        if options.retryOnFailedConnect {
            try NATSError.check(
                natsOptions_SetRetryOnFailedConnect(opts, true, nil, nil),
                "natsOptions_SetRetryOnFailedConnect"
            )
        }
        var connection: OpaquePointer?
        var status = natsConnection_Connect(&connection, opts)
        // A refused signature (about one nonce in 256, see `NKeySignature`) is tried again on a new
        // connection: the server sends a new nonce, which signs differently.
        var attempts = 1
        while status != NATS_OK, status != NATS_NOT_YET_CONNECTED, attempts < NKeySignature.maxAttempts,
            events.unsendableSignatures.load(ordering: .relaxed) >= attempts
        {
            attempts += 1
            connection = nil
            status = natsConnection_Connect(&connection, opts)
        }
        guard status == NATS_OK || status == NATS_NOT_YET_CONNECTED, let connection else {
            Unmanaged<ConnectionEvents>.fromOpaque(context).release()
            // The client's name says which login was refused when one process opens several.
            throw NATSError(
                status: status,
                operation: "connect(\(options.servers.joined(separator: ",")), client \(options.name))"
            )
        }
        events.logger.debug("connected", metadata: ["nats.name": "\(options.name)"])
        events.reaper.attach(connection)

        do {
            let replySubscription = try NATSSubscriptionHandle.raw(
                connection: connection,
                subject: router.prefix + "*",
                context: router,
                reaper: events.reaper
            )
            return (connection, replySubscription)
        } catch {
            natsConnection_Destroy(connection)
            throw error
        }
    }

    deinit {
        // The connection first: `natsConnection_Destroy` → `_close` joins the read loop (libnats
        // 3.4.1 conn.c:2561) unless another close is already under way, so the reply subscription
        // is not freed under it (a use-after-free in libnats 3.4.1, see `SubscriptionReaper`). The
        // reaper holds it anyway until the closed callback, which comes after that join. The
        // subscription keeps the `natsConnection` memory alive until it is freed.
        natsConnection_Destroy(handle)
        replySubscription.release(reaper: events.reaper)
    }

    /// Whether the connection is currently connected (not reconnecting or closed).
    public var isConnected: Bool { natsConnection_Status(handle) == NATS_CONN_STATUS_CONNECTED }

    /// The largest message payload the server accepts (its `max_payload`, from the INFO it sent at
    /// connect); 0 while disconnected.
    public var maxPayload: Int { Int(natsConnection_GetMaxPayload(handle)) }

    /// How many times the connection came back after losing its server.
    public var reconnectCount: Int { events.reconnects.load(ordering: .relaxed) }

    /// Publishes a message. Returns once libnats has it buffered (or sent, with `sendAsap`).
    public func publish(
        _ subject: String,
        payload: Data,
        replyTo: String? = nil,
        headers: [String: String] = [:]
    ) throws(NATSError) {
        if headers.isEmpty {
            let status = payload.withUnsafeBytes { raw -> natsStatus in
                if let replyTo {
                    return natsConnection_PublishRequest(handle, subject, replyTo, raw.baseAddress, Int32(raw.count))
                }
                return natsConnection_Publish(handle, subject, raw.baseAddress, Int32(raw.count))
            }
            try NATSError.check(status, "publish(\(subject))")
            return
        }
        let msg = try makeNATSMessage(subject: subject, replyTo: replyTo, payload: payload, headers: headers)
        defer { natsMsg_Destroy(msg) }
        try NATSError.check(natsConnection_PublishMsg(handle, msg), "publish(\(subject))")
    }

    /// Answers a request message on its reply subject. Does nothing if it expects no reply.
    public func reply(to message: NATSMessage, payload: Data, headers: [String: String] = [:]) throws(NATSError) {
        guard let replyTo = message.replyTo else { return }
        try publish(replyTo, payload: payload, headers: headers)
    }

    /// Subscribes to a subject (wildcards allowed); messages arrive through the returned sequence.
    /// With a `queueGroup`, each message goes to one member of the group.
    public func subscribe(
        _ subject: String,
        queueGroup: String? = nil,
        bufferLimit: Int = 65_536
    ) throws(NATSError) -> NATSSubscription {
        try NATSSubscription(
            connection: handle,
            subject: subject,
            queueGroup: queueGroup,
            bufferLimit: bufferLimit,
            logger: events.logger,
            reaper: events.reaper
        )
    }

    /// Sends a request and waits for the first reply. Throws `.timeout` when none comes in time,
    /// `.noResponders` when nobody listens on `subject` and `.permissionDenied` when the server
    /// refuses this user a publish on `subject`. Never blocks a thread.
    public func request(
        _ subject: String,
        payload: Data,
        headers: [String: String] = [:],
        timeout: Duration
    ) async throws -> NATSMessage {
        let id = router.nextID()
        let inbox = router.prefix + String(id)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<NATSMessage, any Error>) in
                router.register(id, subject: subject, timeout: timeout, continuation)
                do {
                    try publish(subject, payload: payload, replyTo: inbox, headers: headers)
                } catch {
                    router.complete(id, with: .failure(error))
                }
            }
        } onCancel: {
            router.complete(id, with: .failure(CancellationError()))
        }
    }

    /// Waits until the server has processed everything published so far.
    public func flush(timeout: Duration = .seconds(5)) async throws {
        let handle = UncheckedPointer(handle)
        try await runBlocking { () throws(NATSError) in
            try NATSError.check(natsConnection_FlushTimeout(handle.pointer, timeout.milliseconds), "flush")
        }
    }

    /// Stops all subscriptions taking new messages, delivers those pending, flushes publishes, then
    /// closes. Returns when the connection is closed.
    public func drain(timeout: Duration = .seconds(5)) async {
        let status = natsConnection_DrainTimeout(handle, timeout.milliseconds)
        if status != NATS_OK {
            events.logger.debug("drain: \(NATSError(status: status, operation: "drain")); closing")
            await close()
            return
        }
        await events.waitUntilClosed()
    }

    /// Closes the connection at once: buffered publishes that were not flushed are lost.
    public func close() async {
        let handle = UncheckedPointer(handle)
        try? await runBlocking { () throws(NATSError) in natsConnection_Close(handle.pointer) }
        await events.waitUntilClosed()
    }

    /// The JetStream context of this connection.
    public func jetStream(timeout: Duration = .seconds(5)) throws(NATSError) -> JetStream {
        try JetStream(connection: handle, owner: self, timeout: timeout)
    }
}

/// A libnats pointer carried into a blocking closure; libnats objects are thread-safe.
struct UncheckedPointer: @unchecked Sendable {
    // @unchecked Sendable: only used for libnats handles, which lock internally.
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

/// Runs a blocking libnats call (connect, flush, close, JetStream management) on one of
/// ``blockingPool``'s threads, so that Swift's cooperative pool stays free and the number of
/// threads stuck in libnats is bounded.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () throws(NATSError) -> T) async throws(NATSError) -> T {
    try await blockingPool.run(body)
}

/// The threads for ``runBlocking(_:)``. Four: the calls that go here are short (each waits at most
/// its timeout: connect, flush and JetStream management; the long JetStream pulls have threads of
/// their own, see `JetStream+FetchAvailable.swift`), and the busiest process, `hangar dev`, opens
/// about six connections at start and flushes a few of them at once. Four threads let that proceed
/// side by side on the 2-4 cores a node or scheduler usually has, while a server that stops
/// answering can hold at most four threads (the unbounded concurrent queue this replaces started a
/// new thread for every blocked call). More calls than that wait in the queue, in order.
let blockingPool = BlockingThreadPool(size: 4, name: "hangar.nats.blocking")

func makeNUID() -> String {
    NATSLibrary.open()
    var inbox: UnsafeMutablePointer<natsInbox>?
    guard natsInbox_Create(&inbox) == NATS_OK, let inbox else { return UUID().uuidString }
    defer { natsInbox_Destroy(inbox) }
    // "_INBOX.<nuid>": keep the unique part.
    return String(String(cString: inbox).dropFirst("_INBOX.".count))
}

extension Duration {
    /// Whole milliseconds, for libnats' int64 timeouts.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

/// Connection-level callbacks: logging, reconnect backoff, the closed signal.
final class ConnectionEvents: Sendable {
    let logger: Logger
    let maxDelayMilliseconds: Int64
    let reconnects = Atomic<Int>(0)
    let router: ReplyRouter
    /// Frees this connection's subscriptions once its read loop cannot use them any more.
    let reaper = SubscriptionReaper()
    private let closedState = Mutex<(closed: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
    /// The server's permission violations so far (the latest 64) and how many there were.
    private let violationLog = Mutex<(texts: [String], count: Int)>(([], 0))

    /// The NKey seed that signs the server's nonce, if the connection logs in with an NKey.
    let nkeySeed: String?
    /// Nonce signatures refused because libnats would have sent them as none (see `NKeySignature`).
    let unsendableSignatures = Atomic<Int>(0)

    init(logger: Logger, maxDelay: Duration, router: ReplyRouter, nkeySeed: String? = nil) {
        self.nkeySeed = nkeySeed
        self.logger = logger
        self.maxDelayMilliseconds = max(50, maxDelay.milliseconds)
        self.router = router
    }

    /// Records a permission violation (`Permissions Violation for Publish to "x"`) and fails the
    /// requests that were sent on a refused publish subject.
    func recordViolation(_ text: String) {
        violationLog.withLock { log in
            log.texts.append(text)
            if log.texts.count > 64 { log.texts.removeFirst(log.texts.count - 64) }
            log.count += 1
        }
        if let subject = PermissionViolation.subject(in: text, operation: .publish) {
            router.fail(
                subject: subject,
                with: NATSError(kind: .permissionDenied, operation: "request(\(subject))", message: text)
            )
        }
    }

    /// How many violations were recorded, and the latest ones.
    var violations: (texts: [String], count: Int) { violationLog.withLock { $0 } }

    func markClosed() {
        let waiters = closedState.withLock { state in
            state.closed = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func waitUntilClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let alreadyClosed = closedState.withLock { state in
                if !state.closed { state.waiters.append(continuation) }
                return state.closed
            }
            if alreadyClosed { continuation.resume() }
        }
    }

    func reconnectDelay(attempt: Int) -> Int64 {
        let base = min(maxDelayMilliseconds, 50 << min(attempt, 10))
        return base / 2 + Int64.random(in: 0...(base / 2))
    }
}

private func connectedURL(_ connection: OpaquePointer?) -> String {
    guard let connection else { return "?" }
    var buffer = [CChar](repeating: 0, count: 256)
    guard natsConnection_GetConnectedUrl(connection, &buffer, buffer.count) == NATS_OK else { return "?" }
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

private let connectionDisconnected: natsConnectionHandler = { connection, closure in
    guard let closure else { return }
    let events = Unmanaged<ConnectionEvents>.fromOpaque(closure).takeUnretainedValue()
    if let connection, natsConnection_IsClosed(connection) || natsConnection_IsDraining(connection) {
        events.logger.debug("NATS disconnected on close")
    } else {
        events.logger.warning("NATS disconnected; reconnecting")
    }
}

private let connectionReconnected: natsConnectionHandler = { connection, closure in
    guard let closure else { return }
    let events = Unmanaged<ConnectionEvents>.fromOpaque(closure).takeUnretainedValue()
    let count = events.reconnects.add(1, ordering: .relaxed).newValue
    events.logger.notice(
        "NATS reconnected",
        metadata: ["nats.url": "\(connectedURL(connection))", "nats.reconnects": "\(count)"]
    )
}

/// Signs the server's nonce with the connection's NKey seed (libnats frees the signature). A
/// signature libnats would send as none is refused here, so that no doomed login reaches the
/// server: see ``NKeySignature``.
private let connectionSignNonce: natsSignatureHandler = { errorText, signature, signatureLength, nonce, closure in
    guard let closure, let signature, let signatureLength else { return NATS_ERR }
    guard let nonce else {
        // A server without NKey users (authorization off, or not the server of these credentials)
        // sends no nonce; without this text the connect fails as a bare "Error".
        errorText?.pointee = strdup(NATSError.noNonceMessage)
        return NATS_ERR
    }
    let events = Unmanaged<ConnectionEvents>.fromOpaque(closure).takeUnretainedValue()
    guard let seed = events.nkeySeed else { return NATS_ERR }
    let status = seed.withCString { nats_Sign($0, nonce, signature, signatureLength) }
    guard status == NATS_OK, let bytes = signature.pointee else { return status }
    guard NKeySignature.isSendable(UnsafeBufferPointer(start: bytes, count: Int(signatureLength.pointee))) else {
        free(bytes)
        signature.pointee = nil
        signatureLength.pointee = 0
        events.unsendableSignatures.add(1, ordering: .relaxed)
        errorText?.pointee = strdup(NKeySignature.unsendableMessage)
        return NATS_ERR
    }
    return NATS_OK
}

private let connectionClosed: natsConnectionHandler = { _, closure in
    guard let closure else { return }
    let events = Unmanaged<ConnectionEvents>.fromOpaque(closure).takeRetainedValue()
    events.logger.debug("NATS connection closed")
    // Posted after `_close` joined the read loop (libnats 3.4.1 conn.c:2561-2567).
    events.reaper.connectionClosed()
    events.markClosed()
}

private let connectionError: natsErrHandler = { _, subscription, status, closure in
    guard let closure else { return }
    let events = Unmanaged<ConnectionEvents>.fromOpaque(closure).takeUnretainedValue()
    // libnats 3.4.1 queues this callback with the subscription pointer but no reference to it
    // (asynccb.c:47-55; fixed in v3.7.0, PR #659): it may be freed by now, so it is only looked up
    // by address, never dereferenced (`natsSubscription_GetSubject` would lock its mutex).
    var subject = ""
    if let subscription { subject = events.reaper.subject(of: subscription) ?? "" }
    if status == NATS_SLOW_CONSUMER {
        events.logger.warning("slow consumer: libnats dropped messages", metadata: ["nats.subject": "\(subject)"])
    } else if status == NATS_NOT_PERMITTED {
        // libnats sets the server's text as this thread's last error before calling us.
        var last = NATS_OK
        let text = nats_GetLastError(&last).map { String(cString: $0) } ?? "permissions violation"
        events.logger.error("NATS permission violation: \(text)")
        events.recordViolation(text)
    } else {
        events.logger.error(
            "NATS error: \(String(cString: natsStatus_GetText(status)))",
            metadata: ["nats.subject": "\(subject)"]
        )
    }
}

private let connectionReconnectDelay: natsCustomReconnectDelayHandler = { _, attempts, closure in
    guard let closure else { return 1000 }
    let events = Unmanaged<ConnectionEvents>.fromOpaque(closure).takeUnretainedValue()
    return events.reconnectDelay(attempt: Int(attempts))
}
