import HangarShared

/// The handshake between the node and a waiting sandbox. The sandbox's program is `/bin/sh -c
/// WAITER` with three extra descriptors: 4, where it reads a script from the node; 5, the job's
/// stdin; 6, where it writes one byte when it is ready. At assignment the node writes the script,
/// which makes 5 the program's stdin, closes 4 and 5, sets the job's environment and `exec`s the
/// job's argv: the job then runs as the sandbox's only process, with only 0, 1, 2 open, just like
/// in a fresh sandbox.
public enum WarmScript {
    static let controlDescriptor: Int32 = 4
    static let stdinDescriptor: Int32 = 5
    static let readyDescriptor: Int32 = 6

    /// What the sandbox's shell runs while it waits: say "ready", read the script from 4 until EOF
    /// with the `read` builtin (the pipe belongs to the node's user, so the sandbox cannot reopen
    /// it through `/dev/fd/4`; it can only read the descriptor it holds), and run it.
    public static let waiter = """
        printf R >&6; exec 6>&-; s=; while IFS= read -r l <&4; do s="$s$l
        "; done; eval "$s$l"
        """

    /// Whether the shell can run `spec` exactly as given: environment names it can export
    /// (`[A-Za-z_][A-Za-z0-9_]*`) and no NUL bytes anywhere.
    static func canRun(_ spec: Hangar_V1_JobSpec) -> Bool {
        guard let program = spec.argv.first, !program.isEmpty, !program.hasPrefix("-") else { return false }
        if spec.argv.contains(where: { $0.utf8.contains(0) }) { return false }
        return spec.env.allSatisfy { key, value in
            isShellName(key) && !value.utf8.contains(0)
        }
    }

    /// The script that turns the waiting shell into the job (see ``canRun(_:)`` first).
    static func script(for spec: Hangar_V1_JobSpec) -> String {
        var lines = ["exec 0<&5 5<&- 4<&-", "unset OLDPWD SHLVL"]  // PWD is bubblewrap's, as in a fresh sandbox
        for (key, value) in spec.env.sorted(by: { $0.key < $1.key }) {
            lines.append("export \(key)=\(LimitShim.quote(value))")
        }
        lines.append("exec " + spec.argv.map(LimitShim.quote).joined(separator: " "))
        return lines.joined(separator: "\n") + "\n"
    }

    private static func isShellName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, first == UInt8(ascii: "_") || isLetter(first) else { return false }
        return bytes.allSatisfy {
            $0 == UInt8(ascii: "_") || isLetter($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
        }
    }

    private static func isLetter(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }
}
