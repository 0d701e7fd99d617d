import Foundation
import Glibc
import PostgresClient
import InvalidationCore
import Testing

/// The log, not the notification, is what makes the worker lose nothing.
@Suite("Delivery: drain, commit order, notifications")
struct DeliveryTests {
    static func settledTrade(_ tid: Int, _ hash: String) -> String {
        """
        INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
        VALUES (\(tid), '0xW\(tid)', '0xT', 'buy', 'manual', '\(hash)', 'confirmed')
        """
    }

    @Test func eventsCommittedWhileTheWorkerWasDownAreProcessedAtStart() throws {
        let harness = try Harness()
        let keys = (1...50).map { "tx:\($0):0xdown\($0)" }
        try harness.seed(keys + ["portfolio:999"])
        for i in 1...50 { try harness.sql(Self.settledTrade(i, "0xdown\(i)")) }
        #expect(try harness.pendingCount == 50)
        harness.startWorker()
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: keys) == Set(keys))
        #expect(try !harness.deleted(among: ["portfolio:999"]).contains("portfolio:999"))
        harness.stopWorker()
    }

    /// A drained backlog is all "slow": a bounded number of warning lines, and the summary counts them all.
    @Test func slowWarningsAreBoundedAndCounted() throws {
        let harness = try Harness()
        for i in 1...100 { try harness.sql(Self.settledTrade(i, "0xslow\(i)")) }
        // Time itself: every event must be older than the 1 ms slow threshold when it is processed.
        usleep(20_000)
        harness.startWorker { $0.slowThresholdNanoseconds = 1_000_000; $0.summaryIntervalNanoseconds = 60_000_000_000 }
        try harness.waitUntilProcessed()
        harness.stopWorker()
        let lines = harness.logs.captured
        #expect(lines.filter { $0.contains("msg=\"slow invalidation\"") }.count == 20)
        #expect(lines.filter { $0.contains("more slow invalidations this interval") }.count == 1)
        #expect(lines.contains { $0.contains("msg=\"lag summary\"") && $0.hasSuffix(" slow_events=100") }, "\(lines.filter { $0.contains("lag summary") })")
    }

    /// An event whose transaction commits after a later id is neither skipped nor held up by it.
    @Test func lateCommitOfALowerIdIsProcessed() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.seed(["tx:1:0xearly", "tx:2:0xlater"])
        let longTransaction = try PGConnection(conninfo: harness.databaseURL)
        try longTransaction.execute("BEGIN")
        try longTransaction.execute(Self.settledTrade(1, "0xearly"))
        try harness.sql(Self.settledTrade(2, "0xlater"))
        // The later id is processed while the earlier transaction is still open.
        try harness.waitFor("the later event") { $0.eventsProcessed >= 1 }
        #expect(try harness.deleted(among: ["tx:1:0xearly", "tx:2:0xlater"]) == ["tx:2:0xlater"])
        try longTransaction.execute("COMMIT")
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:1:0xearly"]) == ["tx:1:0xearly"])
        let ids = try harness.sql("SELECT id FROM cache_invalidation.events ORDER BY created_at").rows.map { Int($0[0]!)! }
        #expect(ids.first! < ids.last!, "the late event has the lower id")
        harness.stopWorker()
    }

    /// Two users with wallets, a running worker that has handled their creation, and every key
    /// of the rule-table universe cached.
    static func workerWithCachedUniverse() throws -> Harness {
        let harness = try Harness()
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (101, '0xA1'), (202, '0xA2')")
        harness.startWorker()
        try harness.waitUntilProcessed()
        try harness.waitFor("the two wallet events recorded") { $0.eventsProcessed == 2 }
        try harness.seed(RuleTableTests.universe)
        return harness
    }

    @Test func malformedNotificationsAreCountedAndGoodEventsStillFlow() throws {
        let harness = try Self.workerWithCachedUniverse()
        let universe = RuleTableTests.universe
        let attacker = try PGConnection(conninfo: harness.databaseURL)
        let payloads = ["garbage", "", "-1", "0", "007", "1.5", "12 ", #"{"kind":"table_truncated","table":"wallets"}"#,
                        #"{"id":1,"keys":["*"]}"#, "FLUSHALL", String(repeating: "9", count: 7_900), "1\n2", "١٢"]
        for payload in payloads {
            try attacker.execute("SELECT pg_notify('cache_invalidation', $1)", [payload])
        }
        try harness.sql(Self.settledTrade(101, "0xh101"))
        try harness.waitUntilProcessed()
        try harness.waitFor("malformed notifications counted") { $0.malformedNotifications == UInt64(payloads.count) }
        #expect(try harness.deleted(among: universe) == ["portfolio:101", "main_menu:101", "user_state:101", "tx:101:0xh101"])
        let warnings = harness.logs.captured.filter { $0.contains("ignored malformed notification") }
        #expect(warnings.count == payloads.count)
        #expect(warnings.allSatisfy { !$0.contains("\n") && $0.count < 2_000 }, "one bounded line per malformed payload")
        harness.stopWorker()
    }

    @Test func forgedNotificationsDeleteNothing() throws {
        let harness = try Self.workerWithCachedUniverse()
        let universe = RuleTableTests.universe
        let processedBefore = harness.worker!.statistics.snapshot.eventsProcessed
        let existing = try harness.sql("SELECT max(id) FROM cache_invalidation.events")[0, 0]!
        let attacker = try PGConnection(conninfo: harness.databaseURL)
        // Ids the log never held, and one it holds (already processed): none may delete anything.
        for payload in ["987654321", "9223372036854775807", String(Int(existing)! + 1000), existing] {
            try attacker.execute("SELECT pg_notify('cache_invalidation', $1)", [payload])
        }
        try harness.waitFor("forged notifications counted") { $0.forgedNotifications == 3 }
        #expect(harness.worker!.statistics.snapshot.eventsProcessed == processedBefore)
        #expect(try harness.deleted(among: universe).isEmpty)
        #expect(harness.logs.captured.contains { $0.contains("notification named an event the log does not hold") })
        harness.stopWorker()
    }

    /// A hand-written event row (by a DBA) with a kind this worker does not know stays pending for
    /// a newer worker instead of being dropped, and does not block the others.
    @Test func unknownKindsWaitAndDoNotBlock() throws {
        let harness = try Harness()
        try harness.logByHand(#"INSERT INTO cache_invalidation.events (kind, payload) VALUES ('future_kind', '{"telegram_id":"1"}')"#)
        try harness.logByHand(#"INSERT INTO cache_invalidation.events (kind, payload) VALUES ('trade_settled', '{"telegram_id":{"nested":1}}')"#)
        try harness.seed(["tx:5:0xok"])
        try harness.sql(Self.settledTrade(5, "0xok"))
        harness.startWorker { $0.summaryIntervalNanoseconds = 200_000_000 }
        try harness.waitFor("the good event") { $0.eventsProcessed >= 1 && $0.undecodableEvents == 1 }
        #expect(try harness.deleted(among: ["tx:5:0xok"]) == ["tx:5:0xok"])
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE \(try harness.pending)") == 1)
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE \(try harness.pending) AND kind = 'future_kind'") == 1)
        try harness.waitFor("a summary line reporting the unknown kind", timeout: 5) { _ in
            harness.logs.captured.contains { $0.contains("unknown_kind_events=1") }
        }
        harness.stopWorker()
    }

    /// The log, not the notification, is the source of truth: an event whose notification never
    /// came (written here by hand, without NOTIFY) is found by the periodic sweep.
    @Test func eventWithoutNotificationIsFoundByTheSweep() throws {
        let harness = try Harness()
        harness.startWorker { $0.summaryIntervalNanoseconds = 300_000_000 }
        try harness.waitFor("the start-up drain") { $0.initialDrainDone }
        try harness.seed(["tx:31:0xsilent", "portfolio:31"])
        try harness.logByHand(#"INSERT INTO cache_invalidation.events (kind, payload) VALUES ('trade_settled', '{"telegram_id":"31","wallet_address":"0xW31","tx_hash":"0xsilent","side":"buy"}')"#)
        try harness.waitUntilProcessed(timeout: 10)
        #expect(try harness.deleted(among: ["tx:31:0xsilent", "portfolio:31"]) == ["tx:31:0xsilent", "portfolio:31"])
        harness.stopWorker()
    }

    /// A batch larger than --batch-size is drained in several round trips, none lost.
    @Test func backlogLargerThanABatchIsDrained() throws {
        let harness = try Harness()
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            SELECT g, '0xW' || g, '0xT', 'buy', 'manual', '0xbulk' || g, 'confirmed' FROM generate_series(1, 2500) g
            """)
        let keys = (1...2500).map { "tx:\($0):0xbulk\($0)" }
        try harness.seed(keys)
        harness.startWorker { $0.batchSize = 300 }
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: keys).count == 2500)
        try harness.waitFor("every batch recorded") { $0.eventsProcessed == 2500 }
        #expect(harness.worker!.statistics.snapshot.batches >= 9)
        harness.stopWorker()
    }

    /// The listener's backend is terminated and Redis restarts: the worker reconnects, LISTENs
    /// again and processes what was committed meanwhile.
    @Test func reconnectsAfterBackendTerminationAndRedisRestart() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("listening") { $0.listening && $0.redisUp }
        try harness.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cache-invalidator' AND datname = current_database()")
        try harness.seed(["tx:7:0xafter"])
        try harness.sql(Self.settledTrade(7, "0xafter"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:7:0xafter"]) == ["tx:7:0xafter"])
        #expect(harness.worker!.statistics.snapshot.postgresConnects >= 2)
        harness.stopWorker()
    }

    /// Redis goes away (restarted empty, as after a crash): events wait in the log, the worker
    /// stays alive, reports Redis down, and drains the backlog when Redis is back.
    @Test func redisOutageIsRiddenOutAndTheBacklogDrained() throws {
        let harness = try Harness()
        let port = try harness.servers.startExtraRedis()
        defer { harness.servers.stopExtraRedis(port: port) }
        harness.startWorker { $0.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(port)/0") }
        try harness.waitFor("connected") { $0.listening && $0.redisUp }
        harness.servers.stopExtraRedis(port: port)
        for i in 1...20 { try harness.sql(Self.settledTrade(i, "0xout\(i)")) }
        try harness.waitFor("redis reported down") { !$0.redisUp }
        #expect(try harness.pendingCount == 20, "nothing is acknowledged while Redis is away")
        _ = try harness.servers.startExtraRedis(port: port)
        try harness.waitUntilProcessed()
        // Statistics follow the acknowledgement by a moment.
        try harness.waitFor("the batch recorded") { $0.eventsProcessed == 20 }
        #expect(harness.worker!.statistics.snapshot.redisConnects >= 2)
        let downLines = harness.logs.captured.filter { $0.contains("redis unavailable") }
        #expect(downLines.count == 1, "one line for the outage, not one per retry: \(downLines.count)")
        harness.stopWorker()
    }
}
