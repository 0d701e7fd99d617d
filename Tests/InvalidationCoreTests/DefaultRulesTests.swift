import Foundation
import Testing
@testable import InvalidationCore

/// One row of the SPEC's "Events and the keys each deletes" table, made concrete.
struct SpecCase: Sendable, CustomTestStringConvertible {
    var name: String
    var kind: EventKind
    var fields: [String: String]
    var keys: [String]
    var patterns: [String] = []
    var testDescription: String { name }
}

private let tid = "424242"
private let wallet = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
private let otherWallet = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
private let txHash = "0x88df016429689c079f3b2f6ad39fa052532c56795b733da78a91ebe6a713944b"

private let specCases: [SpecCase] = [
    SpecCase(
        name: "trade_settled: confirmed manual buy with tx_hash",
        kind: .tradeSettled,
        fields: ["telegram_id": tid, "wallet_address": wallet, "tx_hash": txHash, "side": "buy", "status": "confirmed", "trade_id": "17"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)",
               "area51:user_state:\(tid)", "area51:tx:\(tid):\(txHash)"]),
    SpecCase(
        name: "trade_settled: sell with sell_id also drops the temp sell screen",
        kind: .tradeSettled,
        fields: ["telegram_id": tid, "wallet_address": wallet, "tx_hash": txHash, "side": "sell", "sell_id": "s-9f3a", "status": "failed", "trade_id": "18"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)",
               "area51:user_state:\(tid)", "area51:tx:\(tid):\(txHash)", "area51:temp_sell_data:\(tid):s-9f3a"]),
    SpecCase(
        name: "trade_settled: a buy carrying a sell_id does not touch temp_sell_data (sells only)",
        kind: .tradeSettled,
        fields: ["telegram_id": tid, "wallet_address": wallet, "tx_hash": txHash, "side": "buy", "sell_id": "s-9f3a", "status": "confirmed"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)",
               "area51:user_state:\(tid)", "area51:tx:\(tid):\(txHash)"]),
    SpecCase(
        name: "trade_settled: failed sell without tx_hash has no tx key",
        kind: .tradeSettled,
        fields: ["telegram_id": tid, "wallet_address": wallet, "side": "sell", "sell_id": "s-1", "status": "failed"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)",
               "area51:user_state:\(tid)", "area51:temp_sell_data:\(tid):s-1"]),
    SpecCase(
        name: "trade_settled: sell without sell_id has no temp_sell_data key",
        kind: .tradeSettled,
        fields: ["telegram_id": tid, "wallet_address": wallet, "tx_hash": txHash, "side": "sell", "status": "confirmed"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)",
               "area51:user_state:\(tid)", "area51:tx:\(tid):\(txHash)"]),
    SpecCase(
        name: "transfer_settled: receiver is a known wallet",
        kind: .transferSettled,
        fields: ["telegram_id": tid, "from_address": wallet, "to_address": otherWallet, "tx_hash": txHash,
                 "receiver_telegram_id": "777", "status": "confirmed", "transfer_id": "5"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)", "area51:tx:\(tid):\(txHash)",
               "area51:wallet_balance:\(otherWallet)", "area51:portfolio:777", "area51:main_menu:777"]),
    SpecCase(
        name: "transfer_settled: external receiver (no receiver keys, no wallet_balance of to_address)",
        kind: .transferSettled,
        fields: ["telegram_id": tid, "from_address": wallet, "to_address": otherWallet, "tx_hash": txHash, "status": "confirmed", "transfer_id": "6"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)", "area51:tx:\(tid):\(txHash)"]),
    SpecCase(
        name: "transfer_settled: failed without tx_hash",
        kind: .transferSettled,
        fields: ["telegram_id": tid, "from_address": wallet, "to_address": otherWallet, "status": "failed"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)"]),
    SpecCase(
        name: "transfer_settled: transfer to one's own wallet lists each key once",
        kind: .transferSettled,
        fields: ["telegram_id": tid, "from_address": wallet, "to_address": wallet, "tx_hash": txHash, "receiver_telegram_id": tid, "status": "confirmed"],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)", "area51:tx:\(tid):\(txHash)"]),
    SpecCase(
        name: "settings_changed",
        kind: .settingsChanged,
        fields: ["telegram_id": tid],
        keys: ["area51:user_settings:\(tid)", "area51:main_menu:\(tid)"]),
    SpecCase(
        name: "wallet_created",
        kind: .walletCreated,
        fields: ["telegram_id": tid, "address": wallet],
        keys: ["area51:user:\(tid)", "area51:main_menu:\(tid)", "area51:wallet_balance:\(wallet)"]),
    SpecCase(
        name: "wallet_changed: old and new address",
        kind: .walletChanged,
        fields: ["telegram_id": tid, "old_address": wallet, "address": otherWallet],
        keys: ["area51:user:\(tid)", "area51:wallet_balance:\(wallet)", "area51:wallet_balance:\(otherWallet)",
               "area51:portfolio:\(tid)", "area51:main_menu:\(tid)"]),
    SpecCase(
        name: "wallet_deleted: every temp_sell_data of that user by pattern",
        kind: .walletDeleted,
        fields: ["telegram_id": "42", "address": wallet],
        keys: ["area51:user:42", "area51:user_settings:42", "area51:wallet_balance:\(wallet)",
               "area51:portfolio:42", "area51:main_menu:42", "area51:user_state:42"],
        patterns: ["area51:temp_sell_data:42:*"]),
    SpecCase(
        name: "manual_refresh with the user's wallet",
        kind: .manualRefresh,
        fields: ["telegram_id": tid, "wallet_address": wallet],
        keys: ["area51:wallet_balance:\(wallet)", "area51:portfolio:\(tid)", "area51:main_menu:\(tid)", "area51:mon_price_usd"]),
    SpecCase(
        name: "manual_refresh for a user without a wallet still refreshes the price",
        kind: .manualRefresh,
        fields: ["telegram_id": tid],
        keys: ["area51:portfolio:\(tid)", "area51:main_menu:\(tid)", "area51:mon_price_usd"]),
    SpecCase(
        name: "table_truncated: trades",
        kind: .tableTruncated, fields: ["table": "trades"], keys: [],
        patterns: ["area51:wallet_balance:*", "area51:portfolio:*", "area51:main_menu:*", "area51:user_state:*",
                   "area51:tx:*", "area51:temp_sell_data:*"]),
    SpecCase(
        name: "table_truncated: transfers",
        kind: .tableTruncated, fields: ["table": "transfers"], keys: [],
        patterns: ["area51:wallet_balance:*", "area51:portfolio:*", "area51:main_menu:*", "area51:tx:*"]),
    SpecCase(
        name: "table_truncated: settings",
        kind: .tableTruncated, fields: ["table": "settings"], keys: [],
        patterns: ["area51:user_settings:*", "area51:main_menu:*"]),
    SpecCase(
        name: "table_truncated: wallets",
        kind: .tableTruncated, fields: ["table": "wallets"], keys: [],
        patterns: ["area51:user:*", "area51:user_settings:*", "area51:wallet_balance:*", "area51:portfolio:*",
                   "area51:main_menu:*", "area51:user_state:*", "area51:temp_sell_data:*"]),
    SpecCase(name: "table_truncated: unknown table deletes nothing", kind: .tableTruncated, fields: ["table": "users"], keys: []),
    SpecCase(name: "table_truncated: table name differing in case deletes nothing", kind: .tableTruncated, fields: ["table": "Trades"], keys: []),
    SpecCase(name: "table_truncated: no table field deletes nothing", kind: .tableTruncated, fields: [:], keys: []),
]

@Suite("Default rules implement the SPEC table")
struct DefaultRulesTests {
    @Test(arguments: specCases)
    func planMatchesSpec(_ spec: SpecCase) {
        let plan = Fixture.defaultPlan(spec.kind, spec.fields)
        // Sorted comparison: order-insensitive, but a duplicate on either side fails.
        #expect(plan.keys.sorted() == spec.keys.sorted())
        #expect(plan.patterns.sorted() == spec.patterns.sorted())
        #expect(Set(plan.keys).count == plan.keys.count, "duplicate keys in \(plan.keys)")
        #expect(Set(plan.patterns).count == plan.patterns.count, "duplicate patterns in \(plan.patterns)")
        #expect(plan.isEmpty == (spec.keys.isEmpty && spec.patterns.isEmpty))
    }

    @Test("Every event kind has default rules", arguments: EventKind.allCases)
    func everyKindHasRules(_ kind: EventKind) throws {
        let list = try #require(RuleSet.defaults().rules[kind])
        #expect(!list.isEmpty)
    }

    /// SPEC: a truncate deletes "every key of the families that table's events touch". Derive the
    /// families from the per-row events' plans and compare with the truncate patterns.
    @Test(arguments: [
        ("trades", [EventKind.tradeSettled]),
        ("transfers", [.transferSettled]),
        ("settings", [.settingsChanged]),
        ("wallets", [.walletCreated, .walletChanged, .walletDeleted]),
    ])
    func truncationCoversTheFamiliesOfTheTablesEvents(table: String, kinds: [EventKind]) {
        func family(_ key: String) -> String {
            let relative = key.dropFirst(Fixture.prefix.count)
            return String(relative.prefix { $0 != ":" })
        }
        var families: Set<String> = []
        for spec in specCases where kinds.contains(spec.kind) {
            let plan = Fixture.defaultPlan(spec.kind, spec.fields)
            families.formUnion((plan.keys + plan.patterns).map(family))
        }
        let truncate = Fixture.defaultPlan(.tableTruncated, ["table": table])
        #expect(truncate.keys.isEmpty)
        #expect(Set(truncate.patterns) == Set(families.map { "area51:\($0):*" }))
    }

    @Test func batchPlanMergesEventsWithoutDuplicates() {
        let rules = RuleSet.defaults()
        var plan = InvalidationPlan()
        rules.apply(Fixture.event(.settingsChanged, ["telegram_id": "1"]), prefix: "p:", to: &plan)
        rules.apply(Fixture.event(.walletCreated, ["telegram_id": "1", "address": "a"]), prefix: "p:", to: &plan)
        rules.apply(Fixture.event(.walletDeleted, ["telegram_id": "1", "address": "a"]), prefix: "p:", to: &plan)
        rules.apply(Fixture.event(.walletDeleted, ["telegram_id": "1", "address": "a"]), prefix: "p:", to: &plan)
        // First-seen order, each once.
        #expect(plan.keys == ["p:user_settings:1", "p:main_menu:1", "p:user:1", "p:wallet_balance:a", "p:portfolio:1", "p:user_state:1"])
        #expect(plan.patterns == ["p:temp_sell_data:1:*"])
    }

    @Test func prefixIsApplied() {
        let plan = Fixture.defaultPlan(.settingsChanged, ["telegram_id": "9"], prefix: "staging:bot:")
        #expect(plan.keys == ["staging:bot:user_settings:9", "staging:bot:main_menu:9"])
        let bare = Fixture.defaultPlan(.manualRefresh, ["telegram_id": "9"], prefix: "")
        #expect(bare.keys == ["portfolio:9", "main_menu:9", "mon_price_usd"])
    }

    @Test func eventWithoutItsUserDeletesOnlyUserlessKeys() {
        // A row missing telegram_id must not render "portfolio:" or "temp_sell_data::*".
        let deleted = Fixture.defaultPlan(.walletDeleted, ["address": wallet])
        #expect(deleted.keys == ["area51:wallet_balance:\(wallet)"])
        #expect(deleted.patterns.isEmpty)
        #expect(Fixture.defaultPlan(.settingsChanged, [:]).isEmpty)
    }
}

@Suite("Embedded default rules")
struct EmbeddedDefaultRulesTests {
    static let path = Fixture.repositoryRoot().appendingPathComponent("rules/default-rules.json").path

    @Test func embeddedTextEqualsShippedFile() throws {
        let file = try Data(contentsOf: URL(fileURLWithPath: Self.path))
        // A Swift multi-line raw literal drops the newline before its closing delimiter, so the
        // embedded text is the file without its single final newline (see scripts/embed-default-rules).
        #expect(file.last == UInt8(ascii: "\n"))
        #expect(Data(DefaultRules.json.utf8) + Data([UInt8(ascii: "\n")]) == file)
    }

    @Test func shippedFileLoadsToTheDefaults() throws {
        let loaded = try RulesLoader.load(path: Self.path)
        #expect(loaded == RuleSet.defaults())
        #expect(loaded.rules.count == EventKind.allCases.count)
    }

    @Test func unreadableFileNamesThePath() {
        let missing = "/nonexistent/dir/rules.json"
        let error = #expect(throws: RulesError.self) { try RulesLoader.load(path: missing) }
        #expect(error?.source == missing)
        #expect(error?.description.hasPrefix("/nonexistent/dir/rules.json: cannot be read") == true)
    }
}

@Suite("RuleSet.apply counts")
struct RuleApplyCountTests {
    /// The counts feed the per-event debug line; duplicates across events still count per event.
    @Test func countsWhatEachEventAskedFor() {
        let rules = RuleSet.defaults()
        var plan = InvalidationPlan()
        let sell = InvalidationEvent(id: 1, kind: .tradeSettled, fields: ["telegram_id": "42", "wallet_address": "0xa", "tx_hash": "0xh", "side": "sell", "sell_id": "s1"], startMicros: 0)
        let deleted = InvalidationEvent(id: 2, kind: .walletDeleted, fields: ["telegram_id": "42", "address": "0xa"], startMicros: 0)
        #expect(rules.apply(sell, prefix: "p:", to: &plan) == (keys: 6, patterns: 0))
        #expect(rules.apply(deleted, prefix: "p:", to: &plan) == (keys: 6, patterns: 1))
        // Shared keys (wallet_balance, portfolio, main_menu, user_state) are in the plan once.
        #expect(plan.keys.count == 8)
        #expect(plan.patterns == ["p:temp_sell_data:42:*"])
    }
}
