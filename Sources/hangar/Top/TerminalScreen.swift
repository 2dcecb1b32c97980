import Dispatch
import Foundation

/// The full-screen terminal of `hangar top`: the alternate screen, no echo, no line buffering, and
/// a stream of events (keys, resizes, ticks, Ctrl-C / SIGTERM). `restore()` puts the terminal back
/// as it was; it runs on every way out (quit key, signal, error).
final class TerminalScreen: @unchecked Sendable {
    // @unchecked Sendable: `original` and `restored` are touched only under `lock`; the dispatch
    // sources are created in init and only cancelled afterwards.

    enum Event: Sendable {
        case key(UInt8)
        case resize
        case tick
        case interrupted
    }

    private let lock = NSLock()
    private var original: termios?
    private var restored = false
    private var sources: [any DispatchSourceProtocol] = []
    private let queue = DispatchQueue(label: "hangar.top.terminal")
    let events: AsyncStream<Event>
    private let continuation: AsyncStream<Event>.Continuation

    init(refresh: Duration) throws {
        (events, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(16))
        var settings = termios()
        guard tcgetattr(STDIN_FILENO, &settings) == 0 else {
            throw CLIError("hangar top: cannot read the terminal settings of stdin (errno \(errno))")
        }
        original = settings
        // No echo, no line buffering; signals (Ctrl-C) still arrive as signals.
        settings.c_lflag &= ~tcflag_t(ECHO | ICANON)
        withUnsafeMutableBytes(of: &settings.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(STDIN_FILENO, TCSANOW, &settings) == 0 else {
            throw CLIError("hangar top: cannot set the terminal to raw mode (errno \(errno))")
        }
        // Alternate screen, hidden cursor.
        write("\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J")
        let continuation = self.continuation
        for (sig, event) in [(SIGWINCH, Event.resize), (SIGINT, .interrupted), (SIGTERM, .interrupted)] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { continuation.yield(event) }
            source.resume()
            sources.append(source)
        }
        let input = DispatchSource.makeReadSource(fileDescriptor: STDIN_FILENO, queue: queue)
        input.setEventHandler {
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = read(STDIN_FILENO, &buffer, buffer.count)
            if count <= 0 {
                continuation.yield(.interrupted)  // stdin closed
                return
            }
            for byte in buffer[0..<count] { continuation.yield(.key(byte)) }
        }
        input.resume()
        sources.append(input)
        let timer = DispatchSource.makeTimerSource(queue: queue)
        let (seconds, attoseconds) = refresh.components
        let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        timer.schedule(deadline: .now() + .nanoseconds(nanoseconds), repeating: .nanoseconds(nanoseconds))
        timer.setEventHandler { continuation.yield(.tick) }
        timer.resume()
        sources.append(timer)
    }

    deinit { restore() }

    /// Draws `lines` from the top-left corner, each cut to the terminal's width, clearing the rest.
    func draw(_ lines: [String], columns: Int, rows: Int) {
        var frame = "\u{1B}[H"
        for line in lines.prefix(max(1, rows)) {
            frame += clip(line, to: columns) + "\u{1B}[0m\u{1B}[K\n"
        }
        frame += "\u{1B}[J"
        write(frame)
    }

    /// Leaves the alternate screen, shows the cursor and restores the terminal settings. Idempotent.
    func restore() {
        lock.lock()
        defer { lock.unlock() }
        guard !restored else { return }
        restored = true
        for source in sources { source.cancel() }
        continuation.finish()
        write("\u{1B}[?25h\u{1B}[?1049l")
        if var settings = original { tcsetattr(STDIN_FILENO, TCSANOW, &settings) }
        for sig in [SIGWINCH, SIGINT, SIGTERM] { signal(sig, SIG_DFL) }
    }

    private func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes {
                Foundation.write(STDOUT_FILENO, $0.baseAddress! + offset, $0.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

/// `line` cut to `columns` printed characters, keeping ANSI escape sequences intact.
func clip(_ line: String, to columns: Int) -> String {
    guard visibleWidth(line) > columns else { return line }
    var result = ""
    var width = 0
    var inEscape = false
    for character in line {
        if inEscape {
            result.append(character)
            if character == "m" { inEscape = false }
        } else if character == "\u{1B}" {
            inEscape = true
            result.append(character)
        } else if width < columns {
            result.append(character)
            width += 1
        }
    }
    return result
}
