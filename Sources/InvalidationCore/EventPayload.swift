import Foundation

/// Why an event's stored payload could not be decoded.
public struct PayloadError: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "event payload \(reason)" }
}

/// Decodes the `payload` column of an event (a flat JSON object) into string fields.
///
/// The triggers write only strings and nulls, but a DBA may insert events by hand or a later
/// migration may add numbers, so numbers and booleans are accepted as their text. Anything
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
        let data = Data(text.utf8)
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw PayloadError(reason: "is not valid JSON")
        }
        guard let dictionary = object as? [String: Any] else {
            throw PayloadError(reason: "is not a JSON object")
        }
        var fields: [String: String] = [:]
        var oversized: [String] = []
        fields.reserveCapacity(dictionary.count)
        for (name, value) in dictionary {
            switch value {
            case is NSNull:
                continue
            case let string as String where string.utf8.count > maximumFieldBytes:
                oversized.append(name)
            case let string as String:
                if !string.isEmpty { fields[name] = string }
            case let number as NSNumber:
                // Foundation hands JSON booleans over as NSNumber with the C type "c".
                fields[name] = String(cString: number.objCType) == "c" ? (number.boolValue ? "true" : "false") : number.stringValue
            default:
                throw PayloadError(reason: "field \"\(name)\" is nested (only strings, numbers and null are allowed)")
            }
        }
        return (fields, oversized.sorted())
    }
}
