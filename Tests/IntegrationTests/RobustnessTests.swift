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
    /// buffer, not on the socket: it must still be handled at once, not at the next wake-up (the
    /// summary, the heartbeat and maintenance are all pushed out of reach here).
    ///
    /// The query held is the acknowledgement of a notified event, since 0005 a DELETE from
    /// cache_invalidation.pending, held by a lock on that event's pending row. The worker
    /// acknowledges within a millisecond of the notification, sooner than a test could take the
    /// lock, so Redis holds it first: its deletion waits in a paused Redis while the row is locked.
    @Test func notificationReceivedDuringAQueryIsNotLeftWaiting() throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: port) }
        let redis = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        harness.startWorker {
            $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0")
            $0.redisTimeoutMilliseconds = 30_000
            $0.summaryIntervalNanoseconds = 600_000_000_000
            $0.heartbeatIdleNanoseconds = 600_000_000_000
            $0.maintenanceIntervalNanoseconds = 600_000_000_000
        }
        // Caught up: the read of the log that follows the new lead's settling is done, so each
        // event below can only come from its notification.
        try harness.waitFor("listening, notified, caught up") { $0.listening && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        try harness.seed(["tx:1:0xfirst", "tx:2:0xsecond"], redis: redis)

        // The first event's deletion waits in Redis, paused for writes.
        #expect(try redis.command(["CLIENT", "PAUSE", "30000", "WRITE"].map { Array($0.utf8) }) == .status("OK"))
        defer { _ = try? redis.command(["CLIENT", "UNPAUSE"].map { Array($0.utf8) }) }
        try harness.sql(DeliveryTests.settledTrade(1, "0xfirst"))
        try Harness.waitForBlockedClient(redis, command: "unlink")
        // Its pending row locked, then Redis let go: the acknowledgement waits for the row.
        let firstID = try #require(try harness.sql("SELECT max(id) FROM cache_invalidation.events")[0, 0])
        let blocker = try PGConnection(conninfo: harness.databaseURL, applicationName: "test-row-lock")
        try blocker.execute("BEGIN")
        #expect(try blocker.execute("SELECT id FROM cache_invalidation.pending WHERE id = $1 FOR UPDATE", [firstID]).rows.count == 1)
        _ = try redis.command(["CLIENT", "UNPAUSE"].map { Array($0.utf8) })
        let held = try harness.waitForWorkerBlocked(in: "DELETE FROM cache_invalidation.pending", by: blocker.backendPID)

        // The second event commits meanwhile: its notification reaches the worker during that
        // statement (the same one still waiting, not a retry), and arrives with its answer.
        try harness.sql(DeliveryTests.settledTrade(2, "0xsecond"))
        let still = try harness.workerBackend()
        #expect(still?.waitsForLock == true && still?.queryStart == held.queryStart,
                "the acknowledgement was still waiting when the second event committed; the worker's backend: \(still.map { "\($0)" } ?? "none")")
        try blocker.execute("COMMIT")

        try harness.waitUntilProcessed(timeout: 5)
        #expect(try harness.deleted(among: ["tx:1:0xfirst", "tx:2:0xsecond"], redis: redis) == ["tx:1:0xfirst", "tx:2:0xsecond"])
        // Counted just after the acknowledgement commits, on the worker's thread.
        try harness.waitFor("both events taken from their notifications, not found by a read of the log", timeout: 5) { $0.eventsFromNotifications == 2 }
        let stats = harness.worker!.statistics.snapshot
        #expect(stats.postgresConnects == 1 && stats.postgresErrors == 0 && stats.redisErrors == 0, "no timeout, no reconnect: \(stats)")
        harness.stopWorker()
    }

    /// Rows read only after the caller's own work leave the server blocked on a full socket
    /// buffer meanwhile, and that time counts against statement_timeout (the drain's premise for
    /// receiving them on a helper thread). Received concurrently, they all arrive however long the
    /// caller works.
    @Test func rowsReceivedConcurrentlyOutlastTheCallersWork() throws {
        let harness = try Harness(migrate: false)
        let connection = try PGConnection(conninfo: harness.databaseURL)
        // 2 s: producing and sending 40 MB takes a few hundred ms when read as it comes, more on a
        // loaded CI machine (300 ms once timed out there); a blocked server still hits it.
        try connection.execute("SET statement_timeout = '2s'")
        try connection.prepare("big", "SELECT repeat('x', 1000000) FROM generate_series(1, 40)", parameterCount: 0)
        try connection.send(prepared: "big", [])
        // The caller's work, 5 s of it: time itself is the subject (longer than the 2 s
        // statement_timeout that a blocked server's wait counts against).
        usleep(5_000_000)
        do {
            let rows = try connection.receive()
            Issue.record("read after the work, \(rows.rows.count) rows arrived: the socket buffers held 40 MB?")
        } catch {
            #expect(error.sqlState == "57014", "expected a statement timeout, got \(error)")
        }
        try connection.send(prepared: "big", [])
        let pending = connection.receiveConcurrently()
        usleep(5_000_000)  // the same work, as long: time is the subject here too
        let rows = try pending.wait()
        #expect(rows.rows.count == 40)
        #expect(rows.rows.allSatisfy { $0[0]?.utf8.count == 1_000_000 })
    }

    /// A DBA's lock on the event log must not freeze the worker: since 0005 its acknowledgements
    /// are DELETEs from cache_invalidation.pending, and a lock there that conflicts with them (a
    /// CREATE INDEX, a LOCK TABLE ... IN SHARE MODE) holds the acknowledgement up until it fails at
    /// lock_timeout; a stop requested meanwhile is honoured within seconds, with the lock still
    /// held. The event stays pending: deleted in Redis, not acknowledged, redone by the next worker.
    @Test func lockedEventLogDoesNotFreezeShutdown() throws {
        let harness = try Harness()
        harness.startWorker()
        // Caught up: the read of the log that follows the new lead's settling is done, so each
        // event below can only come from its notification.
        try harness.waitFor("listening, notified, caught up") { $0.listening && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        try harness.seed(["tx:3:0xlocked"])
        // The bot's transaction writes the event and stays open; the DBA's LOCK queues behind it
        // and is granted the moment the bot commits, before the worker, notified by that commit,
        // can acknowledge (the lock would also keep the bot from writing, were it taken first).
        let bot = try PGConnection(conninfo: harness.databaseURL, applicationName: "test-bot-locked")
        try bot.execute("BEGIN")
        try bot.execute(DeliveryTests.settledTrade(3, "0xlocked"))
        let dba = try BackgroundSession(databaseURL: harness.databaseURL, applicationName: "test-dba")
        try dba.connection.execute("BEGIN")
        dba.start("LOCK TABLE cache_invalidation.pending IN SHARE MODE")
        try harness.waitForLockWait(pid: dba.pid, "the DBA's LOCK queued behind the bot's transaction")
        try bot.execute("COMMIT")
        try dba.finish()
        try harness.waitForWorkerBlocked(in: "DELETE FROM cache_invalidation.pending", by: dba.pid)

        let started = Date()
        harness.worker!.stop()
        #expect(harness.worker!.wait(seconds: 20), "the worker did not stop while the queue was locked")
        let took = Date().timeIntervalSince(started)
        #expect(took < 10, "took \(took) s to stop (lock_timeout is 5 s)")
        #expect(try harness.count("""
            SELECT count(*) FROM pg_locks
            WHERE pid = $1::int4 AND relation = 'cache_invalidation.pending'::regclass AND mode = 'ShareLock' AND granted
            """, [String(dba.pid)]) == 1, "the DBA still held the lock when the worker stopped")
        #expect(harness.logs.captured.contains { $0.contains("lock timeout") }, "the held acknowledgement failed at lock_timeout:\n\(harness.logTail)")
        #expect(try harness.pendingCount == 1, "acknowledged although the queue was locked")
        #expect(try !harness.exists("tx:3:0xlocked"), "deleted in Redis before the acknowledgement was tried")
        try dba.connection.execute("ROLLBACK")
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
        let committed = Date()
        try harness.sql(DeliveryTests.settledTrade(4, "0xro"))
        // Eight rejected attempts, each after a reconnect: counted, not waited for by the clock.
        try harness.waitFor("eight rejected attempts", timeout: 30) { $0.redisErrors >= 8 }
        let elapsed = Date().timeIntervalSince(committed)
        let stats = harness.worker!.statistics.snapshot
        #expect(stats.eventsProcessed == 0)
        #expect(try harness.pendingCount == 1)
        let errorLines = harness.logs.captured.filter { $0.contains("level=error") }
        #expect(errorLines.count == 1, "\(errorLines)")
        #expect(errorLines.first?.contains("redis rejected the deletions") == true)
        #expect(errorLines.first?.contains("READONLY") == true)
        // Backoff from 20 ms doubling to the harness's 500 ms cap, each delay at least half its
        // window: the seven delays between the eight attempts add up to at least
        // 10+20+40+80+160+250+250 = 810 ms (measured from before the commit, so a late look only
        // adds). Without growth (reset on every successful connect) they would take about 0.1 s.
        #expect(elapsed > 0.7, "eight attempts in \(elapsed) s: the backoff did not grow")
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
        // Several failed attempts (backoff from 20 ms), any of which could have logged.
        try harness.waitFor("several failed attempts") { $0.postgresErrors >= 5 }
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
