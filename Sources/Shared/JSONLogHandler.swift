import Foundation
import Logging

/// swift-log handler that writes one JSON object per line to stderr: `time`, `level`, `label`,
/// `message`, `source`, and every metadata key (`job.id`, `tenant`, `node.id`, `attempt`, ...).
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (key, value) in metadata { fields[key] = "\(value)" }
        if let provided = metadataProvider?.get() {
            for (key, value) in provided { fields[key] = "\(value)" }
        }
        for (key, value) in event.metadata ?? [:] { fields[key] = "\(value)" }
        fields["time"] = Self.timestamp()
        fields["level"] = event.level.rawValue
        fields["label"] = label
        fields["message"] = "\(event.message)"
        fields["source"] = event.source
        guard
            let data = try? JSONSerialization.data(
                withJSONObject: fields,
                options: [.sortedKeys, .withoutEscapingSlashes]
            )
        else { return }
        FileHandle.standardError.write(data + Data("\n".utf8))
    }

    private static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }
}

extension HangarLogging {
    /// Log line formats: `text` (human-readable) or `json` (one object per line).
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    /// Sets up swift-log once per process, on stderr at `level`, as text or JSON lines.
    public static func bootstrap(level: Logger.Level, format: Format) {
        switch format {
        case .text:
            bootstrap(level: level)
        case .json:
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        }
    }
}
