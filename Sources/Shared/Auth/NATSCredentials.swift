import Foundation

/// A principal's NATS login, as `hangar tenant add` writes it (a JSON file, mode 0600): an NKey
/// (public key and seed; the server's configuration holds only the public key) and the inbox prefix
/// the connection must use to receive replies. Files of earlier versions hold a password instead;
/// they still load and work.
public struct NATSCredentials: Codable, Sendable, Equatable {
    /// `Principal.role` of the owner.
    public var role: String
    /// `Principal.name` of the owner.
    public var name: String
    /// The NATS user name (`Principal.user`).
    public var user: String
    /// The user NKey (`U…`), or nil in a password file.
    public var nkey: String?
    /// The NKey's seed (`SU…`), secret; nil in a password file.
    public var seed: String?
    /// Hex digits, in a file of an earlier version (nil with an NKey).
    public var password: String?
    /// The reply-subject prefix the connection must use (`Principal.inboxPrefix`).
    public var inboxPrefix: String

    enum CodingKeys: String, CodingKey {
        case role, name, user, nkey, seed, password
        case inboxPrefix = "inbox_prefix"
    }

    /// Fresh credentials for `principal` with a new NKey.
    public init(principal: Principal) {
        let pair = NKeyPair.generateUser()
        role = principal.role
        name = principal.name
        user = principal.user
        nkey = pair.publicKey
        seed = pair.seed
        inboxPrefix = principal.inboxPrefix
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
            principal.inboxPrefix == credentials.inboxPrefix
        else {
            throw AuthConfigError("\(path): role, name, user and inbox_prefix do not match")
        }
        switch (credentials.nkey, credentials.seed, credentials.password) {
        case (let nkey?, let seed?, nil):
            do {
                guard try NKeyPair(seed: seed).publicKey == nkey else {
                    throw AuthConfigError("\(path): the seed does not belong to the nkey")
                }
            } catch let error as NKeyError {
                throw AuthConfigError("\(path): \(error)")
            }
        case (nil, nil, let password?):
            guard isSafePassword(password) else { throw AuthConfigError("\(path): the password is not hex") }
        default:
            throw AuthConfigError("\(path): needs either nkey and seed, or a password")
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

    /// The line of `authorization.conf` that identifies this login: the public NKey, or (files of an
    /// earlier version) user and password. Both are checked on load, so nothing needs escaping.
    var serverLogin: [String] {
        if let nkey { return ["nkey: \"\(nkey)\""] }
        return ["user: \"\(user)\"", "password: \"\(password ?? "")\""]
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
