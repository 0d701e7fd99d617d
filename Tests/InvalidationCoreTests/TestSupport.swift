import Foundation
@testable import InvalidationCore

/// Shared helpers for the InvalidationCore tests.
enum Fixture {
    static let prefix = "area51:"

    static func event(_ kind: EventKind, _ fields: [String: String], id: Int64 = 1) -> InvalidationEvent {
        InvalidationEvent(id: id, kind: kind, fields: fields, startMicros: 1_700_000_000_000_000)
    }

    /// The default rules' plan for `kind` with `fields`, under `prefix`.
    static func defaultPlan(_ kind: EventKind, _ fields: [String: String], prefix: String = Fixture.prefix) -> InvalidationPlan {
        RuleSet.defaults().plan(for: event(kind, fields), prefix: prefix)
    }

    /// The repository root, found from this file's location (Tests/InvalidationCoreTests/…).
    static func repositoryRoot(file: String = #filePath) -> URL {
        URL(fileURLWithPath: file)
            .deletingLastPathComponent()  // TestSupport.swift
            .deletingLastPathComponent()  // InvalidationCoreTests
            .deletingLastPathComponent()  // Tests
    }
}

/// A tiny SplitMix64: deterministic, so a failing jitter test replays exactly.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A reference implementation of Redis's glob matcher (`stringmatchlen` in util.c), byte-wise,
/// case-sensitive: `*`, `?`, `[...]` with `^` negation and `a-z` ranges, and `\` escapes
/// (inside and outside brackets). Used to check what an escaped SCAN MATCH pattern really selects.
enum RedisGlob {
    private static let star = UInt8(ascii: "*"), question = UInt8(ascii: "?"), open = UInt8(ascii: "[")
    private static let close = UInt8(ascii: "]"), backslash = UInt8(ascii: "\\"), caret = UInt8(ascii: "^")
    private static let dash = UInt8(ascii: "-")

    static func matches(_ pattern: String, _ string: String) -> Bool {
        match(Array(pattern.utf8)[...], Array(string.utf8)[...])
    }

    private static func match(_ pattern: ArraySlice<UInt8>, _ string: ArraySlice<UInt8>) -> Bool {
        var p = pattern, s = string
        while let c = p.first {
            switch c {
            case star:
                while p.count > 1 && p[p.startIndex + 1] == star { p = p.dropFirst() }
                if p.count == 1 { return true }
                var rest = s
                while true {
                    if match(p.dropFirst(), rest) { return true }
                    if rest.isEmpty { return false }
                    rest = rest.dropFirst()
                }
            case question:
                guard !s.isEmpty else { return false }
                s = s.dropFirst(); p = p.dropFirst()
            case open:
                guard let ch = s.first else { return false }
                p = p.dropFirst()
                let negate = p.first == caret
                if negate { p = p.dropFirst() }
                var matched = false
                while let pc = p.first {  // an unterminated class ends at the end of the pattern, as in Redis
                    if pc == backslash && p.count >= 2 {
                        p = p.dropFirst()
                        if p.first == ch { matched = true }
                    } else if pc == close {
                        break
                    } else if p.count >= 3 && p[p.startIndex + 1] == dash {
                        var low = pc, high = p[p.startIndex + 2]
                        if low > high { swap(&low, &high) }
                        if ch >= low && ch <= high { matched = true }
                        p = p.dropFirst(2)
                    } else if pc == ch {
                        matched = true
                    }
                    p = p.dropFirst()
                }
                if negate { matched.toggle() }
                guard matched else { return false }
                s = s.dropFirst()
                p = p.dropFirst()  // the closing "]", if any
            case backslash where p.count >= 2:
                p = p.dropFirst()
                guard let first = s.first, first == p.first else { return false }
                s = s.dropFirst(); p = p.dropFirst()
            default:
                guard let first = s.first, first == c else { return false }
                s = s.dropFirst(); p = p.dropFirst()
            }
        }
        return s.isEmpty
    }
}
