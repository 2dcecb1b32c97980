import ArgumentParser
import HangarShared
import Logging

/// Log options shared by the daemons.
struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical. Default: info.")
    var logLevel: String?

    @Option(help: "Log lines as text or json (one object per line, metadata as fields). Default: text.")
    var logFormat: String?

    /// Sets up logging from the flags, else the config file / environment (`log_level`, `log_format`).
    func bootstrap(_ file: DaemonConfigFile? = nil) throws {
        let levelName = logLevel ?? file?.string("log_level") ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else {
            throw CLIError(
                "log_level (--log-level) must be one of trace, debug, info, notice, warning, error, critical; got '\(levelName)'"
            )
        }
        let formatName = logFormat ?? file?.string("log_format") ?? "text"
        guard let format = HangarLogging.Format(rawValue: formatName) else {
            throw CLIError("log_format (--log-format) must be text or json, got '\(formatName)'")
        }
        HangarLogging.bootstrap(level: level, format: format)
    }
}
