import Logging

/// Log output settings shared by every hangar daemon.
public enum HangarLogging {
    /// Sets up swift-log once per process: human-readable lines on stderr at `level`.
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
