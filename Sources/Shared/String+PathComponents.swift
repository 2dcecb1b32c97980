extension StringProtocol {
    /// The components of a path split on the byte `/`, as the kernel sees them. `String.split` works on
    /// Characters, and a `/` followed by a combining mark is one Character, so it would hide a `..`.
    public func pathComponents(omittingEmpty: Bool = true) -> [String] {
        utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: omittingEmpty)
            .map { String(decoding: $0, as: UTF8.self) }
    }
}
