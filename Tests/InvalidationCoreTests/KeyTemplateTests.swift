import Testing
@testable import InvalidationCore

@Suite("KeyTemplate")
struct KeyTemplateTests {
    @Test func parsesLiteralsAndFields() throws {
        let template = try KeyTemplate("tx:{telegram_id}:{tx_hash}")
        #expect(template.segments == [.literal("tx:"), .field("telegram_id"), .literal(":"), .field("tx_hash")])
        #expect(template.fieldNames == ["telegram_id", "tx_hash"])
        #expect(template.source == "tx:{telegram_id}:{tx_hash}")
        #expect(template.description == "tx:{telegram_id}:{tx_hash}")
    }

    @Test(arguments: [
        ("mon_price_usd", [KeyTemplate.Segment.literal("mon_price_usd")], [String]()),
        ("{telegram_id}", [.field("telegram_id")], ["telegram_id"]),
        ("{a}{b}", [.field("a"), .field("b")], ["a", "b"]),
        ("{a}:{a}", [.field("a"), .literal(":"), .field("a")], ["a", "a"]),
        ("{_x9}", [.field("_x9")], ["_x9"]),
        ("{{x}}", [.literal("{x}")], []),
        ("a{{b}}c{d}", [.literal("a{b}c"), .field("d")], ["d"]),
        ("{{{d}}}", [.literal("{"), .field("d"), .literal("}")], ["d"]),
        ("}}", [.literal("}")], []),
        ("🚀:{id}", [.literal("🚀:"), .field("id")], ["id"]),
        ("a*b?[c]", [.literal("a*b?[c]")], []),
    ])
    func parses(source: String, segments: [KeyTemplate.Segment], fields: [String]) throws {
        let template = try KeyTemplate(source)
        #expect(template.segments == segments)
        #expect(template.fieldNames == fields)
    }

    @Test(arguments: [
        ("", "empty key template"),
        ("{", #"unclosed "{" at the end of "{" (write {{ for a literal brace)"#),
        ("user:{", #"unclosed "{" at the end of "user:{" (write {{ for a literal brace)"#),
        ("user:{telegram_id", #"unclosed placeholder "{telegram_id" in "user:{telegram_id""#),
        ("}", #"stray "}" in "}" (write }} for a literal brace)"#),
        ("a}b", #"stray "}" in "a}b" (write }} for a literal brace)"#),
        ("{a}}", #"stray "}" in "{a}}" (write }} for a literal brace)"#),
        ("{Bad}", #"placeholder {Bad} in "{Bad}" is not a field name (lower-case letters, digits and _)"#),
        ("{1a}", #"placeholder {1a} in "{1a}" is not a field name (lower-case letters, digits and _)"#),
        ("{a-b}", #"placeholder {a-b} in "{a-b}" is not a field name (lower-case letters, digits and _)"#),
        ("{ a}", #"placeholder { a} in "{ a}" is not a field name (lower-case letters, digits and _)"#),
        ("{é}", #"placeholder {é} in "{é}" is not a field name (lower-case letters, digits and _)"#),
    ])
    func refuses(source: String, reason: String) {
        let error = #expect(throws: KeyTemplate.ParseError.self) { try KeyTemplate(source) }
        #expect(error?.reason == reason)
        #expect(error?.description == reason)
    }

    @Test(arguments: ["{}", "x:{}", "{}:{telegram_id}", "{}}"])
    func refusesEmptyPlaceholder(source: String) {
        #expect(throws: KeyTemplate.ParseError.self) { try KeyTemplate(source) }
    }

    @Test func rendersValues() throws {
        let template = try KeyTemplate("tx:{telegram_id}:{tx_hash}")
        #expect(template.render(["telegram_id": "42", "tx_hash": "0xab", "unused": "z"]) == "tx:42:0xab")
        #expect(template.render(["telegram_id": "42"]) == nil)
        #expect(template.render([:]) == nil)
        #expect(try KeyTemplate("mon_price_usd").render([:]) == "mon_price_usd")
        // A value that looks like a placeholder is not expanded again.
        #expect(template.render(["telegram_id": "{tx_hash}", "tx_hash": "h"]) == "tx:{tx_hash}:h")
    }

    @Test func rendersEscapedValuesForGlobsButNotLiterals() throws {
        let template = try KeyTemplate("temp_sell_data:{telegram_id}:*")
        #expect(template.render(["telegram_id": "4*"], escapingValuesForGlob: true) == #"temp_sell_data:4\*:*"#)
        #expect(template.render(["telegram_id": "4*"]) == "temp_sell_data:4*:*")
    }
}

@Suite("GlobPattern.escape")
struct GlobPatternTests {
    @Test(arguments: ["*", "?", "[", "]", "\\", "^", "-"])
    func escapesEachSpecialCharacter(character: String) {
        #expect(GlobPattern.escape(character) == "\\" + character)
        #expect(GlobPattern.escape("a\(character)b") == "a\\\(character)b")
        #expect(RedisGlob.matches(GlobPattern.escape(character), character))
    }

    @Test(arguments: ["", "abc", "0xAbC123", ":{}!@#$%&()+=|;'\",.<>/~`", "é🚀\u{202E}", "a\nb\r\t\u{0}", " "])
    func leavesOrdinaryTextAlone(text: String) {
        #expect(GlobPattern.escape(text) == text)
    }

    @Test func escapesEveryOccurrence() {
        #expect(GlobPattern.escape(#"[a-z]*\?^"#) == #"\[a\-z\]\*\\\?\^"#)
        #expect(GlobPattern.escape("**") == #"\*\*"#)
    }

    @Test(arguments: ["*", "?", "[a-z]", "[^x]", #"\"#, #"\*"#, "a[", "]]", "x-y", "^", "🚀*", String(repeating: "*?", count: 500)])
    func escapedTextMatchesOnlyItself(text: String) {
        let pattern = GlobPattern.escape(text)
        #expect(RedisGlob.matches(pattern, text))
        for other in ["", "a", "x", "aa", "ab", text + "x", "x" + text, String(text.dropLast())] where other != text {
            #expect(!RedisGlob.matches(pattern, other), "\(pattern.debugDescription) matched \(other.debugDescription)")
        }
    }
}
