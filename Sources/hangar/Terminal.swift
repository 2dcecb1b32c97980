import Foundation
import HangarShared

/// What the output terminal can do: colors only on a terminal, never with NO_COLOR or TERM=dumb.
///
/// Every string the CLI did not write itself (from a tenant, a node or the scheduler) goes through
/// `String.terminalSafe` (HangarShared) before it is printed: `printError` escapes its whole message,
/// `Style` escapes the text it colors, and tables, `job status`, `node status`, `tenant`, `audit` and
/// `top` escape each such field. Only a job's own output (`run`, `job logs`) is written raw.
enum Terminal {
    static func isTerminal(_ descriptor: Int32) -> Bool { isatty(descriptor) == 1 }

    /// Whether to color what goes to `descriptor` (https://no-color.org).
    static func colorsEnabled(_ descriptor: Int32 = STDOUT_FILENO) -> Bool {
        let environment = ProcessInfo.processInfo.environment
        if let noColor = environment["NO_COLOR"], !noColor.isEmpty { return false }
        if environment["TERM"] == "dumb" { return false }
        return isTerminal(descriptor)
    }

    /// The terminal's size in columns and rows, if `descriptor` is a terminal.
    static func size(_ descriptor: Int32 = STDOUT_FILENO) -> (columns: Int, rows: Int)? {
        var size = winsize()
        guard ioctl(descriptor, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0, size.ws_row > 0 else { return nil }
        return (Int(size.ws_col), Int(size.ws_row))
    }
}

/// ANSI styles; `Style.plain` renders text unchanged.
struct Style: Sendable {
    let enabled: Bool

    static let plain = Style(enabled: false)
    static var stdout: Style { Style(enabled: Terminal.colorsEnabled(STDOUT_FILENO)) }
    static var stderr: Style { Style(enabled: Terminal.colorsEnabled(STDERR_FILENO)) }

    /// `text` (escaped, see `String.terminalSafe`) in the style `code` when colors are enabled.
    func apply(_ code: String, _ text: String) -> String {
        let text = text.terminalSafe
        return enabled ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }
    func bold(_ text: String) -> String { apply("1", text) }
    func dim(_ text: String) -> String { apply("2", text) }
    func red(_ text: String) -> String { apply("31", text) }
    func green(_ text: String) -> String { apply("32", text) }
    func yellow(_ text: String) -> String { apply("33", text) }
    func cyan(_ text: String) -> String { apply("36", text) }

    /// A node or job state colored by how good it is.
    func state(_ text: String) -> String {
        switch text {
        case "ready", "up", "SUCCEEDED", "RUNNING": green(text)
        case "down", "offline", "FAILED", "LOST", "ERROR", "OOM_KILLED", "TIMED_OUT", "REJECTED", "OUTPUT_LIMIT":
            red(text)
        default: text.hasPrefix("ready") ? green(text) : yellow(text)
        }
    }
}

/// The printed width of `text`, not counting ANSI escape sequences.
func visibleWidth(_ text: String) -> Int {
    var width = 0
    var inEscape = false
    for scalar in text.unicodeScalars {
        if inEscape {
            if scalar == "m" { inEscape = false }
        } else if scalar == "\u{1B}" {
            inEscape = true
        } else {
            width += 1
        }
    }
    return width
}

/// Left-aligned columns separated by two spaces; the first row is the header (bold on a terminal).
func formatTable(_ rows: [[String]], style: Style = .plain) -> String {
    guard let width = rows.first?.count else { return "" }
    let widths = (0..<width).map { column in rows.map { visibleWidth($0[column]) }.max() ?? 0 }
    return rows.enumerated().map { index, row in
        let line = row.enumerated().map { column, cell in
            cell + String(repeating: " ", count: max(0, widths[column] - visibleWidth(cell)))
        }.joined(separator: "  ")
        let trimmed = String(line.reversed().drop { $0 == " " }.reversed())
        return index == 0 ? style.bold(trimmed) : trimmed
    }.joined(separator: "\n")
}
