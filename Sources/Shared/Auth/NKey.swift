import Crypto
import Foundation

/// A NATS user NKey: an Ed25519 key pair in NATS' printable form. The public key (`U…`) goes into
/// the server's configuration, the seed (`SU…`) stays with its owner; at connect the client signs
/// the server's nonce with the seed (challenge–response), so the server never holds a secret.
///
/// Printable form: base32 (RFC 4648, no padding) of prefix byte(s) ‖ 32 key bytes ‖ CRC-16/XMODEM
/// of what precedes it, little-endian. A user public key has the prefix 20 << 3 ('U'); a seed the
/// two bytes `18 << 3 | 20 >> 5`, `(20 & 31) << 3` ('S' then 'U').
public struct NKeyPair: Sendable, Equatable {
    /// The printable public key, `U` and 55 more characters.
    public let publicKey: String
    /// The printable seed, `SU` and 56 more characters. Secret.
    public let seed: String

    private static let userPrefix: UInt8 = 20 << 3
    private static let seedPrefix: UInt8 = 18 << 3

    /// A fresh user key pair from the system's random source.
    public static func generateUser() -> NKeyPair {
        let key = Curve25519.Signing.PrivateKey()
        // A valid key always encodes and decodes; the force is on our own output.
        return try! NKeyPair(seed: encodeSeed(key.rawRepresentation))
    }

    /// The key pair of a printable user seed; throws if it is not one (wrong prefix, length or
    /// checksum).
    public init(seed: String) throws(NKeyError) {
        let raw = try Self.decode(seed)
        guard raw.count == 34 + 2, raw[0] == Self.seedPrefix | (Self.userPrefix >> 5),
            raw[1] == (Self.userPrefix & 31) << 3
        else { throw NKeyError("not a NATS user seed (it must start with SU)") }
        let key: Curve25519.Signing.PrivateKey
        do {
            key = try Curve25519.Signing.PrivateKey(rawRepresentation: raw[2..<34])
        } catch {
            throw NKeyError("not a NATS user seed: \(error)")
        }
        self.seed = seed
        publicKey = Self.encode(prefix: [Self.userPrefix], key.publicKey.rawRepresentation)
    }

    /// Whether `text` is a well-formed printable user public key.
    public static func isUserPublicKey(_ text: String) -> Bool {
        guard let raw = try? decode(text) else { return false }
        return raw.count == 1 + 32 + 2 && raw[0] == userPrefix
    }

    /// The Ed25519 signature of `message` with this pair's seed (what a client returns for the
    /// server's nonce).
    public func sign(_ message: Data) throws(NKeyError) -> Data {
        let raw = try Self.decode(seed)
        do {
            return try Curve25519.Signing.PrivateKey(rawRepresentation: raw[2..<34]).signature(for: message)
        } catch {
            throw NKeyError("cannot sign: \(error)")
        }
    }

    /// Whether `signature` is this pair's signature of `message`.
    public func verify(_ signature: Data, of message: Data) -> Bool {
        guard let raw = try? Self.decode(publicKey),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw[1..<33])
        else { return false }
        return key.isValidSignature(signature, for: message)
    }

    private static func encodeSeed(_ key: Data) -> String {
        encode(prefix: [seedPrefix | (userPrefix >> 5), (userPrefix & 31) << 3], key)
    }

    private static func encode(prefix: [UInt8], _ key: Data) -> String {
        var raw = prefix + [UInt8](key)
        let checksum = crc16(raw)
        raw += [UInt8(checksum & 0xFF), UInt8(checksum >> 8)]
        return base32(raw)
    }

    /// The raw bytes of a printable key, checksum included, after checking the checksum.
    static func decode(_ text: String) throws(NKeyError) -> [UInt8] {
        guard text.utf8.count <= 128, let raw = unbase32(text), raw.count > 2 else {
            throw NKeyError("not a NATS key (base32 of 35 or 36 bytes expected)")
        }
        let body = Array(raw.dropLast(2))
        let stored = UInt16(raw[raw.count - 2]) | UInt16(raw[raw.count - 1]) << 8
        guard crc16(body) == stored else { throw NKeyError("the key's checksum is wrong (a typo?)") }
        return raw
    }

    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    static func base32(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = buffer << 8 | UInt32(byte)
            bits += 8
            while bits >= 5 {
                output.append(alphabet[Int(buffer >> UInt32(bits - 5) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { output.append(alphabet[Int(buffer << UInt32(5 - bits) & 31)]) }
        return String(decoding: output, as: UTF8.self)
    }

    static func unbase32(_ text: String) -> [UInt8]? {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for character in text.utf8 {
            let value: UInt32
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(character - UInt8(ascii: "A"))
            case UInt8(ascii: "2")...UInt8(ascii: "7"): value = UInt32(character - UInt8(ascii: "2")) + 26
            default: return nil
            }
            buffer = (buffer << 5 | value) & 0xFFFF
            bits += 5
            if bits >= 8 {
                output.append(UInt8(buffer >> UInt32(bits - 8) & 0xFF))
                bits -= 8
            }
        }
        return output
    }

    /// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as NATS' nkeys use.
    static func crc16(_ bytes: [UInt8]) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? crc << 1 ^ 0x1021 : crc << 1 }
        }
        return crc
    }
}

/// A malformed NKey or seed; the text says what is wrong, never the key itself.
public struct NKeyError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
