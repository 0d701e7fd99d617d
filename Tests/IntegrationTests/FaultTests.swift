import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import Logging
import PostgresClient
import RedisClient
import Testing

/// "Nothing lost" under the faults production brings. Each test runs a steady stream of bot
/// writes (a cached key, then the settled trade that makes it stale), injects the fault against
/// real servers, and then demands that every committed write's key is gone from Redis.
@Suite("Faults: zero missed invalidations")
struct FaultTests {
    /// Redis stops (the worker backs off, stays alive, reports itself down, acknowledges
    /// nothing) and comes back empty. Before the worker can get in again (the new Redis asks for
    /// a password at first), the keys of the writes committed during the outage are cached
    /// again, as a bot refilling its cache with values read before those commits would; the
    /// backlog drain must delete them all.
    @Test(arguments: [3, 60])
    func redisStoppedThenRestartedEmpty(seconds: Int) throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: port) }
        harness.startWorker {
            $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0")
            $0.summaryIntervalNanoseconds = 500_000_000
            $0.backlogWarning = 50
        }
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: port, prefix: harness.prefix, tag: "r\(seconds)_")
        bot.start()
        try bot.waitForCommits(100)

        harness.servers.stopExtraRedis(port: port)
        try harness.waitFor("redis reported down") { !$0.redisUp }
        let outageStart = bot.committed
        let acknowledgedAtOutage = try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE \(try harness.processed)")
        // The outage's length is the test's parameter: time itself is what is tested here.
        sleep(UInt32(seconds))
        #expect(harness.worker!.wait(seconds: 0) == false, "the worker stays alive through the outage")
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE \(try harness.processed)") == acknowledgedAtOutage,
                "an event was acknowledged while no deletion could be confirmed")
        // Read the commits first: the bot goes on committing while the count is taken.
        let committedDuringOutage = bot.committed - outageStart
        let pendingDuringOutage = try harness.pendingCount
        #expect(pendingDuringOutage >= committedDuringOutage, "\(pendingDuringOutage) pending, \(committedDuringOutage) committed during the outage")

        _ = try harness.servers.startExtraRedis(port: port, extraArguments: ["--requirepass", "refilling"])
        let admin = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        try admin.handshake(username: nil, password: "refilling", database: 0)
        var checked = bot.writes
        for index in outageStart..<checked.count {
            checked[index].cached = true
            _ = try admin.command([Array("SET".utf8), Array((harness.prefix + checked[index].key).utf8), Array("stale".utf8)])
        }
        _ = try admin.command(["CONFIG", "SET", "requirepass", ""].map { Array($0.utf8) })
        try bot.waitForCommits(100)
        bot.stop()
        checked += bot.writes[checked.count...]
        try harness.waitUntilProcessed(timeout: 60)

        #expect(checked.count - outageStart >= seconds * 100, "writes went on during the outage: \(checked.count - outageStart)")
        #expect(bot.failures == 0, "a bot write failed while Redis was down: \(bot.lastError)")
        #expect(try harness.keysNeverDeleted(checked, redis: admin) == [])
        let lines = harness.logs.captured
        #expect(lines.filter { $0.contains("redis unavailable") }.count == 1, "one error line per outage")
        #expect(lines.contains { $0.contains("event backlog over its threshold") }, "the growing backlog is warned about")
        #expect(lines.contains { $0.contains("msg=\"lag summary\"") && $0.contains("redis=down") }, "the summary reports Redis down")
        harness.stopWorker()
    }

    /// Redis stops answering writes in the middle of a multi-batch drain, where the statement
    /// that acknowledges one batch and reads the next is in flight while the worker deletes the
    /// batch in between. While Redis hangs, every acknowledged event's key must already be gone
    /// (an acknowledgement sent ahead of Redis's confirmation would show here); once Redis
    /// answers again, every key of the backlog.
    @Test func redisStallsMidDrainAndOnlyConfirmedBatchesAreAcknowledged() throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: port) }
        let redis = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        let burst = 10_000
        let keys = try harness.cachedTradeBurst(burst, telegramBase: 700_000, users: 1000, hashPrefix: "0xstall", redis: redis)
        harness.startWorker {
            $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0")
            $0.batchSize = 25
            $0.redisTimeoutMilliseconds = 300
        }
        let acknowledged = "SELECT payload->>'telegram_id', payload->>'tx_hash' FROM cache_invalidation.events WHERE \(try harness.processed) AND payload->>'tx_hash' LIKE '0xstall%'"
        try harness.waitForAcknowledged(500, hashPrefix: "0xstall")

        // Reads (EXISTS) are still served during a WRITE pause; UNLINK waits, and times out after
        // 300 ms. The pause is long enough for several attempts; UNPAUSE ends it.
        #expect(try redis.command(["CLIENT", "PAUSE", "15000", "WRITE"].map { Array($0.utf8) }) == .status("OK"))
        defer { _ = try? redis.command(["CLIENT", "UNPAUSE"].map { Array($0.utf8) }) }
        // A second failed attempt: the drain pass that met the first failure has ended, and with
        // it the statement that was in flight (which acknowledged the last batch Redis confirmed).
        try harness.waitFor("a second attempt failed in the paused Redis") { $0.redisErrors >= 2 }
        let rows = try harness.sql(acknowledged).rows
        #expect(rows.count > 0 && rows.count < burst, "the stall landed during the drain (\(rows.count) of \(burst) acknowledged)")
        let ackedKeys = rows.map { harness.prefix + "tx:\($0[0] ?? ""):\($0[1] ?? "")" }
        let replies = try redis.pipeline(ackedKeys.map { [Array("EXISTS".utf8), Array($0.utf8)] })
        let stillCached = zip(ackedKeys, replies).filter { $0.1 != .integer(0) }.map(\.0)
        #expect(stillCached.isEmpty, "acknowledged before Redis confirmed: \(stillCached.prefix(5)) (\(stillCached.count))")
        // Two more attempts, each a drain pass that read batches and had them refused.
        let errors = harness.worker!.statistics.snapshot.redisErrors
        try harness.waitFor("two more attempts failed in the paused Redis") { $0.redisErrors >= errors + 2 }
        #expect(try harness.sql(acknowledged).rows.count == rows.count, "nothing is acknowledged while Redis hangs")

        _ = try redis.command(["CLIENT", "UNPAUSE"].map { Array($0.utf8) })
        try harness.waitUntilProcessed(timeout: 60)
        let left = burst - (try harness.deleted(among: keys, redis: redis).count)
        #expect(left == 0, "\(left) of \(burst) keys never deleted")
        harness.stopWorker()
    }

    /// Batches with pattern deletions (a SCAN of the whole keyspace, however long it takes) are
    /// not overlapped with the next statement; a drain mixing them with exact-key batches still
    /// deletes everything and processes each event once.
    @Test func drainMixingPatternAndExactKeyBatches() throws {
        let harness = try Harness()
        let wallets = 120, trades = 300
        var keys: [String] = []
        for i in 0..<wallets { keys += ["temp_sell_data:\(800_000 + i):\(i)", "wallet_balance:0xdel\(i)"] }
        for i in 0..<trades { keys.append("tx:\(810_000 + i % 50):0xmix\(i)") }
        try harness.sql("""
            INSERT INTO wallets (telegram_id, address) SELECT 800000 + g, '0xdel' || g FROM generate_series(0, \(wallets - 1)) g
            """)
        try harness.seed(keys)
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            SELECT 810000 + g % 50, '0xW', '0xT', 'buy', 'manual', '0xmix' || g, 'confirmed' FROM generate_series(0, \(trades / 2 - 1)) g
            """)
        try harness.sql("DELETE FROM wallets WHERE address LIKE '0xdel%'")
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            SELECT 810000 + g % 50, '0xW', '0xT', 'buy', 'manual', '0xmix' || g, 'confirmed' FROM generate_series(\(trades / 2), \(trades - 1)) g
            """)
        let events = try harness.eventCount
        harness.startWorker { $0.batchSize = 40 }
        try harness.waitUntilProcessed()
        try harness.waitFor("every event recorded once") { $0.eventsProcessed == UInt64(events) }
        #expect(try harness.deleted(among: keys).count == keys.count)
        harness.stopWorker()
    }

    /// A batch with pattern deletions scans the whole keyspace, which can take longer than the
    /// session's statement_timeout, while the statement that reads the next batch is in flight.
    /// Were its rows read only after the SCANs, PostgreSQL would block sending a large next batch,
    /// the timeout would cancel the statement (and the acknowledgement in it), and the drain
    /// would redo the same batches forever (this test then times out). Here: 600,000 other keys
    /// make 10 SCANs take seconds, the next batch is ~30 MB, and statement_timeout is 1 s.
    @Test func aSlowBatchDoesNotGetTheStatementInFlightCancelled() throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis(extraArguments: ["--enable-debug-command", "yes"])
        defer { harness.servers.stopExtraRedis(port: port) }
        // DEBUG POPULATE takes about a second per 1.5 million keys, more on a loaded machine.
        let redis = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port), timeoutMilliseconds: 60_000)
        #expect(try redis.command(["DEBUG", "POPULATE", "600000", "other"].map { Array($0.utf8) }) == .status("OK"))
        try harness.sql("INSERT INTO wallets (telegram_id, address) SELECT 830000 + g, '0xslow' || g FROM generate_series(1, 10) g")
        try harness.sql("DELETE FROM wallets WHERE address LIKE '0xslow%'")
        // Buy trades whose sell_id (in the payload, in no key) is 60 kB: 500 of them are ~30 MB.
        let big = 1_200
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, sell_id, status)
            SELECT 831000 + g % 10, '0xW', '0xT', 'buy', 'manual', '0xbig' || g, repeat('s', 60000), 'confirmed' FROM generate_series(1, \(big)) g
            """)
        let keys = (1...big).map { "tx:\(831_000 + $0 % 10):0xbig\($0)" }
        for chunk in stride(from: 0, to: big, by: 500) {
            _ = try redis.pipeline(keys[chunk..<min(chunk + 500, big)].map { [Array("SET".utf8), Array((harness.prefix + $0).utf8), Array("cached".utf8)] })
        }
        harness.startWorker {
            $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0")
            $0.batchSize = 500
            $0.statementTimeoutMilliseconds = 1000
        }
        try harness.waitUntilProcessed(timeout: 120)
        let left = try redis.pipeline(keys.map { [Array("EXISTS".utf8), Array((harness.prefix + $0).utf8)] }).filter { $0 != .integer(0) }.count
        #expect(left == 0, "\(left) of \(big) keys never deleted")
        harness.stopWorker()
    }

    /// `pg_ctl restart -m fast` under the worker and the bot: the worker reconnects, LISTENs
    /// again and drains; every write that committed has its key deleted.
    @Test func postgresRestartedFast() throws {
        let harness = try Harness(migrate: false)
        let postgres = try ExtraPostgres(servers: harness.servers)
        _ = try Migrator(connection: PGConnection(conninfo: postgres.url), directory: Harness.migrationsDirectory, logger: harness.quietLogger()).up()
        harness.startWorker { $0.databaseURL = postgres.url }
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        let bot = BotStream(databaseURL: postgres.url, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "pg")
        bot.start()
        try bot.waitForCommits(100)
        try postgres.restart()
        try bot.waitForCommits(200)
        bot.stop()
        try harness.waitUntilProcessed(databaseURL: postgres.url, timeout: 60)
        #expect(try harness.keysNeverDeleted(bot.writes) == [])
        #expect(harness.worker!.statistics.snapshot.postgresConnects >= 2)
        harness.stopWorker()
    }

    /// The listener's backend is killed three times while the bot writes.
    @Test func listenerBackendTerminatedRepeatedly() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "term")
        bot.start()
        for round in 1...3 {
            try bot.waitForCommits(60)
            #expect(try harness.count("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'cache-invalidator' AND datname = current_database()") == 1)
            try harness.waitFor("reconnect \(round)") { $0.postgresConnects >= UInt64(round + 1) && $0.active }
        }
        try bot.waitForCommits(60)
        bot.stop()
        try harness.waitUntilProcessed()
        #expect(bot.failures == 0)
        #expect(try harness.keysNeverDeleted(bot.writes) == [])
        harness.stopWorker()
    }

    /// The listener's TCP connection silently stops delivering (no RST, no FIN): the heartbeat,
    /// or the deadline of a query in flight when it froze (a second deletion's read, the summary),
    /// notices within 15 s; the worker reconnects, ends its old session (which the server still
    /// keeps, with the leader lock) and drains what was committed meanwhile.
    @Test func halfOpenListenerConnectionIsDetectedAndReplaced() throws {
        let harness = try Harness()
        let proxy = try SilentableProxy(targetPort: harness.servers.postgresPort)
        defer { proxy.stop() }
        let viaProxy = "postgresql://postgres@127.0.0.1:\(proxy.port)/\(harness.databaseName)"
        harness.startWorker { $0.databaseURL = viaProxy }
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        let before = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "halfbefore")
        before.start()
        try before.waitForCommits(50)
        before.stop()
        try harness.waitUntilProcessed()

        // Frozen while idle: no query is in flight, LISTEN just hears nothing from now on. Only
        // the heartbeat can tell.
        proxy.freeze()
        let frozenAt = Date()
        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "half")
        bot.start()
        try harness.waitFor("the silent connection replaced", timeout: 30) {
            ($0.heartbeatFailures >= 1 || $0.postgresErrors >= 1) && $0.postgresConnects >= 2 && $0.active && $0.takeovers >= 2
        }
        let detected = Date().timeIntervalSince(frozenAt)
        #expect(detected <= 15, "took \(detected) s to notice the silent connection")
        try bot.waitForCommits(100)
        bot.stop()
        try harness.waitUntilProcessed()
        #expect(try harness.keysNeverDeleted(before.writes + bot.writes) == [])
        #expect(harness.logs.captured.contains { $0.contains("no answer from the server within") })
        #expect(harness.logs.captured.contains { $0.contains("ended this worker's previous Postgres session") })
        harness.stopWorker()
    }

    /// A transaction writes a settled trade, stays open while 200 later trades commit (and are
    /// processed), then commits: its event is processed too.
    @Test func longTransactionCommittingAfter200LaterTrades() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        try harness.seed(["tx:1:0xlong"])
        let long = try PGConnection(conninfo: harness.databaseURL)
        try long.execute("BEGIN")
        try long.execute(DeliveryTests.settledTrade(1, "0xlong"))
        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "later")
        bot.start()
        try bot.waitForCommits(200)
        try harness.waitFor("the later trades processed") { $0.eventsProcessed >= 200 }
        #expect(try harness.exists("tx:1:0xlong"), "not invalidated before it commits")
        try long.execute("COMMIT")
        bot.stop()
        try harness.waitUntilProcessed()
        #expect(try !harness.exists("tx:1:0xlong"))
        #expect(try harness.keysNeverDeleted(bot.writes) == [])
        harness.stopWorker()
    }

    /// Two or three workers on one database and one Redis: one is active, the others stand by
    /// without LISTENing; nothing is missed and nothing is done twice; when the active one
    /// stops, a standby takes over within a second.
    @Test(arguments: [2, 3])
    func severalWorkersShareOneLeaderAndHandOver(count: Int) throws {
        let harness = try Harness()
        let sinks = (0..<count).map { _ in LogSink(capturing: true) }
        let handles = sinks.map { WorkerHandle.start(configuration: harness.configuration(), logger: Harness.workerLogger($0, level: .info)) }
        defer { handles.forEach { $0.stop() }; handles.forEach { _ = $0.wait(seconds: 10) } }
        func snapshots() -> [WorkerStatistics.Snapshot] { handles.map(\.statistics.snapshot) }
        func waitUntil(_ what: String, timeout: Double = 20, _ condition: ([WorkerStatistics.Snapshot]) -> Bool) throws {
            let deadline = Date().addingTimeInterval(timeout)
            while !condition(snapshots()) {
                if Date() > deadline { Issue.record("timed out: \(what)"); throw Harness.HarnessError.timeout }
                usleep(2_000)
            }
        }
        try waitUntil("one active, the rest standing by") { s in
            s.filter(\.active).count == 1 && s.allSatisfy { $0.postgresUp && $0.redisUp }
        }
        #expect(snapshots().filter(\.listening).count == 1, "standbys do not LISTEN")
        #expect(try harness.count("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cache-invalidator' AND datname = current_database()") == count)

        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "many")
        bot.start()
        try bot.waitForCommits(200)
        let first = snapshots().firstIndex(where: \.active)!
        let stoppedAt = Date()
        handles[first].stop()
        #expect(handles[first].wait(seconds: 10))
        try waitUntil("a standby took over") { s in s.enumerated().contains { $0.offset != first && $0.element.active } }
        let takeover = Date().timeIntervalSince(stoppedAt)
        #expect(takeover < 2, "a standby took \(takeover) s to take over")
        try bot.waitForCommits(200)
        bot.stop()
        try harness.waitUntilProcessed()
        let events = try harness.eventCount
        try waitUntil("statistics caught up") { s in s.reduce(0) { $0 + $1.eventsProcessed } >= UInt64(events) }
        let processed = snapshots().map(\.eventsProcessed)
        #expect(processed.reduce(0, +) == UInt64(events), "each event processed once in all: \(processed) for \(events) events")
        #expect(processed.filter { $0 > 0 }.count == 2, "the first active worker, then the one that took over: \(processed)")
        #expect(snapshots().filter(\.active).count == 1)
        #expect(try harness.keysNeverDeleted(bot.writes) == [])
        let tookOver = sinks.flatMap(\.captured).filter { $0.contains("took over as the active worker") }
        #expect(tookOver.count == 1)
    }

    /// NOTIFY payloads stop at 8000 bytes; the notification carries only the event id, so an
    /// event of any size still goes through.
    @Test func eventLargerThanANotifyPayload() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        let hash = "0x" + String(repeating: "ab", count: 4500)
        try harness.seed(["tx:3:\(hash)", "portfolio:3"])
        try harness.sql(DeliveryTests.settledTrade(3, hash))
        try harness.waitUntilProcessed()
        #expect(try harness.count("SELECT max(octet_length(payload::text)) FROM cache_invalidation.events") > 8000)
        #expect(try harness.deleted(among: ["tx:3:\(hash)", "portfolio:3"]) == ["tx:3:\(hash)", "portfolio:3"])
        harness.stopWorker()
    }

    /// No worker at all: the bot's writes keep succeeding, the log holds the events, `check`
    /// reports the backlog and its age, the notification queue does not fill (nobody listens),
    /// and a worker started later drains everything.
    @Test func botIsNeverBlockedWhileNoWorkerRuns() throws {
        let harness = try Harness()
        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "down", perSecond: 500)
        bot.start()
        try bot.waitForCommits(1000)
        // Time itself: the oldest event must be older than the check's 1 s limit below, and the
        // bot goes on writing for as long with nobody listening.
        sleep(2)
        bot.stop()
        #expect(bot.failures == 0)
        #expect(try harness.pendingCount == bot.committed)
        var check = HealthCheck(configuration: harness.configuration())
        check.maximumBacklog = 500
        check.maximumOldestAgeSeconds = 1
        let findings = check.run()
        let backlog = findings.first { $0.subject == "backlog" }
        #expect(backlog?.ok == false && backlog?.detail.contains("\(bot.committed) events pending") == true, "\(findings)")
        #expect(findings.first { $0.subject == "notify queue" }?.ok == true)
        harness.startWorker()
        try harness.waitUntilProcessed(timeout: 60)
        #expect(try harness.keysNeverDeleted(bot.writes) == [])
        harness.stopWorker()
    }
}
