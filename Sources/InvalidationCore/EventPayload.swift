/// Why an event's stored payload could not be decoded.
public struct PayloadError: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "event payload \(reason)" }
}

/// Decodes the `payload` column of an event (a flat JSON object) into string fields.
///
/// The triggers write only strings and nulls, but a DBA may insert events by hand or a later
/// migration may add numbers, so numbers and booleans are accepted as their text (a number as
/// written, which for a jsonb column is what `payload->>'field'` gives). Anything
/// nested is refused: no rule can use it, and guessing a rendering would invent keys.
public enum EventPayload {
    /// Field values beyond this size are dropped (and reported) instead of rendered into keys:
    /// no bot key is that large, and one runaway column must not cost the event's other keys.
    public static let maximumFieldBytes = 64 << 10

    /// The payload's fields; oversized values are silently dropped (see `decodeReportingOversized`).
    public static func decode(_ text: String) throws(PayloadError) -> [String: String] {
        try decodeReportingOversized(text).fields
    }

    /// The payload's fields, and the names of fields dropped for exceeding `maximumFieldBytes`.
    public static func decodeReportingOversized(_ text: String) throws(PayloadError) -> (fields: [String: String], oversized: [String]) {
        var fields: [String: String] = [:]
        fields.reserveCapacity(8)
        var oversized: Set<String> = []
        var nested: Set<String> = []
        do {
            try FlatJSON.forEachMember(in: text) { name, value in
                // A repeated name: the last one counts, as in jsonb. (The sets are almost always
                // empty; this runs for every field of every event.)
                if !oversized.isEmpty { oversized.remove(name) }
                if !nested.isEmpty { nested.remove(name) }
                switch value {
                // A number counts as its text (jsonb writes 1e100000 out in full: 100,001 digits).
                case .string(let text), .number(let text):
                    if text.utf8.count > maximumFieldBytes {
                        fields.removeValue(forKey: name)
                        oversized.insert(name)
                    } else if text.isEmpty {
                        fields.removeValue(forKey: name)
                    } else {
                        fields[name] = text
                    }
                case .bool(let bool):
                    fields[name] = bool ? "true" : "false"
                case .nested:
                    fields.removeValue(forKey: name)
                    nested.insert(name)
                case .null:
                    fields.removeValue(forKey: name)
                }
            }
        } catch {
            switch error {
            case .invalid: throw PayloadError(reason: "is not valid JSON")
            case .notAnObject: throw PayloadError(reason: "is not a JSON object")
            }
        }
        if let nested = nested.min() {
            throw PayloadError(reason: "field \"\(nested)\" is nested (only strings, numbers and null are allowed)")
        }
        return (fields, oversized.sorted())
    }
}
