/// A strict RFC 8259 reader for one flat JSON object: the event payload, on the worker's hot path.
///
/// Foundation's JSONSerialization cost the worker 6 µs per event (boxing every value as `Any`,
/// then casting it back), about 40 % of its CPU while draining a backlog. This reader walks the
/// UTF-8 bytes once and hands each member over as it is read. It accepts exactly what JSON
/// accepts (differentially tested against JSONSerialization on generated and mutated input), so
/// a payload is refused for the same reasons as before.
enum FlatJSON {
    enum Value {
        case string(String)
        /// The number's text as written (`payload::text` of a jsonb column is numeric's canonical
        /// text, the same as `payload->>'field'`).
        case number(String)
        case bool(Bool)
        case null
        /// An object or array (valid, skipped): the caller decides whether that is an error.
        case nested
    }

    enum Failure: Error {
        /// Not JSON at all (syntax, bad escape, lone surrogate, nesting deeper than `maximumDepth`).
        case invalid
        /// Valid JSON whose top level is not an object.
        case notAnObject
    }

    /// Deeper nesting is refused rather than followed: every level costs stack.
    static let maximumDepth = 512

    /// Calls `member` for each name and value of the object in `text`, in document order. The
    /// whole text is validated: nothing after the object but whitespace.
    static func forEachMember(in text: String, _ member: (String, Value) throws(Failure) -> Void) throws(Failure) {
        var text = text
        // withUTF8 rethrows untyped errors; carry the typed one out by hand.
        let failure: Failure? = text.withUTF8 { bytes in
            var reader = Reader(bytes: bytes)
            do throws(Failure) {
                try reader.readObject(member)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        mutating func readObject(_ member: (String, Value) throws(Failure) -> Void) throws(Failure) {
            skipWhitespace()
            guard peek() == UInt8(ascii: "{") else {
                // Tell "valid JSON, but not an object" from "not JSON".
                try skipValue(depth: 0)
                try expectEnd()
                throw .notAnObject
            }
            index += 1
            try readElements(close: UInt8(ascii: "}")) { (reader) throws(Failure) in
                let name = try reader.readName()
                try member(name, try reader.readValue())
            }
            try expectEnd()
        }

        /// After an opening `[` or `{`: comma-separated elements, each read by `element`, up to
        /// and including `close`.
        private mutating func readElements(close: UInt8, _ element: (inout Reader) throws(Failure) -> Void) throws(Failure) {
            skipWhitespace()
            if peek() == close {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                try element(&self)
                skipWhitespace()
                let next = peek()
                index += 1
                if next == close { return }
                guard next == UInt8(ascii: ",") else { throw .invalid }
            }
        }

        /// A member's `"name" :`, and the whitespace after it.
        private mutating func readName() throws(Failure) -> String {
            guard peek() == UInt8(ascii: "\"") else { throw .invalid }
            let name = try readString()
            skipWhitespace()
            guard peek() == UInt8(ascii: ":") else { throw .invalid }
            index += 1
            skipWhitespace()
            return name
        }

        private mutating func readValue() throws(Failure) -> Value {
            switch peek() {
            case UInt8(ascii: "\""): return .string(try readString())
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                try skipValue(depth: 1)
                return .nested
            case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
            case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
            case UInt8(ascii: "n"): try expectLiteral("null"); return .null
            default:
                let start = index
                try skipNumber()
                return .number(String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self))
            }
        }

        /// Validates any JSON value and steps over it.
        private mutating func skipValue(depth: Int) throws(Failure) {
            guard depth <= FlatJSON.maximumDepth else { throw .invalid }
            switch peek() {
            case UInt8(ascii: "\""): _ = try readString()
            case UInt8(ascii: "t"): try expectLiteral("true")
            case UInt8(ascii: "f"): try expectLiteral("false")
            case UInt8(ascii: "n"): try expectLiteral("null")
            case UInt8(ascii: "["):
                index += 1
                try readElements(close: UInt8(ascii: "]")) { (reader) throws(Failure) in try reader.skipValue(depth: depth + 1) }
            case UInt8(ascii: "{"):
                index += 1
                try readElements(close: UInt8(ascii: "}")) { (reader) throws(Failure) in
                    _ = try reader.readName()
                    try reader.skipValue(depth: depth + 1)
                }
            default: try skipNumber()
            }
        }

        /// -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
        private mutating func skipNumber() throws(Failure) {
            if peek() == UInt8(ascii: "-") { index += 1 }
            switch peek() {
            case UInt8(ascii: "0"): index += 1
            case let digit? where digit >= UInt8(ascii: "1") && digit <= UInt8(ascii: "9"): skipDigits()
            default: throw .invalid
            }
            if peek() == UInt8(ascii: ".") {
                index += 1
                guard isDigit(peek()) else { throw .invalid }
                skipDigits()
            }
            if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
                index += 1
                if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
                guard isDigit(peek()) else { throw .invalid }
                skipDigits()
            }
        }

        private mutating func skipDigits() {
            while isDigit(peek()) { index += 1 }
        }

        private func isDigit(_ byte: UInt8?) -> Bool {
            guard let byte else { return false }
            return byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
        }

        /// At the opening quote; returns the decoded string and steps past the closing quote.
        private mutating func readString() throws(Failure) -> String {
            index += 1
            let start = index
            // Fast path: no escapes (every payload the triggers write, short of a quote or a
            // backslash in a value).
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
                    index += 1
                    return text
                }
                if byte == UInt8(ascii: "\\") { break }
                guard byte >= 0x20 else { throw .invalid }
                index += 1
            }
            guard index < bytes.count else { throw .invalid }
            var decoded = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
            while index < bytes.count {
                let byte = bytes[index]
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return String(decoding: decoded, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    index += 1
                    guard let escaped = peek() else { throw .invalid }
                    index += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): decoded.append(escaped)
                    case UInt8(ascii: "b"): decoded.append(0x08)
                    case UInt8(ascii: "f"): decoded.append(0x0C)
                    case UInt8(ascii: "n"): decoded.append(0x0A)
                    case UInt8(ascii: "r"): decoded.append(0x0D)
                    case UInt8(ascii: "t"): decoded.append(0x09)
                    case UInt8(ascii: "u"): decoded.append(contentsOf: try readUnicodeEscape())
                    default: throw .invalid
                    }
                default:
                    guard byte >= 0x20 else { throw .invalid }
                    decoded.append(byte)
                    index += 1
                }
            }
            throw .invalid
        }

        /// After `\u`: four hex digits, and for a high surrogate the `\uDC00`-`\uDFFF` that must
        /// follow it. A lone surrogate is refused (it is no character; jsonb refuses it too).
        private mutating func readUnicodeEscape() throws(Failure) -> String.UTF8View {
            let first = try readHex4()
            let scalar: Unicode.Scalar?
            switch first {
            case 0xD800...0xDBFF:
                guard peek() == UInt8(ascii: "\\") else { throw .invalid }
                index += 1
                guard peek() == UInt8(ascii: "u") else { throw .invalid }
                index += 1
                let second = try readHex4()
                guard (0xDC00...0xDFFF).contains(second) else { throw .invalid }
                scalar = Unicode.Scalar(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00))
            case 0xDC00...0xDFFF:
                throw .invalid
            default:
                scalar = Unicode.Scalar(first)
            }
            guard let scalar else { throw .invalid }
            return String(Character(scalar)).utf8
        }

        private mutating func readHex4() throws(Failure) -> UInt32 {
            guard index + 4 <= bytes.count else { throw .invalid }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw .invalid
                }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }

        private mutating func expectLiteral(_ literal: StaticString) throws(Failure) {
            let count = literal.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw .invalid }
            let expected = UnsafeBufferPointer(start: literal.utf8Start, count: count)
            for offset in 0..<count where bytes[index + offset] != expected[offset] { throw .invalid }
            index += count
        }

        private mutating func expectEnd() throws(Failure) {
            skipWhitespace()
            guard index == bytes.count else { throw .invalid }
        }

        private mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x09, 0x0A, 0x0D: index += 1
                default: return
                }
            }
        }

        private func peek() -> UInt8? {
            index < bytes.count ? bytes[index] : nil
        }
    }
}
