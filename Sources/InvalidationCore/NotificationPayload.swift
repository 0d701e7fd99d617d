/// What a NOTIFY claims. On the public channel: the id of an event in the log.
///
/// NOTIFY is unauthenticated (any role that can connect can send anything), so a notification
/// on the public channel is only ever a wake-up hint: the worker never takes keys from it, it
/// reads the named event from the log, which only the triggers can write. On the private
/// channel (0004), whose name is a secret only emit() and the worker know, it is the event.
public enum NotificationPayload {
    /// Why a payload was refused, for the log line and the metric label.
    public enum Malformed: Error, Equatable, CustomStringConvertible {
        case empty
        case tooLong(bytes: Int)
        case notAnEventID(preview: String)
        case outOfRange(preview: String)
        case notAnEvent(preview: String)

        public var description: String {
            switch self {
            case .empty: return "empty payload (expected a decimal event id)"
            case .tooLong(let bytes): return "payload of \(bytes) bytes (an event id has at most 19 digits)"
            case .notAnEventID(let preview): return "payload \(preview) is not a decimal event id"
            case .outOfRange(let preview): return "payload \(preview) is not a positive 64-bit event id"
            case .notAnEvent(let preview): return "payload \(preview) is not an event (expected \"<id> <kind> <payload JSON>\")"
            }
        }

        /// A short stable label for metrics, never containing the payload itself.
        public var reasonCode: String {
            switch self {
            case .empty: return "empty"
            case .tooLong: return "too_long"
            case .notAnEventID: return "not_an_id"
            case .outOfRange: return "out_of_range"
            case .notAnEvent: return "not_an_event"
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

    /// Parses what emit() sends on the private channel (0004_private_channel): the event itself,
    /// `<id> <kind> <payload JSON>`. Only the shape is checked here; the worker decodes the
    /// payload with the same reader as the log's rows and reads the event from the log instead
    /// whenever anything about it is unusual.
    public static func parseEvent(_ payload: String) throws(Malformed) -> NotifiedEvent {
        let utf8 = payload.utf8
        if utf8.isEmpty { throw .empty }
        // Byte positions throughout (the separators are ASCII): stepping by Character would
        // swallow a combining mark that follows a space.
        let space = UInt8(ascii: " ")
        guard let idEnd = utf8.firstIndex(of: space),
              let kindEnd = utf8[utf8.index(after: idEnd)...].firstIndex(of: space),
              utf8.index(after: kindEnd) < utf8.endIndex
        else { throw .notAnEvent(preview: preview(payload)) }
        let id = try parseEventID(String(payload[payload.startIndex..<idEnd]))
        let kind = payload[utf8.index(after: idEnd)..<kindEnd]
        // Kinds are lower-case snake names (EventKind).
        guard (1...63).contains(kind.utf8.count),
              kind.utf8.allSatisfy({ ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z")) || $0 == UInt8(ascii: "_") })
        else { throw .notAnEvent(preview: preview(payload)) }
        return NotifiedEvent(id: id, kind: String(kind), payload: String(payload[utf8.index(after: kindEnd)...]))
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

/// An event as the private channel carries it, before its payload is decoded.
public struct NotifiedEvent: Sendable, Equatable {
    public var id: Int64
    public var kind: String
    /// The event's payload as the log holds it (jsonb's text), not yet decoded.
    public var payload: String

    public init(id: Int64, kind: String, payload: String) {
        self.id = id
        self.kind = kind
        self.payload = payload
    }
}
