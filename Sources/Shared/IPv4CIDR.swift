/// An IPv4 network in CIDR notation, normalized (host bits cleared).
public struct IPv4CIDR: Sendable, Equatable, CustomStringConvertible {
    /// The network address, host bits cleared.
    public let address: UInt32
    /// 0–32.
    public let prefix: Int

    /// Parses `a.b.c.d/n` (or `a.b.c.d`, a /32); nil if it is not one.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else { return nil }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var value: UInt32 = 0
        for octet in octets {
            guard (1...3).contains(octet.count), octet.allSatisfy(\.isASCII), let byte = UInt8(octet) else {
                return nil
            }
            value = value << 8 | UInt32(byte)
        }
        let prefix = parts.count == 2 ? Int(parts[1]) : 32
        guard let prefix, (0...32).contains(prefix), parts.count == 1 || parts[1].allSatisfy(\.isASCII) else {
            return nil
        }
        self.prefix = prefix
        self.address = prefix == 0 ? 0 : value & (UInt32.max << (32 - prefix))
    }

    public var description: String { Self.format(address) + "/" + String(prefix) }

    /// `a.b.c.d`.
    public static func format(_ address: UInt32) -> String {
        (0..<4).map { String((address >> (24 - 8 * $0)) & 0xFF) }.joined(separator: ".")
    }
}
