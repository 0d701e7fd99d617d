import CacheInvalidator
import Foundation
import InvalidationCore
import PostgresClient
import RedisClient
import Testing

/// Failures that open a connection but break its use, notifications that arrive mid-query, and
/// byte-level key identity: the cases a reviewer found, kept as regressions.
@Suite("Robustness")
struct RobustnessTests {
    /// A notification that arrives while the worker waits for its own query lands in libpq's
    /// buffer, not on the socket: it must still be handled at once, not at the next summary tick.
    @Test func notificationReceivedDuringAQueryIsNotLeftWaiting() throws {
        let harness = try Harness()
        harness.startWorker { $0.summaryIntervalNanoseconds = 120_000_000_000 }
        try harness.waitFor("connected") { $0.listening && $0.redisUp }
        try harness.sql(DeliveryTests.settledTrade(1, "0xfirst"))
        let firstID = try harness.sql("SELECT max(id) FROM cache_invalidation.events")[0, 0]!
        // Hold the first event's row so the worker's acknowledgement waits (well under its lock_timeout).
        let blocker = try PGConnection(conninfo: harness.databaseURL)
        try blocker.execute("BEGIN")
        try blocker.execute("SELECT id FROM cache_invalidation.events WHERE id = $1 FOR UPDATE", [firstID])
        // The worker races for the row; give it time to reach the blocked acknowledgement.
        usleep(300_000)
        try harness.seed(["tx:2:0xsecond"])
        try harness.sql(DeliveryTests.settledTrade(2, "0xsecond"))
        usleep(300_000)
        try blocker.execute("COMMIT")
        try harness.waitUntilProcessed(timeout: 5)
        #expect(try harness.deleted(among: ["tx:2:0xsecond"]) == ["tx:2:0xsecond"])
        #expect(harness.worker!.statistics.snapshot.postgresConnects == 1, "no reconnect was needed")
        harness.stopWorker()
    }

    /// Rows read only after the caller's own work leave the server blocked on a full socket
    /// buffer meanwhile, and that time counts against statement_timeout (the drain's premise for
    /// receiving them on a helper thread). Received concurrently, they all arrive however long the
    /// caller works.
    @Test func rowsReceivedConcurrentlyOutlastTheCallersWork() throws {
        let harness = try Harness(migrate: false)
        let connection = try PGConnection(conninfo: harness.databaseURL)
        try connection.execute("SET statement_timeout = '300ms'")
        try connection.prepare("big", "SELECT repeat('x', 1000000) FROM generate_series(1, 40)", parameterCount: 0)
        try connection.send(prepared: "big", [])
        usleep(1_500_000)
        do {
            let rows = try connection.receive()
            Issue.record("read after the work, \(rows.rows.count) rows arrived: the socket buffers held 40 MB?")
        } catch {
            #expect(error.sqlState == "57014", "expected a statement timeout, got \(error)")
        }
        try connection.send(prepared: "big", [])
        let pending = connection.receiveConcurrently()
        usleep(1_500_000)
        let rows = try pending.wait()
        #expect(rows.rows.count == 40)
        #expect(rows.rows.allSatisfy { $0[0]?.utf8.count == 1_000_000 })
    }

    /// A DBA's lock on the event log must not freeze the worker: its statements time out, and a
    /// stop request is honoured within seconds.
    @Test func lockedEventLogDoesNotFreezeShutdown() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("connected") { $0.listening && $0.redisUp }
        let dba = try PGConnection(conninfo: harness.databaseURL)
        try dba.execute("BEGIN")
        try dba.execute("LOCK TABLE cache_invalidation.events IN SHARE MODE")
        // The insert needs ROW EXCLUSIVE, which SHARE blocks: commit it from a thread of its own.
        let url = harness.databaseURL
        let writer = Thread { _ = try? PGConnection(conninfo: url).execute(DeliveryTests.settledTrade(3, "0xlocked")) }
        writer.start()
        usleep(500_000)
        let started = Date()
        harness.worker!.stop()
        #expect(harness.worker!.wait(seconds: 20), "the worker did not stop while the log was locked")
        #expect(Date().timeIntervalSince(started) < 20)
        try dba.execute("ROLLBACK")
    }

    /// Connecting works, the first command fails (a read-only replica): one error line and a
    /// growing backoff, not a reconnect and two log lines every 100 ms.
    @Test func readOnlyRedisBacksOffQuietlyAndRecovers() throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: port) }
        let admin = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        // A replica of a primary that does not exist: up, answering PING, refusing writes.
        _ = try admin.command(["REPLICAOF", "127.0.0.1", "1"].map { Array($0.utf8) })
        harness.startWorker { $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0") }
        try harness.sql(DeliveryTests.settledTrade(4, "0xro"))
        usleep(3_000_000)
        let stats = harness.worker!.statistics.snapshot
        #expect(stats.eventsProcessed == 0)
        #expect(try harness.pendingCount == 1)
        let errorLines = harness.logs.captured.filter { $0.contains("level=error") }
        #expect(errorLines.count == 1, "\(errorLines)")
        #expect(errorLines.first?.contains("redis rejected the deletions") == true)
        #expect(errorLines.first?.contains("READONLY") == true)
        // Backoff from 20 ms to the harness's 500 ms cap allows about a dozen attempts in 3 s;
        // without growth (reset on every successful connect) it would be over a hundred.
        #expect(stats.redisConnects < 25, "reconnected \(stats.redisConnects) times in 3 s")
        _ = try admin.command(["REPLICAOF", "NO", "ONE"].map { Array($0.utf8) })
        try harness.waitUntilProcessed()
        #expect(harness.logs.captured.contains { $0.contains("msg=\"redis connected\"") })
        harness.stopWorker()
    }

    /// A database without the migrations: one error line saying to apply them, then recovery
    /// as soon as they are.
    @Test func missingMigrationsAreReportedOnceAndRecovered() throws {
        let harness = try Harness(migrate: false)
        harness.startWorker()
        usleep(2_000_000)
        let errorLines = harness.logs.captured.filter { $0.contains("level=error") }
        #expect(errorLines.count == 1, "\(errorLines)")
        #expect(errorLines.first?.contains("apply the migrations") == true, "\(errorLines)")
        _ = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger()).up()
        try harness.seed(["tx:5:0xlate"])
        try harness.sql(DeliveryTests.settledTrade(5, "0xlate"))
        try harness.waitUntilProcessed(timeout: 30)
        #expect(try harness.deleted(among: ["tx:5:0xlate"]) == ["tx:5:0xlate"])
        harness.stopWorker()
    }

    /// Redis closes an idle connection (timeout, failover, a proxy): the next event reconnects at
    /// once, without an error line or a backoff.
    @Test func droppedIdleRedisConnectionReconnectsQuietly() throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: port) }
        harness.startWorker {
            $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0")
            // Production waits 30 s of uptime before a drop counts as routine; not a test's time.
            $0.immediateReconnectAfterUptimeNanoseconds = 0
        }
        try harness.sql(DeliveryTests.settledTrade(6, "0xwarm"))
        try harness.waitUntilProcessed()
        let admin = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        _ = try admin.command(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"].map { Array($0.utf8) })
        _ = try admin.command(["SET", "\(harness.prefix)tx:7:0xcold", "cached"].map { Array($0.utf8) })
        try harness.sql(DeliveryTests.settledTrade(7, "0xcold"))
        try harness.waitUntilProcessed()
        #expect(try admin.command(["EXISTS", "\(harness.prefix)tx:7:0xcold"].map { Array($0.utf8) }) == .integer(0))
        #expect(!harness.logs.captured.contains { $0.contains("level=error") }, "\(harness.logs.captured.filter { $0.contains("level=error") })")
        harness.stopWorker()
    }

    /// Two spellings of "café" (U+00E9, and e + U+0301) compare equal as Swift strings but are two
    /// keys in Redis: both must be deleted.
    @Test func canonicallyEquivalentKeysAreBothDeleted() throws {
        let harness = try Harness()
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (11, $1)", [composed])
        harness.startWorker()
        try harness.waitUntilProcessed()
        try harness.seed(["wallet_balance:\(composed)", "wallet_balance:\(decomposed)"])
        try harness.sql("UPDATE wallets SET address = $1 WHERE telegram_id = 11", [decomposed])
        try harness.waitUntilProcessed()
        let replies = try harness.redis.pipeline([composed, decomposed].map { [Array("EXISTS".utf8), Array((harness.prefix + "wallet_balance:" + $0).utf8)] })
        #expect(replies == [.integer(0), .integer(0)])
        harness.stopWorker()
    }

    /// A 100 kB address cannot be a cache key; the trade's other keys are still deleted.
    @Test func oversizedValueCostsOnlyItsOwnKey() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.seed(["portfolio:12", "main_menu:12", "user_state:12", "tx:12:0xbig"])
        let huge = "0x" + String(repeating: "f", count: 100_000)
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            VALUES (12, $1, '0xT', 'buy', 'manual', '0xbig', 'confirmed')
            """, [huge])
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["portfolio:12", "main_menu:12", "user_state:12", "tx:12:0xbig"]).count == 4)
        #expect(harness.logs.captured.contains { $0.contains("event field too large to be a cache key") && $0.contains("reason=wallet_address") })
        harness.stopWorker()
    }
}
