import Foundation

/// The few lines of `/bin/sh` that start every sandbox: the shell moves itself into the job's
/// cgroup, lowers its own rlimits with util-linux `prlimit --pid $$`, then execs bubblewrap (through
/// util-linux `setpriv`, as an unprivileged host user, when one is given), so bubblewrap and the
/// job's program are limited from their first instruction on (a process only leaves its cgroup, or
/// raises a hard rlimit, if it is privileged, and the job is not). The pid stays the same
/// throughout, so the caller's wait, kill and `--die-with-parent` work unchanged.
///
/// The shell is used rather than moving the child after `posix_spawn`, which would race with
/// the child, and rather than clone-into-cgroup, which only v2 has.
struct LimitShim {
    /// Exit status of the shim itself failing; only counts with ``marker`` on stderr.
    static let failureStatus: Int32 = 125
    /// How the shim's own complaints start.
    static let marker = "hangar-shim: "
    static let shellPath = "/bin/sh"
    static let prlimitPath = "/usr/bin/prlimit"
    static let setprivPath = "/usr/bin/setpriv"

    /// The program to spawn.
    let executable = Self.shellPath
    /// Its argv: `sh -c SCRIPT hangar-shim BWRAP ARGS…`.
    let arguments: [String]

    /// - Parameters:
    ///   - procsFiles: the `cgroup.procs` files to write the shell's pid into.
    ///   - limits: the source of `RLIMIT_NOFILE` and `RLIMIT_FSIZE`; `RLIMIT_CORE` is always 0.
    ///   - program: what to exec once limited, with its argv (argv[0] included).
    ///   - user: the host uid (and gid) to run `program` as, without supplementary groups or
    ///     capabilities; nil to keep the caller's.
    init(
        procsFiles: [String],
        limits: JobLimits,
        program: String,
        arguments programArguments: [String],
        user: UInt32? = nil
    ) {
        var script = "fail() { echo \"\(Self.marker)$1\" >&2; exit \(Self.failureStatus); }\n"
        for file in procsFiles {
            let quoted = Self.quote(file)
            script += "{ echo $$ > \(quoted); } 2>/dev/null || fail \"cannot join cgroup \"\(quoted)\n"
        }
        if limits.fileSizeBytes % 512 == 0 {
            // The shell's own builtin (soft and hard at once; -f and -c count 512-byte blocks):
            // no fork and exec of prlimit on the way to every sandbox.
            script += "ulimit -n \(limits.openFiles) && ulimit -f \(limits.fileSizeBytes / 512) && ulimit -c 0 "
            script += "|| fail \"cannot set rlimits\"\n"
        } else {
            let rlimits = [
                "--nofile=\(limits.openFiles):\(limits.openFiles)",
                "--fsize=\(limits.fileSizeBytes):\(limits.fileSizeBytes)",
                "--core=0:0",
            ]
            script += "out=$(\(Self.prlimitPath) --pid $$ \(rlimits.joined(separator: " ")) 2>&1) "
            script += "|| fail \"cannot set rlimits: $out\"\n"
        }
        // The shell exports the node's working directory; nothing of the node goes into the sandbox.
        script += "unset PWD OLDPWD\n"
        if let user {
            script += "exec \(Self.setprivPath) --reuid=\(user) --regid=\(user) --clear-groups -- \"$@\"\n"
        } else {
            script += "exec \"$@\"\n"
        }
        arguments = ["sh", "-c", script, "hangar-shim", program] + programArguments.dropFirst()
    }

    /// `value` in single quotes, safe for the shell whatever it contains.
    static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
