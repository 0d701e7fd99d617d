import Testing
@testable import InvalidationCore

/// Array literals carry rows' and notifications' text to Postgres as one parameter.
@Suite("PostgresArray")
struct PostgresArrayTests {
    @Test func integersAndPlainText() {
        #expect(PostgresArray.integers([]) == "{}")
        #expect(PostgresArray.integers([1, -2, Int64.max]) == "{1,-2,9223372036854775807}")
        #expect(PostgresArray.text([]) == "{}")
        #expect(PostgresArray.text(["a", "", "NULL", "b c", "{x,y}"]) == #"{"a","","NULL","b c","{x,y}"}"#)
    }

    /// A quote or backslash that Swift groups with a combining mark (or a prepended U+0600) into
    /// one Character is still escaped: the escaping works on scalars.
    @Test(arguments: [
        ("\"\u{301}x", "{\"\\\"\u{301}x\"}"),
        ("x\\\u{301}", "{\"x\\\\\u{301}\"}"),
        ("\u{600}\"", "{\"\u{600}\\\"\"}"),
        ("\u{301}", "{\"\u{301}\"}"),
        ("\"\u{FE0F}\\\u{1F3FD}", "{\"\\\"\u{FE0F}\\\\\u{1F3FD}\"}"),
    ])
    func quotesAndBackslashesAreEscapedScalarByScalar(value: String, literal: String) {
        #expect(Array(PostgresArray.text([value]).unicodeScalars) == Array(literal.unicodeScalars))
    }
}
