import CacheInvalidator
import Foundation
import Testing

/// `cache-invalidator replay`: after Redis came back from an old snapshot, the keys of a range of
/// already processed events are deleted again.
@Suite("replay")
struct ReplayTests {
    static func env(_ harness: Harness) -> [String: String] {
        ["DATABASE_URL": harness.databaseURL, "REDIS_URL": harness.servers.redisURL, "KEY_PREFIX": harness.prefix]
    }

    @Test func replaysARangeOfProcessedEvents() throws {
        let harness = try Harness()
        for i in 1...5 { try harness.sql(DeliveryTests.settledTrade(40 + i, "0xr\(i)")) }
        harness.startWorker()
        try harness.waitUntilProcessed()
        harness.stopWorker()
        let ids = try harness.sql("SELECT id FROM cache_invalidation.events ORDER BY id").rows.map { $0[0]! }
        // Redis "restored from a snapshot": the stale keys are back.
        let keys = (1...5).map { "tx:\(40 + $0):0xr\($0)" }
        try harness.seed(keys)

        let dry = try ProcessTests.run(["replay", "--from-id", ids[1], "--to-id", ids[3], "--dry-run"], environment: Self.env(harness))
        #expect(dry.status == 0, "\(dry.output)")
        #expect(dry.output.contains("key \"\(harness.prefix)tx:42:0xr2\"") && dry.output.contains("key \"\(harness.prefix)tx:44:0xr4\""), "\(dry.output)")
        #expect(!dry.output.contains("tx:41:0xr1") && !dry.output.contains("tx:45:0xr5"))
        #expect(dry.output.contains("dry run: 3 events (ids \(ids[1])-\(ids[3])) would delete 15 keys and scan 0 patterns"), "\(dry.output)")
        #expect(try harness.deleted(among: keys).isEmpty, "a dry run deletes nothing")

        let real = try ProcessTests.run(["replay", "--from-id", ids[1], "--to-id", ids[3]], environment: Self.env(harness))
        #expect(real.status == 0, "\(real.output)")
        #expect(real.output.contains("replayed 3 events (ids \(ids[1])-\(ids[3])): 15 keys deleted (3 existed)"), "\(real.output)")
        #expect(try harness.deleted(among: keys) == ["tx:42:0xr2", "tx:43:0xr3", "tx:44:0xr4"])

        let since = try ProcessTests.run(["replay", "--since", "1h"], environment: Self.env(harness))
        #expect(since.status == 0 && since.output.contains("replayed 5 events") && since.output.contains(", since 20"), "\(since.output)")
        #expect(try harness.deleted(among: keys).count == 5)
        #expect(try harness.pendingCount == 0)
    }

    /// Redis restored to a snapshot taken at T loses the deletions performed after T, including
    /// those of events created before T but processed after it (a worker that was behind). With
    /// the pending queue (0005) processed_at is no longer written: the worker's acknowledgement
    /// records tell which ids were acknowledged when.
    @Test func sinceCoversEventsProcessedAfterTheCutoff() throws {
        let harness = try Harness()
        try harness.sql(DeliveryTests.settledTrade(52, "0xold"))
        try harness.sql(DeliveryTests.settledTrade(51, "0xlate"))
        try harness.sql(DeliveryTests.settledTrade(53, "0xnew"))
        // 0xold created 3 hours ago and processed then; 0xlate created 2 hours ago, processed a
        // minute ago; 0xnew created 2 hours ago, still pending.
        try harness.sql("UPDATE cache_invalidation.events SET created_at = now() - interval '2 hours'")
        try harness.sql("UPDATE cache_invalidation.events SET created_at = now() - interval '3 hours' WHERE payload->>'tx_hash' = '0xold'")
        try harness.sql("""
            WITH acknowledged AS (DELETE FROM cache_invalidation.pending WHERE id IN (
                SELECT id FROM cache_invalidation.events WHERE payload->>'tx_hash' IN ('0xold', '0xlate')))
            INSERT INTO cache_invalidation.acknowledged (at, min_id)
            SELECT now() - interval '3 hours', id FROM cache_invalidation.events WHERE payload->>'tx_hash' = '0xold'
            UNION ALL
            SELECT now() - interval '1 minute', id FROM cache_invalidation.events WHERE payload->>'tx_hash' = '0xlate'
            """)
        let dry = try ProcessTests.run(["replay", "--since", "30m", "--dry-run"], environment: Self.env(harness))
        #expect(dry.output.contains("tx:51:0xlate") && dry.output.contains("tx:53:0xnew") && !dry.output.contains("tx:52:0xold"), "\(dry.output)")
        #expect(dry.output.contains("dry run: 2 events"), "\(dry.output)")
        // Without any record since the cutoff, only what is still pending (or newer) is replayed.
        try harness.sql("DELETE FROM cache_invalidation.acknowledged WHERE at > now() - interval '1 hour'")
        let none = try ProcessTests.run(["replay", "--since", "30m", "--dry-run"], environment: Self.env(harness))
        #expect(none.output.contains("tx:53:0xnew") && !none.output.contains("0xlate") && none.output.contains("dry run: 1 events"), "\(none.output)")
    }

    /// The same before 0005 (a worker on an older schema): processed_at tells.
    @Test func sinceCoversEventsProcessedAfterTheCutoffBeforeThePendingQueue() throws {
        let harness = try Harness(migrate: false)
        _ = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger()).up(to: 4)
        try harness.sql(DeliveryTests.settledTrade(51, "0xlate"))
        try harness.sql("UPDATE cache_invalidation.events SET created_at = now() - interval '2 hours', processed_at = now() - interval '1 minute'")
        try harness.sql(DeliveryTests.settledTrade(52, "0xold"))
        try harness.sql("UPDATE cache_invalidation.events SET created_at = now() - interval '3 hours', processed_at = now() - interval '3 hours' WHERE payload->>'tx_hash' = '0xold'")
        let dry = try ProcessTests.run(["replay", "--since", "30m", "--dry-run"], environment: Self.env(harness))
        #expect(dry.output.contains("tx:51:0xlate") && !dry.output.contains("tx:52:0xold"), "\(dry.output)")
        #expect(dry.output.contains("dry run: 1 events"), "\(dry.output)")
    }

    /// A value with a newline cannot forge an extra line of the dry-run listing.
    @Test func dryRunListingEscapesValues() throws {
        let harness = try Harness()
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            VALUES (53, E'0xA\nkey area51:user:1', '0xT', 'buy', 'manual', '0xn', 'confirmed')
            """)
        let dry = try ProcessTests.run(["replay", "--from-id", "1", "--dry-run"], environment: Self.env(harness))
        #expect(dry.output.contains(#"wallet_balance:0xA\nkey area51:user:1""#), "\(dry.output)")
        #expect(!dry.output.split(separator: "\n").contains { $0.hasPrefix("key area51:user:1") })
    }

    @Test func refusesAMissingOrBackwardRange() throws {
        let none = try ProcessTests.run(["replay"], environment: ["DATABASE_URL": "postgres://h/db"])
        #expect(none.status != 0 && none.output.contains("give a range: --since TIME or --from-id N"), "\(none.output)")
        let backward = try ProcessTests.run(["replay", "--from-id", "10", "--to-id", "5"], environment: ["DATABASE_URL": "postgres://h/db"])
        #expect(backward.status != 0 && backward.output.contains("--to-id 5 is below --from-id 10"), "\(backward.output)")
        let harness = try Harness()
        let badTime = try ProcessTests.run(["replay", "--since", "last tuesday-ish"], environment: Self.env(harness))
        #expect(badTime.status == 1 && badTime.output.contains("22007"), "\(badTime.output)")
    }
}
