import Foundation
import Testing

/// A value in a row can never widen a deletion: keys travel as binary-safe arguments, and
/// pattern deletions escape the value's glob characters, checked against Redis's real matcher.
@Suite("Hostile values against real Redis")
struct HostileValueTests {
    static let hostile: [String] = [
        "0x*", "0x?", "0x[a-z]", "0x[", "0x\\", "0xA1\nDEL area51:user:202", "0x" + String(repeating: "a", count: 10_240),
        "0x🚀ü\u{202E}", "0x A1", "0x\"quoted\"", "*", "?",
    ]

    static let bystanders = ["wallet_balance:0xA1", "wallet_balance:0xab", "wallet_balance:0x", "temp_sell_data:101:s1",
                             "temp_sell_data:101:sx", "portfolio:202", "main_menu:202", "user:202", "temp_sell_data:1010:x"]

    @Test(arguments: hostile)
    func exactKeysCarryTheValueVerbatim(_ value: String) throws {
        let harness = try Harness()
        harness.startWorker()
        let targets = ["wallet_balance:\(value)", "temp_sell_data:101:\(value)", "tx:101:\(value)"]
        try harness.seed(Self.bystanders + targets)
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_token, sell_id, tx_hash, status)
            VALUES (101, $1, '0xT', 'sell', 'manual', 1, $1, $1, 'confirmed')
            """, [value])
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: targets) == Set(targets))
        #expect(try harness.deleted(among: Self.bystanders).isEmpty)
        harness.stopWorker()
    }

    /// A custom rule that scans with a value in its pattern: the value's `*` or `[` matches only itself.
    @Test(arguments: ["0x*", "0x?", "0x[a-z]", "0x\\", "0x]"])
    func patternValuesAreEscapedForScan(_ value: String) throws {
        let harness = try Harness()
        let rulesPath = try writeRules(overriding: #""trade_settled": [ { "pattern": "wallet_balance:{wallet_address}*" } ]"#)
        harness.startWorker { config in config.rules = try! RulesLoaderShim.load(rulesPath) }
        let matching = ["wallet_balance:\(value)", "wallet_balance:\(value)-second"]
        try harness.seed(Self.bystanders + matching)
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, status)
            VALUES (101, $1, '0xT', 'buy', 'manual', 'confirmed')
            """, [value])
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: matching) == Set(matching))
        #expect(try harness.deleted(among: Self.bystanders).isEmpty)
        harness.stopWorker()
    }

    /// `temp_sell_data:101:*` (wallet deleted) must not reach user 1010's sells.
    @Test func userPatternStopsAtTheSeparator() throws {
        let harness = try Harness()
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (101, '0xA1')")
        harness.startWorker()
        try harness.waitUntilProcessed()
        try harness.seed(["temp_sell_data:101:a", "temp_sell_data:101:b*", "temp_sell_data:1010:x", "temp_sell_data:10:y"])
        try harness.sql("DELETE FROM wallets WHERE telegram_id = 101")
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["temp_sell_data:101:a", "temp_sell_data:101:b*", "temp_sell_data:1010:x", "temp_sell_data:10:y"])
                == ["temp_sell_data:101:a", "temp_sell_data:101:b*"])
        harness.stopWorker()
    }
}

/// Writes a rules file: the defaults with one event kind's list replaced.
func writeRules(overriding replacement: String) throws -> String {
    let defaults = try String(contentsOfFile: Harness.repositoryRoot + "/rules/default-rules.json", encoding: .utf8)
    let kind = String(replacement.split(separator: ":")[0].trimmingCharacters(in: .whitespaces))
    var lines = defaults.components(separatedBy: "\n")
    guard let start = lines.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix(kind + ": [") }),
          let end = lines[start...].firstIndex(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix("]") }) else {
        throw Harness.HarnessError.timeout
    }
    let trailingComma = lines[end].trimmingCharacters(in: .whitespaces).hasSuffix(",")
    lines.replaceSubrange(start...end, with: ["    " + replacement + (trailingComma ? "," : "")])
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("rules-\(UUID().uuidString).json").path
    try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

import InvalidationCore

enum RulesLoaderShim {
    static func load(_ path: String) throws -> RuleSet { try RulesLoader.load(path: path) }
}
