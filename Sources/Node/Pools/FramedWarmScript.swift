import Foundation
import HangarShared

/// The handshake with a waiting gVisor sandbox, which has no descriptors besides 0, 1 and 2 (runsc
/// has no `--preserve-fds`): its shell reads a script from stdin line by line until a line that is
/// exactly `marker` (random per sandbox), then runs it. The shell's `read` builtin takes a pipe one
/// byte at a time, so everything after the marker line is still unread: the script sets the job's
/// environment and `exec`s its argv, and the job reads the rest of stdin as its own stdin, exactly
/// the bytes the node wrote after the marker, then EOF. stdout and stderr are the container's.
struct FramedWarmScript: Sendable {
    /// A line no job can contain by chance: 32 random hex digits.
    let marker: String

    /// Variables the shell adds that a fresh container's program would not have (runsc sets no `PWD`).
    static let shellVariables = "PWD OLDPWD SHLVL"

    init() {
        marker = "hangar-go-" + (0..<4).map { _ in String(UInt64.random(in: 0...UInt64.max), radix: 16) }.joined()
    }

    /// What the container's shell runs while it waits.
    var waiter: String {
        """
        s=; while IFS= read -r l; do [ "$l" = \(marker) ] && break; s="$s$l
        "; done; eval "$s"
        """
    }

    /// Everything the node writes to the container's stdin for `spec` (see
    /// ``WarmScript/canRun(_:)`` first): the script, the marker line, the job's stdin.
    func input(for spec: Hangar_V1_JobSpec) -> Data {
        var lines = ["unset \(Self.shellVariables) s l"]
        for (key, value) in spec.env.sorted(by: { $0.key < $1.key }) {
            lines.append("export \(key)=\(LimitShim.quote(value))")
        }
        lines += WarmScript.execLines(spec.argv)
        var data = Data((lines.joined(separator: "\n") + "\n" + marker + "\n").utf8)
        data.append(spec.stdin)
        return data
    }
}
