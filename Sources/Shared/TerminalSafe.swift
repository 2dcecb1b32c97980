extension String {
    /// This text made harmless to print on a terminal, for every string that came from a tenant, a
    /// node or the scheduler (names, messages, labels, file names, error messages): control
    /// characters are shown as visible escapes instead of reaching the terminal. C0 controls (newline,
    /// tab and carriage return included), ESC, DEL and the C1 controls become `\n`, `\r`, `\t` or
    /// `\xHH`; the Unicode line and paragraph separators and the bidirectional overrides and isolates
    /// (which reorder what a reader sees) become `\u{HHHH}`. Everything else, backslashes included,
    /// is kept, so the function can be applied twice without change.
    ///
    /// This is the one escaping function of the CLI (`Sources/hangar/Terminal.swift` says where it is
    /// applied); only a job's own output (`hangar run`, `hangar job logs`) is printed raw.
    public var terminalSafe: String {
        guard unicodeScalars.contains(where: Self.needsEscape) else { return self }
        var escaped = ""
        escaped.unicodeScalars.reserveCapacity(unicodeScalars.count + 8)
        for scalar in unicodeScalars {
            guard Self.needsEscape(scalar) else {
                escaped.unicodeScalars.append(scalar)
                continue
            }
            switch scalar {
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            default:
                let hex = String(scalar.value, radix: 16)
                escaped +=
                    scalar.value <= 0xFF
                    ? "\\x" + String(repeating: "0", count: 2 - hex.count) + hex
                    : "\\u{" + hex + "}"
            }
        }
        return escaped
    }

    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true  // C0, DEL, C1
        case 0x2028, 0x2029: true  // line and paragraph separators
        case 0x202A...0x202E, 0x2066...0x2069: true  // bidirectional embeddings, overrides, isolates
        default: false
        }
    }
}
