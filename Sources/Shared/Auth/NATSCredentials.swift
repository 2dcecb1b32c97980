import Foundation

/// A principal's NATS login, as `hangar tenant add` writes it (a JSON file, mode 0600): user,
/// password and the inbox prefix the connection must use to receive replies.
public struct NATSCredentials: Codable, Sendable, Equatable {
    /// `Principal.role` of the owner.
    public var role: String
    /// `Principal.name` of the owner.
    public var name: String
    /// The NATS user name (`Principal.user`).
    public var user: String
    /// 48 hex digits.
    public var password: String
    /// The reply-subject prefix the connection must use (`Principal.inboxPrefix`).
    public var inboxPrefix: String

    enum CodingKeys: String, CodingKey {
        case role, name, user, password
        case inboxPrefix = "inbox_prefix"
    }

    /// Fresh credentials for `principal` with a random 192-bit password.
    public init(principal: Principal) {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<24).map { _ in UInt8.random(in: 0...255, using: &generator) }
        self.init(
            principal: principal,
            password: bytes.map { String(format: "%02x", $0) }.joined()
        )
    }

    /// Credentials for `principal` with a given password (hex, 16-256 digits, to be loadable).
    public init(principal: Principal, password: String) {
        role = principal.role
        name = principal.name
        user = principal.user
        self.password = password
        inboxPrefix = principal.inboxPrefix
    }

    /// The principal these credentials belong to, if the file names a valid one.
    public var principal: Principal? { Principal(role: role, name: name) }

    /// Reads a credentials file; the error names the file and what is wrong with it.
    public static func load(path: String) throws -> NATSCredentials {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw AuthConfigError("cannot read the credentials file \(path): \(error.localizedDescription)")
        }
        guard data.count <= 64 * 1024 else { throw AuthConfigError("\(path) is too large for a credentials file") }
        let credentials: NATSCredentials
        do {
            credentials = try JSONDecoder().decode(NATSCredentials.self, from: data)
        } catch {
            throw AuthConfigError("\(path) is not a hangar credentials file (JSON with user, password, inbox_prefix)")
        }
        guard let principal = credentials.principal, principal.user == credentials.user,
            principal.inboxPrefix == credentials.inboxPrefix, isSafePassword(credentials.password)
        else {
            throw AuthConfigError("\(path): role, name, user and inbox_prefix do not match, or the password is not hex")
        }
        return credentials
    }

    /// Writes the file readable by its owner only.
    public func write(path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(),
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
        FileManager.default.createFile(
            atPath: temporary.path,
            contents: try encoder.encode(self),
            attributes: [.posixPermissions: 0o600]
        )
        try replaceFile(url.path, with: temporary.path)
    }

    /// Passwords go into the server configuration unquoted-safe: hex only.
    static func isSafePassword(_ password: String) -> Bool {
        (16...256).contains(password.utf8.count)
            && password.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// Moves `temporary` over `path` atomically (rename(2)).
func replaceFile(_ path: String, with temporary: String) throws {
    guard rename(temporary, path) == 0 else {
        let reason = String(cString: strerror(errno))
        try? FileManager.default.removeItem(atPath: temporary)
        throw AuthConfigError("cannot write \(path): \(reason)")
    }
}

/// A bad credentials file or authorization folder.
public struct AuthConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
