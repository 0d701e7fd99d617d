import CacheInvalidator
import Foundation
import Logging
import Testing

/// Log lines ops grep and ship: one line per record whatever the values hold, and valid JSON.
@Suite("Log format")
struct LogFormatTests {
    static let hostile: Logger.Metadata = [
        "payload": "a \"quoted\" value\nwith a newline\r\tand \u{01} control",
        "empty": "",
        "plain": "0xA1",
        "eq": "a=b",
        "unicode": "🚀 ü \u{202E}",
    ]
    static let date = Date(timeIntervalSince1970: 1_795_000_000.123)

    @Test func logfmtKeepsOneLineAndQuotesWhatNeedsIt() {
        let line = LogfmtLogHandler.render(format: .logfmt, timestamp: Self.date, level: .warning, message: "ignored malformed notification", metadata: Self.hostile)
        #expect(!line.contains("\n") && !line.contains("\r"))
        #expect(line.hasPrefix("ts=2026-11-18T"))
        #expect(line.contains(" level=warning msg=\"ignored malformed notification\" "))
        #expect(line.contains(#"payload="a \"quoted\" value\nwith a newline\r\tand \u0001 control""#))
        #expect(line.contains(#"empty="""#))
        #expect(line.contains(" plain=0xA1"))
        #expect(line.contains(#"eq="a=b""#))
        // Keys are sorted, so lines are stable to grep and diff.
        let keys = line.split(separator: " ").compactMap { $0.split(separator: "=").first.map(String.init) }
        let metadataKeys = keys.filter { Self.hostile.keys.contains($0) }
        #expect(metadataKeys == metadataKeys.sorted())
    }

    @Test func jsonLinesParse() throws {
        let line = LogfmtLogHandler.render(format: .json, timestamp: Self.date, level: .info, message: "lag summary \"x\"", metadata: Self.hostile)
        #expect(!line.contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["level"] == "info")
        #expect(object["msg"] == "lag summary \"x\"")
        #expect(object["payload"] == "a \"quoted\" value\nwith a newline\r\tand \u{01} control")
        #expect(object["unicode"] == "🚀 ü \u{202E}")
    }
}
