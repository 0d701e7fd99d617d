import CacheInvalidator
import Foundation
import Glibc
import PostgresClient
import Testing

/// Migration 0003: while the worker polls the log, writers skip their NOTIFY (which serializes
/// commits cluster-wide); nothing slips between polling and being notified again.
@Suite("Quiet notify: polling under load")
struct QuietNotifyTests {
    /// A worker that polls from 5 events per window on, and two bots writing 600 settled trades/s
    /// each, started and past `commits` each.
    static func pollingUnderLoad(tag: String, commits: Int, configure: (inout WorkerConfiguration) -> Void = { _ in }) throws -> (Harness, [BotStream]) {
        let harness = try Harness()
        harness.startWorker {
            $0.pollingEntryEvents = 5
            configure(&$0)
        }
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        let bots = (0..<2).map { BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "\(tag)\($0)_", perSecond: 600) }
        bots.forEach { $0.start() }
        try bots.forEach { try $0.waitForCommits(commits) }
        return (harness, bots)
    }

    @Test func underLoadTheWorkerPollsAndWritersStopNotifying() throws {
        let (harness, bots) = try Self.pollingUnderLoad(tag: "quiet", commits: 1200)
        bots.forEach { $0.stop() }
        try harness.waitUntilProcessed()
        let events = try harness.eventCount
        try harness.waitFor("back to being notified") { !$0.polling && $0.eventsProcessed == UInt64(events) }
        let stats = harness.worker!.statistics.snapshot
        #expect(stats.pollingEntries >= 1)
        #expect(stats.notificationsReceived < UInt64(events) / 2, "writers kept notifying: \(stats.notificationsReceived) notifications for \(events) events")
        #expect(bots.allSatisfy { $0.failures == 0 })
        #expect(try harness.keysNeverDeleted(bots.flatMap(\.writes)) == [])
        // Notified again: a single write now wakes the worker by itself.
        let before = harness.worker!.statistics.snapshot.notificationsReceived
        try harness.seed(["tx:9:0xafter"])
        try harness.sql(DeliveryTests.settledTrade(9, "0xafter"))
        try harness.waitUntilProcessed()
        #expect(try !harness.exists("tx:9:0xafter"))
        try harness.waitFor("the notification counted") { $0.notificationsReceived > before }
        harness.stopWorker()
    }

    /// A burst sends the worker polling; a steady stream slower than the exit rate that follows
    /// it (never 50 ms without an event, so the silence rule alone would keep it polling) brings
    /// it back to notifications, and keeps it there: the private channel is faster per event and
    /// the bot's NOTIFY costs nothing at that rate.
    @Test func aSlowSteadyStreamAfterABurstIsNotifiedAgain() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("listening") { $0.listening && $0.initialDrainDone && $0.redisUp }
        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "steady", perSecond: 100)
        bot.start()
        try bot.waitForCommits(20)
        try harness.cachedTradeBurst(2_000, telegramBase: 830_000, users: 100, hashPrefix: "0xsteadyburst")
        try harness.waitFor("polling after the burst") { $0.pollingEntries >= 1 }
        try harness.waitFor("notified again while the stream goes on", timeout: 10) { !$0.polling && $0.eventsProcessed >= 2_000 }
        let entries = harness.worker!.statistics.snapshot.pollingEntries
        try bot.waitForCommits(100)
        #expect(harness.worker!.statistics.snapshot.pollingEntries == entries, "no flipping back and forth at 100/s")
        #expect(!harness.worker!.statistics.snapshot.polling)
        bot.stop()
        #expect(bot.failures == 0)
        try harness.waitUntilProcessed()
        let keys = bot.writes.filter(\.cached).map(\.key)
        #expect(try harness.deleted(among: keys).count == keys.count)
        harness.stopWorker()
    }

    /// While polling, each poll acknowledges the previous poll's events. A graceful stop in the
    /// middle of it acknowledges the last poll's events before the worker exits: no event is left
    /// deleted but pending, to be redone (a needless second deletion) by the next worker.
    @Test func aGracefulStopWhilePollingAcknowledgesTheLastPoll() throws {
        // Polls of at most 5 events, so that during the burst below every poll returns rows (an
        // empty poll would already have acknowledged the one before it); no sweeps, whose drain
        // would take the burst over (and acknowledge on its own way out).
        let (harness, bots) = try Self.pollingUnderLoad(tag: "stop", commits: 300) {
            $0.batchSize = 5
            $0.pollingFullScanNanoseconds = 600_000_000_000
            $0.summaryIntervalNanoseconds = 600_000_000_000
        }
        try harness.waitFor("polling") { $0.polling && $0.eventsProcessed > 200 }
        // A burst committed while the worker polls: no NOTIFY, worked off 5 events per poll.
        let burst = 5_000
        try harness.cachedTradeBurst(burst, telegramBase: 820_000, users: 100, hashPrefix: "0xstopburst")
        try harness.waitForAcknowledged(200, hashPrefix: "0xstopburst")
        harness.stopWorker()
        bots.forEach { $0.stop() }
        #expect(bots.allSatisfy { $0.failures == 0 })
        let done = try harness.acknowledgedCount(hashPrefix: "0xstopburst")
        #expect(done > 0 && done < burst, "the stop landed during the burst (\(done) of \(burst) done)")
        let pending = try harness.sql("""
            SELECT payload->>'telegram_id', payload->>'tx_hash' FROM cache_invalidation.events
            WHERE \(try harness.pending) AND payload->>'tx_hash' LIKE '0xstop%'
            """).rows
        let keys = pending.map { "tx:\($0[0] ?? ""):\($0[1] ?? "")" }
        #expect(!keys.isEmpty, "events were left for the next worker")
        let deletedButPending = try harness.deleted(among: keys)
        #expect(deletedButPending.isEmpty, "deleted but left unacknowledged at the stop: \(deletedButPending.sorted().prefix(5))")
    }

    /// A writer that skipped its NOTIFY (the worker was polling) and commits late, with an id
    /// the polling cursor has passed: the worker may not go back to waiting for notifications
    /// while that writer is open, and finds its event as soon as it commits. The periodic sweeps
    /// are pushed out of reach, so only the protocol can find it in time.
    @Test func aLateQuietWriterIsFoundWhenItCommits() throws {
        let harness = try Harness()
        harness.startWorker {
            $0.pollingEntryEvents = 3
            $0.pollingExitNanoseconds = 300_000_000
            $0.pollingFullScanNanoseconds = 600_000_000_000
            $0.summaryIntervalNanoseconds = 600_000_000_000
        }
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        for i in 1...5 { try harness.sql(DeliveryTests.settledTrade(100 + i, "0xwarm\(i)")) }
        try harness.waitFor("polling") { $0.polling }

        try harness.seed(["tx:1:0xquiet"])
        let late = try PGConnection(conninfo: harness.databaseURL, applicationName: "test-late-writer")
        try late.execute("BEGIN")
        try late.execute(DeliveryTests.settledTrade(1, "0xquiet"))
        let lateID = try late.execute("SELECT max(id) FROM cache_invalidation.events")[0, 0].flatMap { Int64($0) } ?? 0
        for i in 1...20 { try harness.sql(DeliveryTests.settledTrade(200 + i, "0xpast\(i)")) }
        try harness.waitFor("the later events processed") { $0.eventsProcessed >= 25 }
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE id > $1 AND \(try harness.processed)", [String(lateID)]) >= 20,
                "the polling cursor passed the late writer's id")
        // Past the exit delay the worker releases W (no session holds it in pg_locks) and asks
        // whether G is free (its backend runs the probe); G is not, while the late writer is open.
        // (Back to notifications instead, it fails below.)
        try awaitCondition("W released and G probed", timeout: 20) { seen in
            guard harness.worker!.statistics.snapshot.polling else { return true }
            let holdsW = try harness.count("""
                SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND granted AND classid = 1667326824 AND objid = 1701408376 AND objsubid = 1
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """)
            let worker = try harness.workerBackend()
            seen = "\(holdsW) sessions holding W; the worker's backend: \(worker.map { "\($0)" } ?? "none")"
            return holdsW == 0 && worker?.query.contains("CASE WHEN pg_try_advisory_lock") == true
        }
        #expect(harness.worker!.statistics.snapshot.polling, "went back to waiting for notifications while a quiet writer was open")
        try late.execute("COMMIT")
        let deadline = Date().addingTimeInterval(3)
        while try harness.exists("tx:1:0xquiet") && Date() < deadline { usleep(2_000) }
        #expect(try !harness.exists("tx:1:0xquiet"), "the late quiet writer's event was not found when it committed")
        try harness.waitFor("notified again") { !$0.polling }
        harness.stopWorker()
    }
}

extension QuietNotifyTests {
    /// A previous leader vanished while polling, and the server still keeps its session with
    /// the polling lock W: writers skip their NOTIFY for a worker that no longer polls. The new
    /// active worker ends that session, and writes wake it at once again (the sweep, which
    /// would find them eventually, is pushed out of reach).
    @Test func aVanishedLeaderStillHoldingThePollingLockIsEnded() throws {
        let harness = try Harness()
        let stale = try PGConnection(conninfo: harness.databaseURL, applicationName: "cache-invalidator")
        #expect(try stale.execute("SELECT pg_try_advisory_lock($1::int8)", [String(0x6361_6368_6569_6E78 as Int64)])[0, 0] == "t")
        let stalePID = stale.backendPID
        harness.startWorker { $0.summaryIntervalNanoseconds = 600_000_000_000 }
        try harness.waitFor("connected") { $0.active && $0.redisUp }
        #expect(try harness.count("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", [String(stalePID)]) == 0, "the stale session was ended")
        #expect(harness.logs.captured.contains { $0.contains("still held the polling lock") })
        try harness.seed(["tx:5:0xwake"])
        try harness.sql(DeliveryTests.settledTrade(5, "0xwake"))
        let deadline = Date().addingTimeInterval(3)
        while try harness.exists("tx:5:0xwake") && Date() < deadline { usleep(2_000) }
        #expect(try !harness.exists("tx:5:0xwake"), "the write did not wake the worker")
        harness.stopWorker()
    }
}
