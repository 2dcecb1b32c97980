/// A workaround for libnats 3.4.1 (Debian's): it base64-encodes the nonce signature as if it were a
/// C string, so a signature whose first byte is zero goes out as no signature at all, and the
/// server refuses the login ("Authorization Violation", logged as "Signature missing"). Ed25519
/// signatures are deterministic, so about one nonce in 256 cannot be sent. The signing callback
/// refuses such a signature (no doomed login reaches the server), and the connection is made again:
/// the server sends a new nonce. Reconnects do the same on their own: libnats tries again.
enum NKeySignature {
    /// How many connections one login tries before giving up: a run of unsendable signatures is
    /// 256 times less likely with each.
    static let maxAttempts = 6

    static let unsendableMessage =
        "the nonce signature starts with a zero byte, which libnats would send as no signature; connecting again"

    /// Whether libnats sends `signature` as it is.
    static func isSendable(_ signature: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let first = signature.first else { return false }
        return first != 0
    }
}
