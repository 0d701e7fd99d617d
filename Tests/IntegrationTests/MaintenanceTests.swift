import CacheInvalidator
import Foundation
import Testing

/// What the running worker watches besides events: its triggers, and the size of the log.
@Suite("Maintenance: trigger drift and retention")
struct MaintenanceTests {
    @Test func missingTriggerIsReportedEveryCheckUntilFixed() throws {
        let harness = try Harness()
        harness.startWorker { $0.maintenanceIntervalNanoseconds = 200_000_000 }
        try harness.waitFor("the first trigger check") { $0.missingTriggers == 0 }
        try harness.sql("DROP TRIGGER cache_invalidation_trades_insert ON trades")
        try harness.waitFor("the missing trigger noticed") { $0.missingTriggers == 1 }
        try harness.waitFor("reported again at the next check", timeout: 5) { _ in
            harness.logs.captured.filter { $0.contains("trigger missing or disabled") && $0.contains("cache_invalidation_trades_insert missing on public.trades") }.count >= 2
        }
        let result = try MigrationTests.psql(harness.databaseURL, file: Harness.migrationsDirectory + "/0002_cache_invalidation.up.sql")
        #expect(result.status == 0, "\(result.output)")
        try harness.waitFor("the trigger back") { $0.missingTriggers == 0 }
        harness.stopWorker()
    }

    @Test func processedEventsPastRetentionArePrunedAndNothingElse() throws {
        let harness = try Harness()
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, status)
            SELECT g, '0xW', '0xT', 'buy', 'manual', 'confirmed' FROM generate_series(1, 12000) g
            """)
        harness.startWorker { $0.retentionSeconds = 0 }
        try harness.waitUntilProcessed()
        harness.stopWorker()
        // 12,000 processed two days ago, 100 processed just now, 50 two days old but never processed.
        try harness.sql("UPDATE cache_invalidation.events SET created_at = now() - interval '2 days', processed_at = now() - interval '2 days' WHERE id <= (SELECT min(id) + 11999 FROM cache_invalidation.events)")
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, status)
            SELECT g, '0xW', '0xT', 'buy', 'manual', 'confirmed' FROM generate_series(1, 100) g
            """)
        try harness.logByHand(#"INSERT INTO cache_invalidation.events (kind, payload, created_at) SELECT 'future_kind', '{}', now() - interval '2 days' FROM generate_series(1, 50)"#)
        // Acknowledgement records (0005) past retention go too; a recent one stays.
        try harness.sql("INSERT INTO cache_invalidation.acknowledged (at, min_id) VALUES (now() - interval '2 days', 1), (now() - interval '1 hour', 2)")
        harness.startWorker { $0.retentionSeconds = 86_400; $0.maintenanceIntervalNanoseconds = 200_000_000 }
        try harness.waitFor("pruning", timeout: 30) { $0.eventsPruned == 12_000 }
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events") == 150)
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE \(try harness.pending)") == 50, "unprocessed events are never pruned")
        #expect(harness.logs.captured.contains { $0.contains("pruned processed events past retention") })
        try harness.waitFor("old acknowledgement records pruned", timeout: 10) { _ in
            (try? harness.count("SELECT count(*) FROM cache_invalidation.acknowledged WHERE at < now() - interval '1 day'")) == 0
        }
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.acknowledged WHERE min_id = 2") == 1)
        harness.stopWorker()
    }
}
