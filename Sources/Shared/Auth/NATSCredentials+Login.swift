import HangarNATS

extension NATSConnectionOptions {
    /// Logs in as `credentials` say: with the NKey (or, in a file of an earlier version, user and
    /// password), replies under the principal's inbox prefix, and the principal's user as the
    /// connection name suffix so that server logs and refused-login audits name who it was.
    public mutating func logIn(with credentials: NATSCredentials) {
        if let nkey = credentials.nkey, let seed = credentials.seed {
            self.nkey = nkey
            nkeySeed = seed
            user = nil
            password = nil
        } else {
            user = credentials.user
            password = credentials.password
        }
        inboxPrefix = credentials.inboxPrefix
        if !name.hasSuffix("(\(credentials.user))") { name += " (\(credentials.user))" }
    }
}
