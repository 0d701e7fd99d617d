/// A cache-key template such as `tx:{telegram_id}:{tx_hash}`: literal text with named
/// placeholders filled from an event's payload.
///
/// `{{` and `}}` stand for literal braces. Placeholder names are lower-case identifiers.
public struct KeyTemplate: Sendable, Equatable, CustomStringConvertible {
    public enum Segment: Sendable, Equatable {
        case literal(String)
        case field(String)
    }

    public let segments: [Segment]
    public let source: String

    public var description: String { source }

    /// The placeholder names, in order of appearance.
    public var fieldNames: [String] {
        segments.compactMap { if case .field(let name) = $0 { return name } else { return nil } }
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public init(_ source: String) throws(ParseError) {
        self.source = source
        var segments: [Segment] = []
        var literal = ""
        var chars = source.makeIterator()
        var pending: Character? = nil
        func next() -> Character? {
            if let p = pending { pending = nil; return p }
            return chars.next()
        }
        while let c = next() {
            if c == "{" {
                guard let following = next() else {
                    throw ParseError(reason: "unclosed \"{\" at the end of \(source.debugDescription) (write {{ for a literal brace)")
                }
                if following == "{" { literal.append("{"); continue }
                if following == "}" {
                    throw ParseError(reason: "empty placeholder {} in \(source.debugDescription) (write {{}} for literal braces)")
                }
                var name = String(following)
                var closed = false
                while let d = next() {
                    if d == "}" { closed = true; break }
                    name.append(d)
                }
                guard closed else {
                    throw ParseError(reason: "unclosed placeholder \"{\(name)\" in \(source.debugDescription)")
                }
                guard KeyTemplate.isIdentifier(name) else {
                    throw ParseError(reason: "placeholder {\(name)} in \(source.debugDescription) is not a field name (lower-case letters, digits and _)")
                }
                if !literal.isEmpty { segments.append(.literal(literal)); literal = "" }
                segments.append(.field(name))
            } else if c == "}" {
                guard let following = next(), following == "}" else {
                    throw ParseError(reason: "stray \"}\" in \(source.debugDescription) (write }} for a literal brace)")
                }
                literal.append("}")
            } else {
                literal.append(c)
            }
        }
        if !literal.isEmpty { segments.append(.literal(literal)) }
        guard !segments.isEmpty else { throw ParseError(reason: "empty key template") }
        self.segments = segments
    }

    static func isIdentifier(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || ("a"..."z").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { $0 == "_" || ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    }

    /// Fills the placeholders, or returns nil when any of them is absent from `fields`
    /// (a rule such as `tx:{telegram_id}:{tx_hash}` applies only when there is a tx_hash).
    ///
    /// With `escapingValuesForGlob`, values are escaped so that a `*` in a wallet address
    /// matches only a literal `*`: a row's content can never widen a pattern deletion.
    public func render(_ fields: [String: String], escapingValuesForGlob: Bool = false) -> String? {
        var out: [UInt8] = []
        guard render(fields, appendingTo: &out, escapingValuesForGlob: escapingValuesForGlob) else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    /// `render`, appending the bytes to `key` (a prefix may already be in it) without an
    /// intermediate String: exact keys are rendered this way for every key of every event.
    /// False (and `key` partly written) when a placeholder is absent.
    public func render(_ fields: [String: String], appendingTo key: inout [UInt8], escapingValuesForGlob: Bool = false) -> Bool {
        for segment in segments {
            switch segment {
            case .literal(let text):
                key.append(contentsOf: text.utf8)
            case .field(let name):
                // Absent and empty mean the same: `tx:42:` is no key the bot ever wrote.
                guard let value = fields[name], !value.isEmpty else { return false }
                key.append(contentsOf: (escapingValuesForGlob ? GlobPattern.escape(value) : value).utf8)
            }
        }
        return true
    }
}

/// Redis glob syntax (`SCAN ... MATCH`): `*`, `?`, `[...]` and `\` escapes.
public enum GlobPattern {
    /// Escapes every character Redis's glob matcher treats specially, so `value` matches itself only.
    public static func escape(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "*", "?", "[", "]", "\\", "^", "-":
                out.unicodeScalars.append("\\")
                out.unicodeScalars.append(scalar)
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
