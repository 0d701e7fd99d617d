import Foundation
import Testing
@testable import InvalidationCore

/// The payload reader is hand-written (for speed), so it is checked against Foundation's
/// JSONSerialization, the decoder it replaced, on generated payloads and on mutations of them:
/// both must accept and refuse the same texts, for the same reason, with the same fields.
@Suite("EventPayload against JSONSerialization")
struct FlatJSONTests {
    /// The previous implementation, kept as the reference.
    static func reference(_ text: String) -> Result<[String: String], PayloadError> {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
        } catch {
            return .failure(PayloadError(reason: "is not valid JSON"))
        }
        guard let dictionary = object as? [String: Any] else { return .failure(PayloadError(reason: "is not a JSON object")) }
        var fields: [String: String] = [:]
        for (name, value) in dictionary {
            switch value {
            case is NSNull: continue
            case let string as String where string.utf8.count > EventPayload.maximumFieldBytes: continue
            case let string as String: if !string.isEmpty { fields[name] = string }
            case let number as NSNumber:
                fields[name] = String(cString: number.objCType) == "c" ? (number.boolValue ? "true" : "false") : number.stringValue
            default: return .failure(PayloadError(reason: "nested"))
            }
        }
        return .success(fields)
    }

    static func ours(_ text: String) -> Result<[String: String], PayloadError> {
        do {
            return .success(try EventPayload.decode(text))
        } catch {
            // Which nested field is named depends on the reference's dictionary order.
            return .failure(error.reason.hasSuffix("is nested (only strings, numbers and null are allowed)") ? PayloadError(reason: "nested") : error)
        }
    }

    /// Numbers are rendered as written now, and as NSNumber's text before ("1e2" vs "100").
    static func sameFields(_ a: [String: String], _ b: [String: String]) -> Bool {
        guard a.keys.sorted() == b.keys.sorted() else { return false }
        for (name, value) in a {
            let other = b[name]!
            if Array(value.utf8) == Array(other.utf8) { continue }
            guard let x = Double(value), let y = Double(other), x == y else { return false }
        }
        return true
    }

    static func agree(_ text: String) -> Bool {
        switch (ours(text), reference(text)) {
        case (.success(let a), .success(let b)): return sameFields(a, b)
        case (.failure(let a), .failure(let b)): return a == b
        case (.failure(let a), .success):
            // The one known difference: Foundation accepts a trailing comma ({"a":1,}), which
            // JSON does not allow (and jsonb never writes).
            return a.reason == "is not valid JSON" && text.contains(/,\s*[}\]]/)
        default: return false
        }
    }

    static let pieces = ["a", "Z", "0", " ", "é", "🚀", "e\u{301}", "\u{202E}", "\\\"", "\\\\", "\\/", "\\n", "\\t", "\\u00e9",
                         "\\u0000", "\\ud83d\\ude80", "\\uD800", "\\udc00", "\\x", "\u{7F}", "'", ":", ",", "{", "}", "[", "]"]
    static let values = ["null", "true", "false", "0", "-7", "42", "9223372036854775807", "1.5", "-0.25", "1e3", "2E-2",
                         "[]", "{}", "[1,\"x\",null]", "{\"k\":\"v\"}", "01", "1.", ".5", "+1", "nul", "tru", "NaN", "-"]

    static func generate(_ rng: inout SeededGenerator) -> String {
        func space() -> String { ["", "", " ", "\n", "\t ", "\r\n"].randomElement(using: &rng)! }
        func string(_ pieces: [String] = pieces) -> String {
            (0..<Int.random(in: 0...6, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
        }
        // Names that differ in bytes but are canonically equivalent ("é" and "e\u0301") collide
        // in a Swift dictionary, on either side, in an order the comparison cannot predict; no
        // rule reads such a name.
        let namePieces = pieces.filter { !$0.unicodeScalars.contains("\u{301}") }
        var members: [String] = []
        for _ in 0..<Int.random(in: 0...5, using: &rng) {
            let value = Bool.random(using: &rng) ? "\"\(string())\"" : values.randomElement(using: &rng)!
            members.append(space() + "\"\(string(namePieces))\"" + space() + ":" + space() + value + space())
        }
        return space() + "{" + members.joined(separator: ",") + "}" + space()
    }

    static func mutate(_ text: String, _ rng: inout SeededGenerator) -> String {
        var scalars = Array(text.unicodeScalars)
        let insertable: [Unicode.Scalar] = ["\"", "\\", ",", ":", "{", "}", "[", "]", " ", "1", "-", "e", ".", "u", "\n", "\u{01}", "n"]
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            let at = scalars.isEmpty ? 0 : Int.random(in: 0..<scalars.count, using: &rng)
            switch Int.random(in: 0..<4, using: &rng) {
            case 0 where !scalars.isEmpty: scalars.remove(at: at)
            case 1: scalars.insert(insertable.randomElement(using: &rng)!, at: at)
            case 2 where !scalars.isEmpty: scalars[at] = insertable.randomElement(using: &rng)!
            default: scalars = Array(scalars.prefix(at))
            }
        }
        var result = ""
        result.unicodeScalars.append(contentsOf: scalars)
        return result
    }

    @Test func generatedPayloadsDecodeAsBefore() {
        var rng = SeededGenerator(seed: 20_261_122)
        var disagreements: [String] = []
        var accepted = 0
        for _ in 0..<20_000 {
            let text = Self.generate(&rng)
            if case .success = Self.ours(text) { accepted += 1 }
            if !Self.agree(text) { disagreements.append(text) }
        }
        #expect(disagreements.prefix(5) == [], "\(disagreements.count) disagreements")
        // The generator must produce both outcomes in bulk, or the comparison proves little.
        #expect(accepted > 2_000 && accepted < 18_000)
    }

    @Test func mutatedPayloadsAreRefusedAsBefore() {
        var rng = SeededGenerator(seed: 42)
        var disagreements: [String] = []
        var refused = 0
        for _ in 0..<20_000 {
            let text = Self.mutate(Self.generate(&rng), &rng)
            if case .failure = Self.ours(text) { refused += 1 }
            if !Self.agree(text) { disagreements.append(text) }
        }
        #expect(disagreements.prefix(5) == [], "\(disagreements.count) disagreements")
        #expect(refused > 5_000)
    }

    @Test func whatPostgresWritesDecodes() throws {
        // payload::text of a jsonb column: ", " and ": " separators, non-ASCII as is.
        let fields = try EventPayload.decode(#"{"side": "buy", "status": "confirmed", "tx_hash": "0xab\"c\\", "sell_id": null, "trade_id": "7", "telegram_id": "42", "wallet_address": "0xé🚀"}"#)
        #expect(fields == ["side": "buy", "status": "confirmed", "tx_hash": "0xab\"c\\", "trade_id": "7", "telegram_id": "42", "wallet_address": "0xé🚀"])
    }

    @Test func numbersAreKeptAsWritten() throws {
        #expect(try EventPayload.decode(#"{"a": 1.50, "b": 1e3, "c": -0}"#) == ["a": "1.50", "b": "1e3", "c": "-0"])
    }

    @Test func anOversizedNumberIsDroppedAndReportedLikeAnOversizedString() throws {
        // '{"a": 1e100000}'::jsonb::text is the number written out: 100,001 digits.
        let digits = "1" + String(repeating: "0", count: EventPayload.maximumFieldBytes)
        let decoded = try EventPayload.decodeReportingOversized(#"{"telegram_id": "7", "a": "# + digits + "}")
        #expect(decoded.fields == ["telegram_id": "7"])
        #expect(decoded.oversized == ["a"])
    }

    @Test func aRepeatedNameKeepsTheLastValue() throws {
        #expect(try EventPayload.decode(#"{"a": "1", "a": "2"}"#) == ["a": "2"])
        #expect(try EventPayload.decode(#"{"a": "1", "a": null}"#) == [:])
    }

    @Test(arguments: ["-", "01", "1.", ".5", "+1", "1e", "1e+", "0x10", "NaN", "Infinity", "-Infinity", "tru", "nulll", "\"\\u12\"", "\"\\uZZZZ\"",
                      "\"a\u{01}b\"", "\"\\ud83d\"", "\"\\ude80\\ud83d\"", "\"\\ud83d\\u0041\"", "\"unterminated", "\"\\"])
    func malformedValuesAreRefused(value: String) {
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(#"{"a": "# + value + "}") }
        #expect(error?.reason == "is not valid JSON")
    }

    @Test(arguments: ["{\"a\":1,}", "{,}", "{\"a\" 1}", "{\"a\":1 \"b\":2}", "{a:1}", "{\"a\":1}}", "{\"a\":[1,]}", "{\"a\":{\"b\"}}", "\u{FEFF}{}", "{}\u{0}"])
    func malformedObjectsAreRefused(text: String) {
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(text) }
        #expect(error?.reason == "is not valid JSON")
    }

    @Test func deepNestingIsRefusedWithoutExhaustingTheStack() {
        let deep = #"{"a": "# + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(deep) }
        #expect(error?.reason == "is not valid JSON")
        let topLevel = String(repeating: "[", count: 100_000)
        #expect(throws: PayloadError.self) { try EventPayload.decode(topLevel) }
        // Nesting within the limit is valid JSON, refused only for being nested.
        let shallow = #"{"a": "# + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}"
        let nested = #expect(throws: PayloadError.self) { try EventPayload.decode(shallow) }
        #expect(nested?.reason == "field \"a\" is nested (only strings, numbers and null are allowed)")
    }

    @Test func invalidJSONWinsOverANestedField() {
        let error = #expect(throws: PayloadError.self) { try EventPayload.decode(#"{"a": [], "b": tru}"#) }
        #expect(error?.reason == "is not valid JSON")
    }

    @Test func escapesDecode() throws {
        let fields = try EventPayload.decode(#"{"a": "\"\\\/\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude80\u0000"}"#)
        #expect(fields["a"].map { Array($0.unicodeScalars) } == ["\"", "\\", "/", "\u{08}", "\u{0C}", "\n", "\r", "\t", "A", "é", "€", "🚀", "\u{0}"])
    }
}
