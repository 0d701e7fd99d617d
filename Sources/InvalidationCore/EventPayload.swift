import Foundation

/// Why an event's stored payload could not be decoded.
public struct PayloadError: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public var description: String { "event payload \(reason)" }
}

/// Decodes the `payload` column of an event (a flat JSON object) into string fields.
///
/// The triggers write only strings and nulls, but a DBA may insert events by hand or a later
/// migration may add numbers, so numbers and booleans are accepted as their text. Anything
/// nested is refused: no rule can use it, and guessing a rendering would invent keys.
public enum EventPayload {
    /// Payloads beyond this size are refused rather than rendered into keys: no bot key is that
    /// large, and a runaway row must not make the worker allocate without bound.
    public static let maximumBytes = 1 << 20

    public static func decode(_ text: String) throws(PayloadError) -> [String: String] {
        let data = Data(text.utf8)
        guard data.count <= maximumBytes else {
            throw PayloadError(reason: "is \(data.count) bytes, over the \(maximumBytes)-byte limit")
        }
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
        fields.reserveCapacity(dictionary.count)
        for (name, value) in dictionary {
            switch value {
            case is NSNull:
                continue
            case let string as String:
                if !string.isEmpty { fields[name] = string }
            case let number as NSNumber:
                // Foundation hands JSON booleans over as NSNumber with the C type "c".
                fields[name] = String(cString: number.objCType) == "c" ? (number.boolValue ? "true" : "false") : number.stringValue
            default:
                throw PayloadError(reason: "field \"\(name)\" is nested (only strings, numbers and null are allowed)")
            }
        }
        return fields
    }
}
