import Dispatch
import Foundation
import Glibc
import HangarShared
import Synchronization

/// The DNS resolver of one allowlist job whose grants name hosts (``Egress/resolves``): it listens
/// on UDP port 53 of the job's gateway address (the host end of its veth), answers only queries
/// from the job's own address, and:
/// - a name the grants do not cover, or one they deny, gets NXDOMAIN without leaving the node;
/// - an `A` query for a granted name goes to the node's upstream resolver; the addresses of the
///   answer are added to the nftables sets of the job's namespace for their TTL (at least
///   ``minimumTTL``, at most ``maximumTTL``) *before* the answer is passed on, so the first
///   connection works; when the TTL passes they are removed, so an allowed name that moves is
///   followed and its old address is closed again;
/// - an answer that points a granted name at an internal address (``Egress/internalNetworks``: DNS
///   rebinding) or a denied one is refused (REFUSED), unless an allowed network covers it;
/// - any other query type gets an empty answer (no IPv6 in job networks; no other records), and a
///   malformed query gets nothing.
/// TCP DNS is not offered: a truncated answer is passed on as it is.
final class EgressResolver: Sendable {
    /// What the sets of the job's namespace hold, and when each entry goes.
    let sets: EgressSets
    private let egress: Egress
    private let socket: Int32
    private let sandboxAddress: UInt32
    private let upstream: sockaddr_in
    /// Dispatch sources are thread-safe; this one is only created, resumed and cancelled here.
    private let source: UncheckedSendableBox<DispatchSourceRead>
    private let sweeper: Task<Void, Never>
    private let inFlight = Mutex(0)
    /// Signalled once the socket is closed (the source's cancel handler), so that ``stop()`` can
    /// return with the address free: a node re-adopting the network binds it again at once.
    private let closed = DispatchSemaphore(value: 0)
    private let stopped = Atomic(false)

    /// Entries live at least this long, so that a TTL of 0 still lets the connection be made.
    static let minimumTTL: UInt32 = 2
    /// And at most this long, however long the upstream's TTL.
    static let maximumTTL: UInt32 = 3600
    /// How long the upstream has to answer a query, per try (two tries).
    static let upstreamTimeout = Duration.seconds(2)
    /// Queries answered at once per job; more are dropped (the job's resolver library retries).
    static let maxInFlight = 64

    /// Starts resolving for the job whose namespace is `namespace`: listens on `gateway:53` and
    /// answers only `sandbox`. Fails when the socket cannot be bound.
    init(
        egress: Egress,
        gateway: String,
        sandbox: String,
        upstream: DNSUpstream,
        namespace: String,
        ledger: SandboxLedger?
    ) throws(NetworkSetupError) {
        guard let listen = IPv4CIDR(gateway)?.address, let own = IPv4CIDR(sandbox)?.address else {
            throw NetworkSetupError("the job's addresses \(gateway), \(sandbox) are not IPv4 addresses")
        }
        let fd = Glibc.socket(
            AF_INET,
            Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0
        )
        guard fd >= 0 else {
            throw NetworkSetupError("cannot open the job's DNS socket: \(String(cString: strerror(errno)))")
        }
        var address = Self.socketAddress(listen, port: 53)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw NetworkSetupError("cannot listen for the job's DNS queries on \(gateway):53: \(reason)")
        }
        self.egress = egress
        self.socket = fd
        self.sandboxAddress = own
        self.upstream = Self.socketAddress(upstream.address, port: upstream.port)
        let sets = EgressSets(namespace: namespace, ledger: ledger)
        self.sets = sets
        source = UncheckedSendableBox(DispatchSource.makeReadSource(fileDescriptor: fd, queue: Self.queue))
        sweeper = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await sets.sweep()
            }
        }
        source.value.setEventHandler { [weak self] in self?.readQueries() }
        source.value.setCancelHandler { [closed] in
            close(fd)
            closed.signal()
        }
        source.value.resume()
    }

    /// Stops answering and closes the socket; returns once it is closed (at most 1 s; at once
    /// when called on the resolver's own queue, where the close cannot run meanwhile). The sets go
    /// with the namespace.
    func stop() {
        guard !stopped.exchange(true, ordering: .sequentiallyConsistent) else { return }
        source.value.cancel()
        sweeper.cancel()
        if DispatchQueue.getSpecific(key: Self.queueKey) == nil { _ = closed.wait(timeout: .now() + 1) }
    }

    deinit { stop() }

    private static let queueKey = DispatchSpecificKey<Bool>()
    private static let queue: DispatchQueue = {
        let queue = DispatchQueue(label: "hangar.egress-resolver")
        queue.setSpecific(key: queueKey, value: true)
        return queue
    }()

    private func readQueries() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var from = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let count = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(socket, raw.baseAddress, raw.count, 0, $0, &length)
                    }
                }
            }
            guard count > 0 else { return }
            // Only the job's own address: another job's namespace cannot use this resolver.
            guard UInt32(bigEndian: from.sin_addr.s_addr) == sandboxAddress else { continue }
            guard let query = DNSMessage.query(Array(buffer[0..<count])) else { continue }
            let admitted = inFlight.withLock { count in
                guard count < Self.maxInFlight else { return false }
                count += 1
                return true
            }
            guard admitted else { continue }
            let client = UncheckedSendableBox(from)
            Task {
                let reply = await self.answer(query)
                self.inFlight.withLock { $0 -= 1 }
                if let reply { self.send(reply, to: client.value) }
            }
        }
    }

    /// The reply to `query`, or nil to give none.
    func answer(_ query: DNSMessage.Query) async -> [UInt8]? {
        let question = query.question
        guard question.recordClass == DNSMessage.classIN else { return DNSMessage.reply(to: query, code: .refused) }
        guard case .granted(let ports) = egress.decide(question.name) else {
            return DNSMessage.reply(to: query, code: .nameError)
        }
        guard question.type == DNSMessage.typeA else { return DNSMessage.reply(to: query, code: .noError) }
        let id = UInt16.random(in: 0...UInt16.max)
        var request = query.headerAndQuestion
        request[2] = 0x01  // a standard query, recursion desired
        request[3] = 0
        guard let raw = await exchange(DNSMessage.withID(id, request), id: id),
            let answer = DNSMessage.answer(raw), answer.id == id, answer.question == question
        else { return DNSMessage.reply(to: query, code: .serverFailure) }
        if answer.addresses.contains(where: { !egress.mayResolve(to: $0.address) }) {
            return DNSMessage.reply(to: query, code: .refused)
        }
        if !ports.isEmpty, !answer.addresses.isEmpty {
            await sets.allow(
                answer.addresses.map { ($0.address, min(max($0.ttl, Self.minimumTTL), Self.maximumTTL)) },
                ports: ports
            )
        }
        return DNSMessage.withID(query.id, raw)
    }

    /// Sends `request` to the upstream and waits for the reply with `id` (two tries).
    private func exchange(_ request: [UInt8], id: UInt16) async -> [UInt8]? {
        for _ in 0..<2 {
            if let reply = await UpstreamExchange.run(request, id: id, to: upstream, timeout: Self.upstreamTimeout) {
                return reply
            }
        }
        return nil
    }

    private func send(_ reply: [UInt8], to client: sockaddr_in) {
        var target = client
        _ = reply.withUnsafeBytes { raw in
            withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(socket, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    static func socketAddress(_ address: UInt32, port: UInt16) -> sockaddr_in {
        var value = sockaddr_in()
        value.sin_family = sa_family_t(AF_INET)
        value.sin_port = port.bigEndian
        value.sin_addr.s_addr = address.bigEndian
        return value
    }
}

/// One query to the upstream resolver on a socket of its own (a fresh source port and id each
/// time), waited for without blocking a thread.
private enum UpstreamExchange {
    static func run(_ request: [UInt8], id: UInt16, to upstream: sockaddr_in, timeout: Duration) async -> [UInt8]? {
        let fd = socket(
            AF_INET,
            Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0
        )
        guard fd >= 0 else { return nil }
        var target = upstream
        let connected = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0, request.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, 0) }) == request.count
        else {
            close(fd)
            return nil
        }
        let queue = DispatchQueue(label: "hangar.egress-upstream")
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        return await withCheckedContinuation { (continuation: CheckedContinuation<[UInt8]?, Never>) in
            let waiter = Waiter(source: source, continuation: continuation)
            source.setEventHandler {
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    guard count > 0 else {
                        if count < 0, errno == ECONNREFUSED { waiter.finish(nil) }
                        return
                    }
                    let reply = Array(buffer[0..<count])
                    if DNSMessage.read16(reply, 0) == id { return waiter.finish(reply) }
                }
            }
            source.setCancelHandler { close(fd) }
            let milliseconds = Int(
                timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
            )
            queue.asyncAfter(deadline: .now() + .milliseconds(milliseconds)) { waiter.finish(nil) }
            source.resume()
        }
    }

    /// The end of one exchange: the reply or the timeout, whichever comes first.
    // @unchecked Sendable: `finished` is read and written only on the exchange's serial queue (the
    // read source's handler and the timeout both run there), and the source is thread-safe.
    private final class Waiter: @unchecked Sendable {
        private var finished = false
        private let source: any DispatchSourceRead
        private let continuation: CheckedContinuation<[UInt8]?, Never>

        init(source: any DispatchSourceRead, continuation: CheckedContinuation<[UInt8]?, Never>) {
            self.source = source
            self.continuation = continuation
        }

        func finish(_ reply: [UInt8]?) {
            guard !finished else { return }
            finished = true
            source.cancel()
            continuation.resume(returning: reply)
        }
    }
}

/// The node's upstream DNS resolver, which job resolvers ask for granted names.
public struct DNSUpstream: Sendable, Equatable, CustomStringConvertible {
    /// IPv4 address, host order.
    public let address: UInt32
    public let port: UInt16

    /// `a.b.c.d` or `a.b.c.d:port` (53 by default); nil if it is not one.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let cidr = IPv4CIDR(String(parts[0])), cidr.prefix == 32,
            !parts[0].contains("/")
        else { return nil }
        let port = parts.count == 2 ? UInt16(parts[1]) : 53
        guard let port, port > 0 else { return nil }
        self.address = cidr.address
        self.port = port
    }

    public var description: String { IPv4CIDR.format(address) + (port == 53 ? "" : ":\(port)") }

    /// The first IPv4 `nameserver` of `/etc/resolv.conf`, if any.
    public static func system(resolvConf path: String = "/etc/resolv.conf") -> DNSUpstream? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, fields[0] == "nameserver", let upstream = DNSUpstream(String(fields[1])) {
                return upstream
            }
        }
        return nil
    }
}

/// The two nftables sets of an allowlist job's namespace that its resolver fills, `resolved`
/// (addresses, any port) and `resolved_ports` (address . port), and when each entry expires. Every
/// change to the sets goes through here, one `nft` run after another in the order the table changed,
/// so the table and the kernel's sets never disagree.
actor EgressSets {
    struct Key: Hashable {
        let address: UInt32
        let port: UInt16?
    }

    private let namespace: String
    private let ledger: SandboxLedger?
    private var expiries: [Key: ContinuousClock.Instant] = [:]
    private var tail: Task<Void, Never>?

    init(namespace: String, ledger: SandboxLedger?) {
        self.namespace = namespace
        self.ledger = ledger
    }

    /// The entries now in the sets.
    var entries: Set<Key> { Set(expiries.keys) }

    /// Lets `addresses` through on `ports` (nil: any port) for their TTLs (seconds).
    func allow(_ addresses: [(UInt32, UInt32)], ports: Set<UInt16?>) async {
        let now = ContinuousClock.now
        var added: [Key] = []
        for (address, ttl) in addresses {
            for port in ports {
                let key = Key(address: address, port: port)
                let expiry = now + .seconds(Int(ttl))
                if let current = expiries[key] {
                    if current < expiry { expiries[key] = expiry }
                } else {
                    expiries[key] = expiry
                    added.append(key)
                }
            }
        }
        guard !added.isEmpty else { return }
        await apply("add", added)
    }

    /// Removes the entries whose TTL has passed.
    func sweep() async {
        let now = ContinuousClock.now
        let expired = expiries.filter { $0.value <= now }.map(\.key)
        guard !expired.isEmpty else { return }
        for key in expired { expiries[key] = nil }
        await apply("delete", expired)
    }

    private func apply(_ verb: String, _ keys: [Key]) async {
        let any = keys.filter { $0.port == nil }.map { IPv4CIDR.format($0.address) }
        let ported = keys.compactMap { key in key.port.map { IPv4CIDR.format(key.address) + " . \($0)" } }
        var script = ""
        if !any.isEmpty { script += "\(verb) element inet hangar resolved { \(any.joined(separator: ", ")) }\n" }
        if !ported.isEmpty {
            script += "\(verb) element inet hangar resolved_ports { \(ported.joined(separator: ", ")) }\n"
        }
        let previous = tail
        let (namespace, ledger) = (self.namespace, self.ledger)
        let task = Task {
            await previous?.value
            // A failure here means the namespace is gone with its job: nothing left to change.
            try? await JobNetwork.run(
                ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
                stdin: Data(script.utf8),
                ledger: ledger
            )
        }
        tail = task
        await task.value
    }
}

/// A value that is not `Sendable` by its type, moved between threads where its use is safe (said
/// at each use).
struct UncheckedSendableBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
