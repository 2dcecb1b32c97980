import Glibc

/// The words every runtime uses in a result's message for a limit that a job hit, so that the same
/// limit reads the same whichever runtime ran the job (README, "Runtimes and limits").
enum LimitWords {
    /// "the pids limit of 32 was reached (5 forks refused)".
    static func pids(limit: UInt64, refused: UInt64) -> String {
        "the pids limit of \(limit) was reached (\(count(refused, "fork")) refused)"
    }

    /// "the file size limit of 1 MiB was reached (SIGXFSZ)": RLIMIT_FSIZE killed the program,
    /// which had not ignored the signal.
    static func fileSize(limit: UInt64) -> String {
        "the file size limit of \(JobLimits.describeBytes(limit)) was reached (SIGXFSZ)"
    }

    /// Whether a program that ended this way was killed by RLIMIT_FSIZE's SIGXFSZ (the OCI runtimes
    /// and bubblewrap report a death by signal `n` as exit code 128 + `n`).
    static func diedOfFileSize(exitCode: Int32?, signal: Int32?) -> Bool {
        signal == SIGXFSZ || exitCode == 128 + SIGXFSZ
    }

    /// `message` with `notes` appended, "; "-separated, empty parts left out.
    static func appending(_ notes: [String], to message: String) -> String {
        ([message] + notes).filter { !$0.isEmpty }.joined(separator: "; ")
    }

    /// "1 process", "3 processes", "2 forks".
    static func count(_ number: UInt64, _ noun: String) -> String {
        number == 1 ? "1 \(noun)" : "\(number) \(noun)\(noun.hasSuffix("s") ? "es" : "s")"
    }
}
