import HangarShared

/// The handshake between the node and a waiting sandbox. The sandbox's program is `/bin/sh -c
/// WAITER` with three extra descriptors: `control`, where it reads a script from the node; `stdin`,
/// the job's stdin; `ready`, where it writes one byte when it is ready. At assignment the node
/// writes the script, which makes `stdin` the program's stdin, closes the extra descriptors, sets
/// the job's environment and `exec`s the job's argv: the job then runs as the sandbox's only
/// process, with only 0, 1, 2 open, just like in a fresh sandbox.
public struct WarmScript: Sendable {
    public let control: Int32
    public let stdin: Int32
    public let ready: Int32
    /// Variables the shell adds that a fresh sandbox's program would not have.
    let shellVariables: String

    /// bubblewrap: 3, 4, 5, before its own files (seccomp filter, `/etc`); it sets `PWD` itself.
    public static let process = WarmScript(control: 3, stdin: 4, ready: 5, shellVariables: "OLDPWD SHLVL")
    /// runc with `--preserve-fds 3`: 3, 4, 5; runc sets no `PWD`.
    public static let container = WarmScript(control: 3, stdin: 4, ready: 5, shellVariables: "PWD OLDPWD SHLVL")

    /// What the sandbox's shell runs while it waits: say "ready", read the script from `control`
    /// until EOF with the `read` builtin (the pipe belongs to the node's user, so the sandbox cannot
    /// reopen it through `/dev/fd/N`; it can only read the descriptor it holds), and run it.
    public var waiter: String {
        """
        printf R >&\(ready); exec \(ready)>&-; s=; while IFS= read -r l <&\(control); do s="$s$l
        "; done; eval "$s$l"
        """
    }

    /// Whether the shell can run `spec` exactly as given: environment names it can export
    /// (`[A-Za-z_][A-Za-z0-9_]*`) and no NUL bytes anywhere.
    static func canRun(_ spec: Hangar_V1_JobSpec) -> Bool {
        guard let program = spec.argv.first, !program.isEmpty, !program.hasPrefix("-") else { return false }
        if spec.argv.contains(where: { $0.utf8.contains(0) }) { return false }
        return spec.env.allSatisfy { key, value in
            isShellName(key) && !value.utf8.contains(0)
        }
    }

    /// Whether a waiting shell of `template`, created with `profile`, runs `spec` exactly as a
    /// fresh sandbox would: same template, no files in or out, `/tmp` as working directory, no
    /// network beyond loopback, no granted host paths (its mounts are made), the profile's
    /// creation-time limits, and a spec the shell can run (``canRun(_:)``).
    static func fits(_ spec: Hangar_V1_JobSpec, template: String, profile: WarmProfile) -> Bool {
        (spec.template.isEmpty ? TemplateName.host : spec.template) == template
            && spec.files.isEmpty && spec.filesOut.isEmpty
            && spec.grants.allowRead.isEmpty && spec.grants.allowWrite.isEmpty
            && (spec.cwd.isEmpty || spec.cwd == "/tmp")
            && [.networkNone, .networkLoopback].contains(spec.network.mode)
            && profile.matches(JobLimits(spec.limits))
            && canRun(spec)
    }

    /// The script that turns the waiting shell into the job (see ``canRun(_:)`` first).
    func script(for spec: Hangar_V1_JobSpec) -> String {
        var lines = ["exec 0<&\(stdin) \(stdin)<&- \(control)<&-", "unset \(shellVariables)"]
        for (key, value) in spec.env.sorted(by: { $0.key < $1.key }) {
            lines.append("export \(key)=\(LimitShim.quote(value))")
        }
        lines += Self.execLines(spec.argv)
        return lines.joined(separator: "\n") + "\n"
    }

    /// The lines that run `argv`: first a check that its program exists and is executable, which
    /// says so as every runtime does (``ExecFailure``: exit 127 or 126 with Hangar's message, not
    /// the shell's), then the `exec`. A name without a slash is looked up in `PATH`.
    static func execLines(_ argv: [String]) -> [String] {
        let program = LimitShim.quote(argv.first ?? "")
        func fail(_ failure: ExecFailure) -> String {
            let text = LimitShim.quote(failure.message(argv.first ?? ""))
            return "{ printf '%s\\n' \(text) >&2; exit \(failure.exitCode); }"
        }
        return [
            "case \(program) in",
            "*/*) [ -e \(program) ] || \(fail(.notFound))",
            "[ -f \(program) ] && [ -x \(program) ] || \(fail(.notExecutable)) ;;",
            "*) command -v -- \(program) >/dev/null 2>&1 || \(fail(.notFound)) ;;",
            "esac",
            "exec " + argv.map(LimitShim.quote).joined(separator: " "),
        ]
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
