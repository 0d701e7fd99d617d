import Foundation
import InvalidationCore
import Testing

/// Every row of the SPEC's rule table against real servers: the write as the bot makes it, and
/// then exactly the keys the table lists are gone, while every other key (other users', other
/// families) is still there.
@Suite("Rule table, end to end")
struct RuleTableTests {
    /// Two users with wallets, and every key family for both, plus keys no event may touch.
    static let setup = """
        INSERT INTO wallets (telegram_id, address) VALUES (101, '0xA1'), (202, '0xA2');
        INSERT INTO settings (telegram_id, slippage_bps, gas_price_gwei, auto_buy_enabled, auto_buy_amount_mon) VALUES (101, 50, 1.5, false, 10), (202, 75, 2, true, 5);
        INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_mon, amount_token, sell_id, tx_hash, status)
          VALUES (101, '0xA1', '0xT', 'buy', 'manual', 1, 100, NULL, '0xpend', 'pending');
        INSERT INTO transfers (telegram_id, from_address, to_address, token_address, amount, tx_hash, status)
          VALUES (101, '0xA1', '0xA2', NULL, 1, '0xtrpend', 'pending');
        """

    static let universe: [String] = {
        var keys: [String] = []
        for (tid, address) in [("101", "0xA1"), ("202", "0xA2")] {
            keys += ["user:\(tid)", "wallet_balance:\(address)", "portfolio:\(tid)", "main_menu:\(tid)", "user_settings:\(tid)",
                     "user_state:\(tid)", "tx:\(tid):0xh\(tid)", "tx:\(tid):0xpend", "tx:\(tid):0xtrpend", "temp_sell_data:\(tid):s1", "temp_sell_data:\(tid):s2"]
        }
        keys += ["wallet_balance:0xEXT", "wallet_balance:0xA3", "token_info:0xT", "mon_price_usd", "user:303", "main_menu:303", "portfolio:303"]
        return keys
    }()

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var write: String
        var events: Int
        var deleted: Set<String>
        var testDescription: String { name }
    }

    static let senderKeys: Set<String> = ["wallet_balance:0xA1", "portfolio:101", "main_menu:101"]

    static let cases: [Case] = [
        Case(name: "buy inserted confirmed", write: """
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_mon, tx_hash, status)
            VALUES (101, '0xA1', '0xT', 'buy', 'manual', 1, '0xh101', 'confirmed')
            """, events: 1, deleted: senderKeys.union(["user_state:101", "tx:101:0xh101"])),
        Case(name: "auto buy inserted failed, no tx hash", write: """
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_mon, status)
            VALUES (101, '0xA1', '0xT', 'buy', 'auto', 1, 'failed')
            """, events: 1, deleted: senderKeys.union(["user_state:101"])),
        Case(name: "sell with sell_id confirmed", write: """
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_token, sell_id, tx_hash, status)
            VALUES (101, '0xA1', '0xT', 'sell', 'manual', 5, 's1', '0xh101', 'confirmed')
            """, events: 1, deleted: senderKeys.union(["user_state:101", "tx:101:0xh101", "temp_sell_data:101:s1"])),
        Case(name: "pending trade emits nothing", write: """
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_mon, tx_hash, status)
            VALUES (101, '0xA1', '0xT', 'buy', 'manual', 1, '0xh101', 'pending')
            """, events: 0, deleted: []),
        Case(name: "pending trade updated to confirmed", write: "UPDATE trades SET status = 'confirmed' WHERE tx_hash = '0xpend'",
             events: 1, deleted: senderKeys.union(["user_state:101", "tx:101:0xpend"])),
        Case(name: "pending trade updated but still pending", write: "UPDATE trades SET amount_token = 7 WHERE tx_hash = '0xpend'",
             events: 0, deleted: []),
        Case(name: "transfer to a known wallet settles", write: "UPDATE transfers SET status = 'confirmed' WHERE tx_hash = '0xtrpend'",
             events: 1, deleted: senderKeys.union(["tx:101:0xtrpend", "wallet_balance:0xA2", "portfolio:202", "main_menu:202"])),
        Case(name: "transfer to an outside address settles", write: """
            INSERT INTO transfers (telegram_id, from_address, to_address, amount, tx_hash, status)
            VALUES (101, '0xA1', '0xEXT', 1, '0xh101', 'failed')
            """, events: 1, deleted: senderKeys.union(["tx:101:0xh101"])),
        Case(name: "settings inserted", write: "INSERT INTO settings (telegram_id, slippage_bps) VALUES (303, 10)",
             events: 1, deleted: ["main_menu:303"]),
        Case(name: "settings changed", write: "UPDATE settings SET slippage_bps = 99 WHERE telegram_id = 101",
             events: 1, deleted: ["user_settings:101", "main_menu:101"]),
        Case(name: "settings updated to the same values", write: "UPDATE settings SET slippage_bps = 50, updated_at = now() + interval '1 s' WHERE telegram_id = 101",
             events: 0, deleted: []),
        Case(name: "settings deleted", write: "DELETE FROM settings WHERE telegram_id = 202",
             events: 1, deleted: ["user_settings:202", "main_menu:202"]),
        Case(name: "wallet created", write: "INSERT INTO wallets (telegram_id, address) VALUES (303, '0xA3')",
             events: 1, deleted: ["user:303", "main_menu:303", "wallet_balance:0xA3"]),
        Case(name: "wallet address changed", write: "UPDATE wallets SET address = '0xA3' WHERE telegram_id = 101",
             events: 1, deleted: ["user:101", "wallet_balance:0xA1", "wallet_balance:0xA3", "portfolio:101", "main_menu:101"]),
        Case(name: "wallet updated to the same values", write: "UPDATE wallets SET address = address WHERE telegram_id = 101",
             events: 0, deleted: []),
        Case(name: "wallet deleted", write: "DELETE FROM wallets WHERE telegram_id = 202",
             events: 1, deleted: ["user:202", "user_settings:202", "wallet_balance:0xA2", "portfolio:202", "main_menu:202", "user_state:202",
                                  "temp_sell_data:202:s1", "temp_sell_data:202:s2"]),
        Case(name: "manual refresh", write: "SELECT cache_invalidation.request_refresh(101)",
             events: 1, deleted: ["wallet_balance:0xA1", "portfolio:101", "main_menu:101", "mon_price_usd"]),
        Case(name: "manual refresh of a user without wallet", write: "SELECT cache_invalidation.request_refresh(303)",
             events: 1, deleted: ["portfolio:303", "main_menu:303", "mon_price_usd"]),
    ]

    static func truncated(_ families: [String]) -> Set<String> {
        Set(universe.filter { key in families.contains { key.hasPrefix($0 + ":") } })
    }

    static let truncateCases: [Case] = [
        Case(name: "trades truncated", write: "TRUNCATE trades", events: 1,
             deleted: truncated(["wallet_balance", "portfolio", "main_menu", "user_state", "tx", "temp_sell_data"])),
        Case(name: "transfers truncated", write: "TRUNCATE transfers", events: 1,
             deleted: truncated(["wallet_balance", "portfolio", "main_menu", "tx"])),
        Case(name: "settings truncated", write: "TRUNCATE settings", events: 1,
             deleted: truncated(["user_settings", "main_menu"])),
        Case(name: "wallets truncated", write: "TRUNCATE wallets CASCADE", events: 1,
             deleted: truncated(["user", "main_menu", "wallet_balance", "portfolio", "user_settings", "user_state", "temp_sell_data"])),
    ]

    @Test(arguments: cases + truncateCases)
    func deletesExactlyTheListedKeys(_ testCase: Case) throws {
        try Self.check(testCase)
    }

    /// One row of the table; `through` gives the worker another way to the same database (a
    /// pooler in front of it) from the database's name; `cluster`, a Redis Cluster instead of the
    /// shared Redis (the keys then live on three masters).
    static func check(_ testCase: Case, through: ((String) -> String)? = nil, cluster: RedisClusterGroup? = nil) throws {
        let harness = try Harness()
        try harness.sql(Self.setup)
        harness.startWorker { config in
            if let through { config.databaseURL = through(harness.databaseName) }
            if let cluster { config.redis = try! RedisEndpoint.parse(cluster.url()) }
        }
        try harness.waitUntilProcessed()
        let keys = Self.universe.map { harness.prefix + $0 }
        // Keys of another prefix (another app on the same Redis) must survive even whole-family deletions.
        let outsider = "other-app:user:101"
        if let cluster {
            try cluster.set(keys + [outsider])
        } else {
            try harness.seed(Self.universe)
            _ = try harness.redis.command([Array("SET".utf8), Array(outsider.utf8), Array("x".utf8)])
        }
        let eventsBefore = try harness.eventCount

        try harness.sql(testCase.write)
        #expect(try harness.eventCount - eventsBefore == testCase.events, "events emitted by: \(testCase.write)")
        try harness.waitUntilProcessed()

        let gone = try cluster.map { cluster in Set(try Self.universe.filter { !(try cluster.exists(harness.prefix + $0)) }) }
            ?? harness.deleted(among: Self.universe)
        #expect(gone == testCase.deleted, "extra: \(gone.subtracting(testCase.deleted).sorted()) missing: \(testCase.deleted.subtracting(gone).sorted())")
        let outsiderThere = try cluster.map { try $0.exists(outsider) } ?? (try harness.redis.command([Array("EXISTS".utf8), Array(outsider.utf8)]) == .integer(1))
        #expect(outsiderThere)
        harness.stopWorker()
    }

    /// "Emits nothing" must hold even when other work goes through: the worker processed a later
    /// event, and the keys the silent write would have hit are still there.
    @Test func silentWritesStaySilentWhileOthersFlow() throws {
        let harness = try Harness()
        try harness.sql(Self.setup)
        harness.startWorker()
        try harness.waitUntilProcessed()
        try harness.seed(Self.universe)
        try harness.sql("UPDATE trades SET amount_mon = 2 WHERE tx_hash = '0xpend'")
        try harness.sql("UPDATE settings SET gas_price_gwei = 1.50, updated_at = now() WHERE telegram_id = 101")
        try harness.sql("SELECT cache_invalidation.request_refresh(303)")
        try harness.waitUntilProcessed()
        let gone = try harness.deleted(among: Self.universe)
        #expect(gone == ["portfolio:303", "main_menu:303", "mon_price_usd"])
        harness.stopWorker()
    }
}
