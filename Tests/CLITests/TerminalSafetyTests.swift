import Foundation
import HangarShared
import Testing

/// Issue 14, item 6: nothing a tenant (or a node, or the scheduler) chose reaches the operator's
/// terminal as control bytes; only a job's own output (`run`, `job logs`) is passed through.
@Suite("terminal safety")
struct TerminalSafetyTests {
    /// Title-set (OSC 0 … BEL), clear-screen, a colour and a newline: what the attack used.
    static let hostile = "\u{1B}]0;pwned\u{07}\u{1B}[2J\u{1B}[31mred\nline"

    /// True if `text` holds a byte a terminal acts on (other than the newlines that end lines).
    static func hasControl(_ text: String) -> Bool {
        text.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\n") || (0x7F...0x9F).contains($0.value) }
    }

    @Test("terminalSafe shows C0, ESC, DEL, C1, newlines and bidi overrides as visible escapes")
    func escaping() {
        #expect(Self.hostile.terminalSafe == #"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\nline"#)
        #expect("a\tb\rc\u{0}d\u{7F}e\u{85}f\u{9B}g".terminalSafe == #"a\tb\rc\x00d\x7fe\x85f\x9bg"#)
        #expect("x\u{202E}y\u{2028}z\u{2066}".terminalSafe == #"x\u{202e}y\u{2028}z\u{2066}"#)
        // Plain text, Unicode letters and backslashes are kept; escaping twice changes nothing.
        let plain = #"dev-node-1 résumé 日本 C:\dir"#
        #expect(plain.terminalSafe == plain)
        #expect(Self.hostile.terminalSafe.terminalSafe == Self.hostile.terminalSafe)
        #expect(!Self.hasControl(Self.hostile.terminalSafe))
    }

    @Test("job status, messages and errors print a tenant's control bytes escaped; run passes job output through")
    func endToEnd() async throws {
        try await withCLICluster(nodes: 1) { cluster in
            // A symlink the job names with control bytes: the node skips it and says so, naming it,
            // in the result's message.
            let name = Self.hostile + ".txt"
            let submitted = try await cluster.hangar([
                "submit", "--file-out", "*.txt", "--", "/bin/sh", "-c",
                "ln -s /etc/hostname \"$1\"; printf '\\033[2Jraw'",
                "sh", name,
            ])
            #expect(submitted.status == 0, "\(submitted.stderr)")
            let id = submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            // `job logs` is the job's own output: passed through unchanged.
            let logs = try await cluster.hangar(["job", "logs", "-f", id])
            #expect(logs.status == 0, "\(logs.stderr)")
            #expect(logs.stdout == "\u{1B}[2Jraw")

            let status = try await cluster.hangar(["job", "status", id])
            #expect(status.status == 0, "\(status.stderr)")
            #expect(status.stdout.contains(#"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\nline.txt"#), "\(status.stdout)")
            #expect(!Self.hasControl(status.stdout), "\(status.stdout.debugDescription)")
            // The file name's newline did not start a line of its own.
            #expect(!status.stdout.split(separator: "\n").contains { $0.hasPrefix("line.txt") })

            // The scheduler's error message repeats the id the caller gave.
            let unknown = try await cluster.hangar(["job", "status", "j-" + Self.hostile])
            #expect(unknown.status == 1)
            #expect(unknown.stderr.contains(#"\x1b]0;pwned"#), "\(unknown.stderr)")
            #expect(!Self.hasControl(unknown.stderr), "\(unknown.stderr.debugDescription)")
            #expect(unknown.stderr.split(separator: "\n").count == 1, "\(unknown.stderr.debugDescription)")

            // A job list, the audit trail and top hold no control bytes either.
            for command in [["job", "status", "-o", "wide"], ["audit", "list"], ["top", "--once"]] {
                let output = try await cluster.hangar(command)
                #expect(output.status == 0, "\(command): \(output.stderr)")
                #expect(
                    !Self.hasControl(output.stdout + output.stderr),
                    "\(command): \(output.stdout.debugDescription)"
                )
            }
        }
    }
}
