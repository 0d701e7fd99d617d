import Foundation
import Logging
import Synchronization

/// A swift-log handler that writes one line per record, in logfmt (default) or JSON,
/// to standard error: `ts=2026-11-21T22:19:54.123456Z level=info msg="lag summary" events=120 ...`.
public struct LogfmtLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case logfmt
        case json
    }

    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level = .info
    private let format: Format
    private let sink: LogSink

    public init(format: Format, sink: LogSink = .standardError) {
        self.format = format
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let line = LogfmtLogHandler.render(
            format: format, timestamp: Date(), level: event.level, message: event.message.description, metadata: merged)
        sink.write(line)
    }

    static let timestampFormat: Date.ISO8601FormatStyle = .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)

    /// Renders one record; metadata keys are sorted so lines diff and grep predictably.
    public static func render(format: Format, timestamp: Date, level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        let ts = timestamp.formatted(timestampFormat)
        let sortedKeys = metadata.keys.sorted()
        switch format {
        case .logfmt:
            var line = "ts=\(ts) level=\(level.rawValue) msg=\(logfmtValue(message))"
            for key in sortedKeys {
                line += " \(logfmtKey(key))=\(logfmtValue(flatten(metadata[key]!)))"
            }
            return line
        case .json:
            var line = "{\"ts\":\(jsonString(ts)),\"level\":\(jsonString(level.rawValue)),\"msg\":\(jsonString(message))"
            for key in sortedKeys where !["ts", "level", "msg"].contains(key) {
                line += ",\(jsonString(key)):\(jsonString(flatten(metadata[key]!)))"
            }
            return line + "}"
        }
    }

    static func flatten(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return c.description
        case .array(let items): return items.map(flatten).joined(separator: ",")
        case .dictionary(let dict): return dict.keys.sorted().map { "\($0):\(flatten(dict[$0]!))" }.joined(separator: ",")
        }
    }

    static func logfmtKey(_ key: String) -> String {
        let cleaned = key.unicodeScalars.map { ($0 == " " || $0 == "=" || $0 == "\"" || $0.value < 0x21) ? "_" : String($0) }.joined()
        return cleaned.isEmpty ? "_" : cleaned
    }

    /// Quotes a value when it is empty or holds a space, `=`, a quote or a control character.
    static func logfmtValue(_ value: String) -> String {
        let needsQuotes = value.isEmpty || value.unicodeScalars.contains { $0 == " " || $0 == "=" || $0 == "\"" || $0 == "\\" || $0.value < 0x20 || $0.value == 0x7F }
        return needsQuotes ? quoted(value) : value
    }

    static func jsonString(_ value: String) -> String { quoted(value) }

    /// A double-quoted string with JSON escapes; logfmt readers accept the same escapes, and no
    /// value (a hostile payload, an error text) can break a line in two.
    static func quoted(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

/// Where log lines go: standard error, or a buffer that tests read.
public final class LogSink: Sendable {
    private let lines = Mutex<[String]>([])
    private let capturing: Bool

    public static let standardError = LogSink(capturing: false)

    public init(capturing: Bool) {
        self.capturing = capturing
    }

    func write(_ line: String) {
        if capturing {
            lines.withLock { $0.append(line) }
        } else {
            // One write call per line so lines from several threads never interleave.
            let bytes = Array((line + "\n").utf8)
            bytes.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }
        }
    }

    /// Captured lines (empty for standard error).
    public var captured: [String] { lines.withLock { $0 } }
}
