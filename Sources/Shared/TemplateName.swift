/// Rules for template names, shared by the scheduler (request validation) and the node (the
/// template store, where a name becomes a folder name).
public enum TemplateName {
    /// The template every node has: the host's own `/usr`, `/lib*`, `/bin` and `/etc` essentials.
    public static let host = "host"

    /// Whether `name` can name a template: 1–63 characters of `a-z 0-9 . _ -`, starting with a
    /// letter or digit (so never `.`, `..`, a hidden name or anything with a `/`).
    public static func isValid(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), let first = bytes.first, isLowerAlphanumeric(first) else {
            return false
        }
        return bytes.allSatisfy {
            isLowerAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }

    /// Why `name` is not a valid template name, for messages.
    public static let rule = "1-63 characters of a-z 0-9 . _ -, starting with a letter or digit"

    private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}
