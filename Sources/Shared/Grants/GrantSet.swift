/// A job's grants (``Hangar_V1_Grants``) parsed and checked: the host paths it may read or write and
/// the network destinations it may reach. The rule, everywhere: a deny always wins over an allow, on
/// the same path or on any path above it (Deno's CVE-2025-48888 ended an allow+deny of one path
/// allowed; here that is denied). Pure: the scheduler checks requests with it, nodes plan their
/// mounts with it.
public struct GrantSet: Sendable, Equatable {
    /// What a job may do with a path.
    public enum Access: Int, Sendable, Comparable, CustomStringConvertible {
        /// The path does not exist in the sandbox (or, inside a granted one, is empty).
        case none
        case read
        case readWrite

        public static func < (lhs: Access, rhs: Access) -> Bool { lhs.rawValue < rhs.rawValue }

        public var description: String {
            switch self {
            case .none: "none"
            case .read: "read-only"
            case .readWrite: "read-write"
            }
        }
    }

    /// At most this many entries in each list.
    public static let maxEntries = 32
    /// Host paths no grant may reach: through them a job could see or steer the host itself.
    public static let forbiddenRoots = ["/proc", "/sys", "/dev"]

    public private(set) var allowRead: [GrantPath] = []
    public private(set) var allowWrite: [GrantPath] = []
    public private(set) var denyRead: [GrantPath] = []
    public private(set) var denyWrite: [GrantPath] = []
    public private(set) var allowNet: [NetGrant] = []
    public private(set) var denyNet: [NetGrant] = []

    /// No grants: nothing beyond the sandbox's own image, no network.
    public init() {}

    /// Parses and checks `grants`; the error names the entry at fault (`grants.allow_read[2]`).
    public init(_ grants: Hangar_V1_Grants) throws(GrantError) {
        allowRead = try Self.paths(grants.allowRead, "allow_read", allowing: true)
        allowWrite = try Self.paths(grants.allowWrite, "allow_write", allowing: true)
        denyRead = try Self.paths(grants.denyRead, "deny_read", allowing: false)
        denyWrite = try Self.paths(grants.denyWrite, "deny_write", allowing: false)
        allowNet = try Self.nets(grants.allowNet, "allow_net")
        denyNet = try Self.nets(grants.denyNet, "deny_net")
    }

    /// Whether nothing is granted or denied.
    public var isEmpty: Bool {
        let paths = allowRead.isEmpty && allowWrite.isEmpty && denyRead.isEmpty && denyWrite.isEmpty
        return paths && allowNet.isEmpty && denyNet.isEmpty
    }

    /// Whether any host path is granted.
    public var grantsPaths: Bool { !allowRead.isEmpty || !allowWrite.isEmpty }

    /// The grants in their normalized form (what the scheduler stores and sends to nodes).
    public var message: Hangar_V1_Grants {
        var grants = Hangar_V1_Grants()
        grants.allowRead = allowRead.map(\.path)
        grants.allowWrite = allowWrite.map(\.path)
        grants.denyRead = denyRead.map(\.path)
        grants.denyWrite = denyWrite.map(\.path)
        grants.allowNet = allowNet.map(\.description)
        grants.denyNet = denyNet.map(\.description)
        return grants
    }

    /// What the job may do with host path `path` (absolute, normalized).
    public func access(_ path: String) -> Access {
        let covered = { (list: [GrantPath]) in list.contains { $0.covers(path) } }
        guard covered(allowRead) || covered(allowWrite), !covered(denyRead) else { return .none }
        return covered(allowWrite) && !covered(denyWrite) ? .readWrite : .read
    }

    /// One mount of a sandbox's grant plan: `path` from the host at the same path, with `access`;
    /// `.none` hides it (an empty, read-only place) inside a granted path above it.
    public struct Mount: Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var access: Access

        public var description: String { "\(path) \(access)" }
    }

    /// The mounts that give a sandbox exactly ``access(_:)``: applied in order (shallow paths
    /// first), every path's access is that of the deepest mount at or above it, or none.
    public func mountPlan() -> [Mount] {
        var all: [GrantPath] = allowRead
        all += allowWrite
        all += denyRead
        all += denyWrite
        let points: [GrantPath] = Set(all).map { (depth: $0.depth, point: $0) }
            .sorted { first, second in
                first.depth != second.depth ? first.depth < second.depth : first.point.path < second.point.path
            }
            .map(\.point)
        var plan: [Mount] = []
        for point in points {
            let inherited = plan.last { GrantPath(normalized: $0.path).covers(point.path) }?.access ?? .none
            let here = access(point.path)
            if here != inherited { plan.append(Mount(path: point.path, access: here)) }
        }
        return plan
    }

    /// Whether a connection to `host` (a name, if known) at `address` (IPv4, if known) and `port`
    /// is allowed: some allow_net entry matches and no deny_net entry does.
    public func allowsNet(host: String?, address: UInt32?, port: UInt16) -> Bool {
        let matches = { (grant: NetGrant) in grant.matches(host: host, address: address, port: port) }
        return allowNet.contains(where: matches) && !denyNet.contains(where: matches)
    }

    private static func paths(_ raw: [String], _ field: String, allowing: Bool) throws(GrantError) -> [GrantPath] {
        guard raw.count <= maxEntries else {
            throw GrantError(field: "grants.\(field)", message: "\(raw.count) entries; the maximum is \(maxEntries)")
        }
        var paths: [GrantPath] = []
        for (index, text) in raw.enumerated() {
            let at = "grants.\(field)[\(index)]"
            guard let path = GrantPath(text) else {
                throw GrantError(
                    field: at,
                    message:
                        "'\(text.prefix(64))' is not an absolute path without '.' or '..' components (at most \(GrantPath.maxBytes) bytes)"
                )
            }
            if allowing, let root = forbiddenRoots.first(where: { path.isUnder($0) || path.covers($0) }) {
                throw GrantError(field: at, message: "'\(path.path)' reaches \(root), which no grant may")
            }
            if !paths.contains(path) { paths.append(path) }
        }
        return paths
    }

    private static func nets(_ raw: [String], _ field: String) throws(GrantError) -> [NetGrant] {
        guard raw.count <= maxEntries else {
            throw GrantError(field: "grants.\(field)", message: "\(raw.count) entries; the maximum is \(maxEntries)")
        }
        var grants: [NetGrant] = []
        for (index, text) in raw.enumerated() {
            guard let grant = NetGrant(text) else {
                throw GrantError(
                    field: "grants.\(field)[\(index)]",
                    message:
                        "'\(text.prefix(64))' is not a host, *.domain or IPv4 address/CIDR with an optional :port (1-65535)"
                )
            }
            if !grants.contains(grant) { grants.append(grant) }
        }
        return grants
    }
}

/// Why grants are refused: the entry at fault and what is wrong.
public struct GrantError: Error, Sendable, Equatable {
    public var field: String
    public var message: String

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
}

/// An absolute host path in normal form: one `/` between components, no trailing `/`, no `.` or
/// `..` components, no NUL.
public struct GrantPath: Sendable, Hashable, CustomStringConvertible {
    public static let maxBytes = 1024
    public let path: String

    /// Parses `text`; doubled slashes and a trailing slash are dropped, `.` and `..` refused.
    public init?(_ text: String) {
        guard text.hasPrefix("/"), text.utf8.count <= Self.maxBytes, !text.utf8.contains(0) else { return nil }
        let components = text.split(separator: "/")
        guard !components.contains(where: { $0 == "." || $0 == ".." }) else { return nil }
        path = "/" + components.joined(separator: "/")
    }

    init(normalized: String) { path = normalized }

    public var description: String { path }

    /// Components below `/` (0 for `/`): its slashes, as it is normalized.
    public var depth: Int {
        path == "/" ? 0 : path.utf8.reduce(0) { count, byte in byte == UInt8(ascii: "/") ? count + 1 : count }
    }

    /// Whether `other` is this path or below it.
    public func covers(_ other: String) -> Bool {
        if path == "/" || other == path { return true }
        let own = path.utf8
        let candidate = other.utf8
        guard candidate.count > own.count, candidate.starts(with: own) else { return false }
        return candidate[candidate.index(candidate.startIndex, offsetBy: own.count)] == UInt8(ascii: "/")
    }

    /// Whether this path is `root` or below it.
    public func isUnder(_ root: String) -> Bool { GrantPath(normalized: root).covers(path) }
}

/// One network grant: a host name, a `*.domain` wildcard (its subdomains, not the domain itself)
/// or an IPv4 network, with an optional port (any port without).
public struct NetGrant: Sendable, Hashable, CustomStringConvertible {
    public enum Target: Sendable, Hashable {
        case host(String)
        case subdomains(of: String)
        case network(address: UInt32, prefix: Int)
    }

    public let target: Target
    public let port: UInt16?

    /// Parses `host`, `host:port`, `*.domain[:port]`, `a.b.c.d[/n][:port]`; names are lowercased.
    public init?(_ text: String) {
        guard !text.isEmpty, text.utf8.count <= 300, text.allSatisfy(\.isASCII) else { return nil }
        var body = Substring(text)
        var port: UInt16?
        if let colon = body.lastIndex(of: ":") {
            guard let value = UInt16(body[body.index(after: colon)...]), value > 0 else { return nil }
            port = value
            body = body[..<colon]
        }
        self.port = port
        if let cidr = IPv4CIDR(String(body)) {
            target = .network(address: cidr.address, prefix: cidr.prefix)
        } else if body.hasPrefix("*.") {
            let domain = body.dropFirst(2).lowercased()
            guard Self.isHostName(domain) else { return nil }
            target = .subdomains(of: domain)
        } else {
            let host = body.lowercased()
            guard Self.isHostName(host), !host.allSatisfy({ $0.isNumber || $0 == "." }) else { return nil }
            target = .host(host)
        }
    }

    public var description: String {
        let base: String
        switch target {
        case .host(let host): base = host
        case .subdomains(let domain): base = "*." + domain
        case .network(let address, let prefix):
            base = IPv4CIDR.format(address) + (prefix == 32 ? "" : "/\(prefix)")
        }
        return port.map { base + ":\($0)" } ?? base
    }

    /// The IPv4 network, if this grant is one.
    public var network: IPv4CIDR? {
        guard case .network(let address, let prefix) = target else { return nil }
        return IPv4CIDR(IPv4CIDR.format(address) + "/\(prefix)")
    }

    /// Whether a connection to `host` / `address` at `port` falls under this grant.
    public func matches(host: String?, address: UInt32?, port: UInt16) -> Bool {
        if let own = self.port, own != port { return false }
        switch target {
        case .host(let name):
            return host?.lowercased() == name
        case .subdomains(let domain):
            return host.map { $0.lowercased().hasSuffix("." + domain) } ?? false
        case .network(let network, let prefix):
            guard let address else { return false }
            return prefix == 0 || address & (UInt32.max << (32 - prefix)) == network
        }
    }

    private static func isHostName(_ name: String) -> Bool {
        guard (1...253).contains(name.utf8.count) else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            (1...63).contains(label.utf8.count) && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" }
        }
    }
}
