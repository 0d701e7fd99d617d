import Testing
@testable import InvalidationCore

/// A row value that an attacker (or a bug in the bot) could put in a column.
struct Hostile: Sendable, CustomTestStringConvertible {
    var label: String
    var value: String
    var testDescription: String { label }
}

private let hostileValues: [Hostile] = [
    Hostile(label: "star", value: "4*"),
    Hostile(label: "lone star", value: "*"),
    Hostile(label: "question mark", value: "4?"),
    Hostile(label: "character class", value: "[a-z]"),
    Hostile(label: "negated class", value: "[^0]"),
    Hostile(label: "unterminated class", value: "4["),
    Hostile(label: "closing bracket", value: "4]"),
    Hostile(label: "backslash", value: "4\\"),
    Hostile(label: "escaped star", value: "4\\*"),
    Hostile(label: "caret and dash", value: "^1-9"),
    Hostile(label: "newline", value: "4\n*"),
    Hostile(label: "CRLF and NUL", value: "4\r\n\u{0}x"),
    Hostile(label: "10 kB of wildcards", value: String(repeating: "*?[", count: 3_414)),
    Hostile(label: "emoji", value: "🚀💸👨‍👩‍👧"),
    Hostile(label: "right-to-left override", value: "\u{202E}1234"),
    Hostile(label: "template syntax", value: "{telegram_id}"),
    Hostile(label: "colon", value: "4:*"),
    Hostile(label: "space", value: "4 *"),
]

@Suite("Hostile row values never widen a deletion")
struct HostileValueTests {
    @Test("Exact keys carry the value verbatim", arguments: hostileValues)
    func exactKeysAreVerbatim(_ hostile: Hostile) {
        let value = hostile.value
        let plan = Fixture.defaultPlan(.tradeSettled, [
            "telegram_id": "42", "wallet_address": value, "tx_hash": value, "side": "sell", "sell_id": value, "status": "confirmed",
        ])
        #expect(plan.keys == [
            "area51:wallet_balance:\(value)", "area51:portfolio:42", "area51:main_menu:42", "area51:user_state:42",
            "area51:tx:42:\(value)", "area51:temp_sell_data:42:\(value)",
        ])
        #expect(plan.patterns.isEmpty)
    }

    @Test("A hostile telegram_id in a pattern is escaped and selects only that user's keys", arguments: hostileValues)
    func patternValuesAreEscaped(_ hostile: Hostile) {
        let tid = hostile.value
        let plan = Fixture.defaultPlan(.walletDeleted, ["telegram_id": tid, "address": "0xabc"])
        #expect(plan.patterns == ["area51:temp_sell_data:\(GlobPattern.escape(tid)):*"])
        #expect(plan.keys.contains("area51:user:\(tid)"))
        let pattern = plan.patterns[0]

        // The pattern must select exactly the keys that start with this user's literal key prefix.
        let own = "area51:temp_sell_data:\(tid):"
        let candidates = [
            own + "sell-1", own, own + "*",
            "area51:temp_sell_data:41:x", "area51:temp_sell_data:4x:y", "area51:temp_sell_data:4:x",
            "area51:temp_sell_data:1:x", "area51:temp_sell_data:*:x", "area51:temp_sell_data:\\:x",
            "area51:temp_sell_data:[:x", "area51:temp_sell_data:a:x", "area51:temp_sell_data::x",
            "area51:temp_sell_data:\(tid)x:y", "area51:temp_sell_data:x\(tid):y", "area51:temp_sell_data:\(tid)",
            "area51:user:\(tid)", "other:temp_sell_data:\(tid):s", "area51:temp_sell_data:\(tid.dropLast()):s",
        ]
        #expect(RedisGlob.matches(pattern, own + "sell-1"))
        for key in candidates {
            #expect(RedisGlob.matches(pattern, key) == key.hasPrefix(own), "pattern \(pattern.debugDescription) vs key \(key.debugDescription)")
        }
    }

    @Test func starInTelegramIDIsEscapedExactly() {
        let plan = Fixture.defaultPlan(.walletDeleted, ["telegram_id": "4*", "address": "0xabc"])
        #expect(plan.patterns == [#"area51:temp_sell_data:4\*:*"#])
        #expect(RedisGlob.matches(plan.patterns[0], "area51:temp_sell_data:4*:s1"))
        #expect(!RedisGlob.matches(plan.patterns[0], "area51:temp_sell_data:41:x"))
        #expect(!RedisGlob.matches(plan.patterns[0], "area51:temp_sell_data:4x:y"))
        #expect(!RedisGlob.matches(plan.patterns[0], "area51:temp_sell_data:4:y"))
    }

    @Test func backslashAndBracketsAreEscapedExactly() {
        let plan = Fixture.defaultPlan(.walletDeleted, ["telegram_id": #"[1-9]\?"#])
        #expect(plan.patterns == [#"area51:temp_sell_data:\[1\-9\]\\\?:*"#])
    }

    @Test func prefixWithGlobCharactersIsEscapedInPatternsButVerbatimInKeys() {
        let prefix = "a*b:"
        let plan = Fixture.defaultPlan(.walletDeleted, ["telegram_id": "42", "address": "0xabc"], prefix: prefix)
        #expect(plan.keys.sorted() == ["a*b:main_menu:42", "a*b:portfolio:42", "a*b:user:42", "a*b:user_settings:42",
                                       "a*b:user_state:42", "a*b:wallet_balance:0xabc"])
        #expect(plan.patterns == [#"a\*b:temp_sell_data:42:*"#])
        #expect(RedisGlob.matches(plan.patterns[0], "a*b:temp_sell_data:42:s1"))
        #expect(!RedisGlob.matches(plan.patterns[0], "aXb:temp_sell_data:42:s1"))
        #expect(!RedisGlob.matches(plan.patterns[0], "a:b:temp_sell_data:42:s1"))
        #expect(!RedisGlob.matches(plan.patterns[0], "a*b:temp_sell_data:43:s1"))
    }

    @Test(arguments: ["a*b:", "[x]:", "p?:", "\\:", "^-:"])
    func prefixInTruncatePatternsCannotReachOtherNamespaces(prefix: String) {
        let plan = Fixture.defaultPlan(.tableTruncated, ["table": "wallets"], prefix: prefix)
        #expect(plan.patterns.count == 7)
        for pattern in plan.patterns {
            #expect(pattern.hasPrefix(GlobPattern.escape(prefix)))
            #expect(!RedisGlob.matches(pattern, "other:user:1"))
            #expect(!RedisGlob.matches(pattern, "zz" + String(prefix.dropFirst()) + "user:1"))
        }
        let userPattern = GlobPattern.escape(prefix) + "user:*"
        #expect(plan.patterns.contains(userPattern))
        #expect(RedisGlob.matches(userPattern, prefix + "user:1"))
    }

    @Test(arguments: ["trades*", "*", "wallets\n", " wallets", "wallets ", "[t]rades", "settings;DROP", "WALLETS"])
    func hostileTableNameDeletesNothing(table: String) {
        #expect(Fixture.defaultPlan(.tableTruncated, ["table": table]).isEmpty)
    }

    @Test func emptyValuesFromThePayloadAreAbsent() throws {
        // The real path: the stored payload is decoded, which drops empty strings and nulls.
        let fields = try EventPayload.decode(#"{"telegram_id":"42","wallet_address":"","tx_hash":null,"side":"sell","sell_id":""}"#)
        let plan = Fixture.defaultPlan(.tradeSettled, fields)
        #expect(plan.keys == ["area51:portfolio:42", "area51:main_menu:42", "area51:user_state:42"])

        let deleted = Fixture.defaultPlan(.walletDeleted, try EventPayload.decode(#"{"telegram_id":"","address":"0xabc"}"#))
        #expect(deleted.keys == ["area51:wallet_balance:0xabc"])
        #expect(deleted.patterns.isEmpty)
    }

    @Test func emptyValuesInAnEventAreAbsent() {
        // The rules' own contract ("the key is skipped when the field is null or empty"; KeyRule.requires
        // says "non-null, non-empty") should hold for any InvalidationEvent, not only decoded ones.
        let plan = Fixture.defaultPlan(.tradeSettled, ["telegram_id": "42", "wallet_address": "", "side": "sell", "sell_id": ""])
        #expect(plan.keys == ["area51:portfolio:42", "area51:main_menu:42", "area51:user_state:42"])
        let transfer = Fixture.defaultPlan(.transferSettled, ["telegram_id": "42", "from_address": "0xa", "to_address": "0xb", "receiver_telegram_id": ""])
        #expect(transfer.keys == ["area51:wallet_balance:0xa", "area51:portfolio:42", "area51:main_menu:42"])
    }
}

@Suite("Reference glob matcher (sanity)")
struct RedisGlobTests {
    @Test(arguments: [
        ("*", "", true), ("*", "anything", true), ("a*", "abc", true), ("a*c", "abxc", true), ("a*c", "abx", false),
        ("a?c", "abc", true), ("a?c", "ac", false), ("[abc]x", "bx", true), ("[abc]x", "dx", false),
        ("[a-c]", "b", true), ("[c-a]", "b", true), ("[a-c]", "d", false), ("[^a]", "b", true), ("[^a]", "a", false),
        (#"\*"#, "*", true), (#"\*"#, "x", false), (#"\?"#, "x", false), (#"[\]]"#, "]", true), (#"a\\b"#, #"a\b"#, true),
        (#"\[a\]"#, "[a]", true), (#"\[a\]"#, "a", false), ("x\\", "x\\", true), ("abc", "abcd", false), ("abc*", "ab", false),
        (#"\-\^"#, "-^", true),
    ])
    func matcher(pattern: String, string: String, expected: Bool) {
        #expect(RedisGlob.matches(pattern, string) == expected)
    }
}

@Suite("InvalidationPlan de-duplication")
struct PlanDeduplicationTests {
    @Test func keysAreDeduplicatedByBytesNotByCanonicalEquivalence() {
        var plan = InvalidationPlan()
        plan.reserveCapacity(keys: 4)
        plan.add(key: "p:caf\u{E9}")
        plan.add(key: "p:cafe\u{301}")
        plan.add(key: "p:caf\u{E9}")
        plan.add(keyBytes: Array("p:cafe\u{301}".utf8))
        #expect(plan.keyBytes == [Array("p:caf\u{E9}".utf8), Array("p:cafe\u{301}".utf8)])
        #expect(plan.keys.map { Array($0.utf8) } == plan.keyBytes)
    }

    @Test func keysThatShareAPrefixStayDistinct() {
        // Hashing the bytes in one call must not confuse a key with its own prefix.
        var plan = InvalidationPlan()
        for key in ["p:1", "p:12", "p:1", "p:", "p:12"] { plan.add(key: key) }
        #expect(plan.keys == ["p:1", "p:12", "p:"])
    }
}
