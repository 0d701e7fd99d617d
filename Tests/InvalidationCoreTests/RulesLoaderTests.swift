import Foundation
import Testing
@testable import InvalidationCore

/// A rules document listing every kind (with `[]` unless overridden).
private func rulesJSON(_ overrides: [String: String] = [:], omit: [String] = [], top: String = #""version": 1,"#) -> String {
    var entries: [String] = []
    for name in EventKind.allNames where !omit.contains(name) {
        entries.append("\"\(name)\": \(overrides[name] ?? "[]")")
    }
    for (name, value) in overrides.sorted(by: { $0.key < $1.key }) where EventKind(rawValue: name) == nil {
        entries.append("\"\(name)\": \(value)")
    }
    return "{ \(top) \"events\": { \(entries.joined(separator: ", ")) } }"
}

private func data(_ text: String) -> Data { Data(text.utf8) }

struct BadRules: Sendable, CustomTestStringConvertible {
    var name: String
    var data: Data
    var place: String
    /// Fragments the reason must contain.
    var reason: [String]
    var testDescription: String { name }
}

private let allKindsList = "trade_settled, transfer_settled, settings_changed, wallet_created, wallet_changed, wallet_deleted, manual_refresh, table_truncated"

private let badRules: [BadRules] = [
    BadRules(name: "not JSON", data: data("{events"), place: "", reason: ["is not valid JSON"]),
    BadRules(name: "empty data", data: Data(), place: "", reason: ["is not valid JSON"]),
    BadRules(name: "invalid UTF-8 bytes", data: Data([0xFF, 0xFE, 0x7B, 0x7D]), place: "", reason: ["is not valid JSON"]),
    BadRules(name: "invalid UTF-8 inside a string", data: data(#"{"events": {""#) + Data([0xC3, 0x28]) + data(#"": []}}"#),
             place: "", reason: ["is not valid JSON"]),
    BadRules(name: "top-level array", data: data("[]"), place: "", reason: ["the top level must be a JSON object with an \"events\" object"]),
    BadRules(name: "missing events", data: data(#"{"version": 1}"#), place: "events", reason: ["missing or not an object"]),
    BadRules(name: "events is a list", data: data(#"{"events": []}"#), place: "events", reason: ["missing or not an object"]),
    BadRules(name: "unknown top-level key", data: data(rulesJSON(top: #""rules": {},"#)), place: "rules",
             reason: ["unknown top-level key", "\"events\""]),
    BadRules(name: "unknown event kind (typo)", data: data(rulesJSON(["trade_setled": "[]"])), place: "events.trade_setled",
             reason: ["unknown event kind", "(known: \(allKindsList))"]),
    BadRules(name: "missing kinds are listed", data: data(rulesJSON(omit: ["manual_refresh", "wallet_changed"])), place: "events",
             reason: ["no rules for wallet_changed, manual_refresh;", "with [] to delete nothing on purpose"]),
    BadRules(name: "empty events object lists every kind", data: data(#"{"events": {}}"#), place: "events",
             reason: ["no rules for \(allKindsList);"]),
    BadRules(name: "kind is a string, not a list", data: data(rulesJSON(["settings_changed": #""user_settings:{telegram_id}""#])),
             place: "events.settings_changed", reason: ["must be a list of keys"]),
    BadRules(name: "kind is null", data: data(rulesJSON(["settings_changed": "null"])),
             place: "events.settings_changed", reason: ["must be a list of keys"]),
    BadRules(name: "entry is a number", data: data(rulesJSON(["settings_changed": #"["user_settings:{telegram_id}", 42]"#])),
             place: "events.settings_changed[1]", reason: ["must be a key string or an object with \"key\" or \"pattern\""]),
    BadRules(name: "entry is a list", data: data(rulesJSON(["settings_changed": #"[["user_settings:{telegram_id}"]]"#])),
             place: "events.settings_changed[0]", reason: ["must be a key string or an object"]),
    BadRules(name: "both key and pattern", data: data(rulesJSON(["wallet_deleted": #"["user:{telegram_id}", {"key": "user:{telegram_id}", "pattern": "user:*"}]"#])),
             place: "events.wallet_deleted[1]", reason: ["needs exactly one of \"key\" or \"pattern\""]),
    BadRules(name: "neither key nor pattern", data: data(rulesJSON(["wallet_deleted": #"[{"when": {"telegram_id": "1"}}]"#])),
             place: "events.wallet_deleted[0]", reason: ["needs exactly one of \"key\" or \"pattern\""]),
    BadRules(name: "key is not a string", data: data(rulesJSON(["wallet_deleted": #"[{"key": 5}]"#])),
             place: "events.wallet_deleted[0]", reason: ["needs exactly one of \"key\" or \"pattern\", as a string"]),
    BadRules(name: "unknown property", data: data(rulesJSON(["wallet_deleted": #"[{"key": "user:{telegram_id}", "unless": {}}]"#])),
             place: "events.wallet_deleted[0]", reason: ["unknown property \"unless\""]),
    BadRules(name: "unknown placeholder {wallet}", data: data(rulesJSON(["trade_settled": #"["portfolio:{telegram_id}", "wallet_balance:{wallet}"]"#])),
             place: "events.trade_settled[1]",
             reason: ["placeholder \"wallet\" is not a field of trade_settled (fields: telegram_id, wallet_address, tx_hash, side, sell_id, status, trade_id)"]),
    BadRules(name: "placeholder of another kind", data: data(rulesJSON(["settings_changed": #"["wallet_balance:{address}"]"#])),
             place: "events.settings_changed[0]", reason: ["placeholder \"address\" is not a field of settings_changed (fields: telegram_id)"]),
    BadRules(name: "placeholder in a pattern is checked too", data: data(rulesJSON(["wallet_deleted": #"[{"pattern": "temp_sell_data:{tid}:*"}]"#])),
             place: "events.wallet_deleted[0]", reason: ["placeholder \"tid\" is not a field of wallet_deleted"]),
    BadRules(name: "unclosed { at the end", data: data(rulesJSON(["settings_changed": #"["user_settings:{"]"#])),
             place: "events.settings_changed[0]", reason: ["unclosed \"{\""]),
    BadRules(name: "unclosed placeholder", data: data(rulesJSON(["settings_changed": #"["user_settings:{telegram_id"]"#])),
             place: "events.settings_changed[0]", reason: ["unclosed placeholder"]),
    BadRules(name: "stray }", data: data(rulesJSON(["settings_changed": #"["user_settings:}"]"#])),
             place: "events.settings_changed[0]", reason: ["stray \"}\""]),
    BadRules(name: "upper-case placeholder {Bad}", data: data(rulesJSON(["settings_changed": #"["user_settings:{Bad}"]"#])),
             place: "events.settings_changed[0]", reason: ["placeholder {Bad}", "is not a field name"]),
    BadRules(name: "empty placeholder {}", data: data(rulesJSON(["settings_changed": #"["user_settings:{}"]"#])),
             place: "events.settings_changed[0]", reason: ["{}"]),
    BadRules(name: "empty key", data: data(rulesJSON(["settings_changed": #"[""]"#])),
             place: "events.settings_changed[0]", reason: ["empty key template"]),
    BadRules(name: "exact key with *", data: data(rulesJSON(["wallet_deleted": #"["temp_sell_data:{telegram_id}:*"]"#])),
             place: "events.wallet_deleted[0]", reason: ["contains a wildcard", "{\"pattern\": ...}"]),
    BadRules(name: "exact key object with ?", data: data(rulesJSON(["wallet_deleted": #"[{"key": "user:?"}]"#])),
             place: "events.wallet_deleted[0]", reason: ["contains a wildcard"]),
    BadRules(name: "pattern without wildcard", data: data(rulesJSON(["wallet_deleted": #"[{"pattern": "user:{telegram_id}"}]"#])),
             place: "events.wallet_deleted[0]", reason: ["has no wildcard", "use \"key\""]),
    // A wildcard that Swift groups with a combining mark into one Character is still a wildcard.
    BadRules(name: "exact key with * before a combining mark", data: data(rulesJSON(["wallet_deleted": "[\"temp_sell_data:{telegram_id}:*\u{301}\"]"])),
             place: "events.wallet_deleted[0]", reason: ["contains a wildcard"]),
    BadRules(name: "when with a number", data: data(rulesJSON(["trade_settled": #"[{"key": "temp_sell_data:{telegram_id}:{sell_id}", "when": {"side": 1}}]"#])),
             place: "events.trade_settled[0]", reason: ["when.side must be a string or a non-empty list of strings"]),
    BadRules(name: "when with an empty list", data: data(rulesJSON(["trade_settled": #"[{"key": "user_state:{telegram_id}", "when": {"side": []}}]"#])),
             place: "events.trade_settled[0]", reason: ["when.side must be a string or a non-empty list of strings"]),
    BadRules(name: "when with a mixed list", data: data(rulesJSON(["trade_settled": #"[{"key": "user_state:{telegram_id}", "when": {"side": ["sell", null]}}]"#])),
             place: "events.trade_settled[0]", reason: ["when.side must be a string or a non-empty list of strings"]),
    BadRules(name: "when is not an object", data: data(rulesJSON(["trade_settled": #"[{"key": "user_state:{telegram_id}", "when": "side=sell"}]"#])),
             place: "events.trade_settled[0]", reason: ["\"when\" must map field names to a value or a list of values"]),
    BadRules(name: "when names an unknown field", data: data(rulesJSON(["trade_settled": #"[{"key": "user_state:{telegram_id}", "when": {"sid": "sell"}}]"#])),
             place: "events.trade_settled[0]", reason: ["when-field \"sid\" is not a field of trade_settled"]),
    BadRules(name: "requires is a string", data: data(rulesJSON(["transfer_settled": #"[{"key": "wallet_balance:{to_address}", "requires": "receiver_telegram_id"}]"#])),
             place: "events.transfer_settled[0]", reason: ["\"requires\" must be a list of field names"]),
    BadRules(name: "requires holds a number", data: data(rulesJSON(["transfer_settled": #"[{"key": "wallet_balance:{to_address}", "requires": [1]}]"#])),
             place: "events.transfer_settled[0]", reason: ["\"requires\" must be a list of field names"]),
    BadRules(name: "requires names an unknown field", data: data(rulesJSON(["transfer_settled": #"[{"key": "wallet_balance:{to_address}", "requires": ["receiver"]}]"#])),
             place: "events.transfer_settled[0]", reason: ["required field \"receiver\" is not a field of transfer_settled"]),
    BadRules(name: "version 2", data: data(rulesJSON(top: #""version": 2,"#)), place: "version",
             reason: ["unsupported rules version 2", "this worker reads version 1"]),
    BadRules(name: "version as a string", data: data(rulesJSON(top: #""version": "1","#)), place: "version", reason: ["unsupported rules version"]),
    BadRules(name: "2 MB file", data: data(rulesJSON() + String(repeating: " ", count: 2 * 1024 * 1024 - rulesJSON().utf8.count)),
             place: "", reason: ["is 2097152 bytes; a rules file is at most 1048576 bytes"]),
]

@Suite("RulesLoader refuses bad files with the place and the reason")
struct RulesLoaderErrorTests {
    @Test(arguments: badRules)
    func refused(_ bad: BadRules) {
        let error = #expect(throws: RulesError.self) { try RulesLoader.parse(bad.data, source: "ops/rules.json") }
        guard let error else { return }
        #expect(error.source == "ops/rules.json")
        #expect(error.place == bad.place)
        for fragment in bad.reason {
            #expect(error.reason.contains(fragment), "reason \(error.reason.debugDescription) lacks \(fragment.debugDescription)")
        }
        let expectedStart = bad.place.isEmpty ? "ops/rules.json: " : "ops/rules.json: \(bad.place): "
        #expect(error.description == expectedStart + error.reason)
    }

    @Test func loadNamesThePathOfABadFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("rules-\(UInt64.random(in: 0...UInt64.max)).json")
        try Data(rulesJSON(["settings_changed": #"["user_settings:{wallet}"]"#]).utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let error = #expect(throws: RulesError.self) { try RulesLoader.load(path: url.path) }
        #expect(error?.description.hasPrefix("\(url.path): events.settings_changed[0]: placeholder \"wallet\"") == true)
    }

    @Test func versionMustBeExactlyTheInteger1() {
        for version in ["1.5", "true", "1.9", "1.0", "\"1\""] {
            #expect(throws: RulesError.self, "version \(version)") {
                try RulesLoader.parse(Data(rulesJSON(top: "\"version\": \(version),").utf8), source: "r.json")
            }
        }
    }
}

@Suite("RulesLoader accepts valid custom files")
struct RulesLoaderValidTests {
    private func load(_ overrides: [String: String], top: String = "") throws -> RuleSet {
        try RulesLoader.parse(Data(rulesJSON(overrides, top: top).utf8), source: "custom.json")
    }

    @Test func emptyListDeletesNothing() throws {
        let rules = try load([:])
        for kind in EventKind.allCases {
            #expect(rules.rules[kind] == [])
        }
        let plan = rules.plan(for: Fixture.event(.tradeSettled, ["telegram_id": "1", "wallet_address": "w", "side": "sell", "sell_id": "s"]), prefix: "area51:")
        #expect(plan.isEmpty)
    }

    @Test func versionAndCommentAreOptional() throws {
        let rules = try load(["settings_changed": #"["user_settings:{telegram_id}"]"#], top: #""comment": ["anything", 1],"#)
        #expect(rules.plan(for: Fixture.event(.settingsChanged, ["telegram_id": "3"]), prefix: "").keys == ["user_settings:3"])
    }

    /// The wildcard check reads scalars: a `*` before a combining mark still makes a pattern.
    @Test func aWildcardBeforeACombiningMarkMakesAPattern() throws {
        let rules = try load(["wallet_deleted": "[{\"pattern\": \"temp_sell_data:{telegram_id}:*\u{301}\"}]"])
        #expect(rules.deletesByPattern(.walletDeleted))
    }

    @Test func doubledBracesRenderLiterally() throws {
        let rules = try load(["settings_changed": #"["literal:{{{telegram_id}}}", "x}}y{{z", "{{{{"]"#])
        let plan = rules.plan(for: Fixture.event(.settingsChanged, ["telegram_id": "42"]), prefix: "area51:")
        #expect(plan.keys == ["area51:literal:{42}", "area51:x}y{z", "area51:{{"])
    }

    @Test func whenAndRequiresSelectRules() throws {
        let rules = try load(["trade_settled": #"""
            [ {"key": "tx:{telegram_id}:{tx_hash}", "when": {"status": ["confirmed", "failed"], "side": "buy"}, "requires": ["wallet_address"]},
              {"pattern": "temp_sell_data:{telegram_id}:[a-z]*", "requires": []} ]
            """#])
        func keys(_ fields: [String: String]) -> [String] {
            rules.plan(for: Fixture.event(.tradeSettled, fields), prefix: "").keys
        }
        let base = ["telegram_id": "1", "tx_hash": "h", "status": "failed", "side": "buy", "wallet_address": "w"]
        #expect(keys(base) == ["tx:1:h"])
        #expect(keys(base.merging(["status": "pending"]) { $1 }) == [])
        #expect(keys(base.merging(["side": "sell"]) { $1 }) == [])
        #expect(keys(base.filter { $0.key != "side" }) == [])
        #expect(keys(base.filter { $0.key != "wallet_address" }) == [])
        #expect(rules.plan(for: Fixture.event(.tradeSettled, base), prefix: "").patterns == ["temp_sell_data:1:[a-z]*"])
    }

    @Test func unicodeKeysAreAllowed() throws {
        let rules = try load(["settings_changed": #"["réglages🚀:{telegram_id}"]"#])
        #expect(rules.plan(for: Fixture.event(.settingsChanged, ["telegram_id": "7"]), prefix: "").keys == ["réglages🚀:7"])
    }

    @Test func fileOfExactlyTheLimitIsAccepted() throws {
        let text = rulesJSON()
        let padded = Data((text + String(repeating: " ", count: RulesLoader.maximumFileBytes - text.utf8.count)).utf8)
        #expect(padded.count == 1 << 20)
        #expect(try RulesLoader.parse(padded, source: "big.json").rules.count == EventKind.allCases.count)
    }
}
