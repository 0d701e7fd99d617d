/// What a NOTIFY on the channel claims: the id of an event in the log.
///
/// NOTIFY is unauthenticated (any role that can connect can send anything), so a notification
/// is only ever a wake-up hint. The worker never takes keys from it: it reads the named event
/// from the log, which only the triggers can write.
public enum NotificationPayload {
    /// Why a payload was refused, for the log line and the metric label.
    public enum Malformed: Error, Equatable, CustomStringConvertible {
        case empty
        case tooLong(bytes: Int)
        case notAnEventID(preview: String)
        case outOfRange(preview: String)

        public var description: String {
            switch self {
            case .empty: return "empty payload (expected a decimal event id)"
            case .tooLong(let bytes): return "payload of \(bytes) bytes (an event id has at most 19 digits)"
            case .notAnEventID(let preview): return "payload \(preview) is not a decimal event id"
            case .outOfRange(let preview): return "payload \(preview) is not a positive 64-bit event id"
            }
        }

        /// A short stable label for metrics, never containing the payload itself.
        public var reasonCode: String {
            switch self {
            case .empty: return "empty"
            case .tooLong: return "too_long"
            case .notAnEventID: return "not_an_id"
            case .outOfRange: return "out_of_range"
            }
        }
    }

    /// Parses a decimal event id; rejects signs, spaces, leading zeros and anything else.
    public static func parseEventID(_ payload: String) throws(Malformed) -> Int64 {
        let bytes = Array(payload.utf8)
        if bytes.isEmpty { throw .empty }
        if bytes.count > 19 { throw .tooLong(bytes: bytes.count) }
        guard bytes.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), bytes[0] != UInt8(ascii: "0") else {
            throw .notAnEventID(preview: preview(payload))
        }
        guard let id = Int64(payload), id > 0 else { throw .outOfRange(preview: preview(payload)) }
        return id
    }

    /// A bounded, quoted rendering of hostile text that is safe to put in a log line.
    public static func preview(_ text: String, limit: Int = 64) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(limit) {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        if text.unicodeScalars.count > limit { out += "…" }
        return "\"" + out + "\""
    }
}
