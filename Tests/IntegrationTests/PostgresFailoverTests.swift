import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import Logging
import PostgresClient
import RedisClient
import Testing

/// The worker against a primary with a streaming standby, through the URL forms production uses
/// (`host1,host2?target_session_attrs=read-write`): promotions, a standby named alone, and
/// writes the promoted standby never received.
@Suite("PostgreSQL failover", .serialized)
struct PostgresFailoverTests {
    /// One replicated cluster's world: its database with the migrations, a key prefix of its own
    /// in the shared Redis, and a worker reaching the cluster through `workerURL`.
    final class World {
        let cluster: ReplicatedPostgres
        let database: String
        let redis: RedisConnection
        let prefix: String
        let logs = LogSink(capturing: true)
        let statistics = WorkerStatistics()
        var worker: WorkerHandle?

        init(synchronous: Bool) throws {
            cluster = try ReplicatedPostgres(synchronous: synchronous)
            database = try cluster.createDatabase()
            let primary = try PGConnection(conninfo: cluster.url(database: database, port: cluster.primaryPort))
            _ = try Migrator(connection: primary, directory: Harness.migrationsDirectory, logger: Logger(label: "migrate") { _ in SwiftLogNoOpLogHandler() }).up()
            try cluster.waitForStandbyToReplay()
            let servers = try TestServers.get()
            redis = try servers.redisConnection()
            prefix = "\(database)_\(cluster.primaryPort):"
        }

        deinit {
            worker?.stop()
            _ = worker?.wait(seconds: 10)
            cluster.stop()
        }

        func startWorker(url: String, _ configure: (inout WorkerConfiguration) -> Void = { _ in }) throws {
            let servers = try TestServers.get()
            var config = WorkerConfiguration(databaseURL: url, redis: try RedisEndpoint.parse(servers.redisURL))
            config.keyPrefix = prefix
            config.reconnectInitialMilliseconds = 20
            config.listenProbeTimeoutSeconds = 5
            configure(&config)
            worker = WorkerHandle.start(configuration: config, logger: Harness.workerLogger(logs), statistics: statistics)
        }

        var logTail: String { logs.captured.suffix(25).joined(separator: "\n") }

        func set(_ key: String, _ value: String = "cached") throws {
            _ = try redis.command(["SET", prefix + key, value].map { Array($0.utf8) })
        }

        func exists(_ key: String) throws -> Bool {
            try redis.command(["EXISTS", prefix + key].map { Array($0.utf8) }) == .integer(1)
        }

        func waitUntilGone(_ keys: [String], timeout: Double, sourceLocation: SourceLocation = #_sourceLocation) throws {
            try awaitCondition("\(keys) deleted", timeout: timeout, sourceLocation: sourceLocation) { seen in
                let left = try keys.filter { try exists($0) }
                seen = "still there: \(left); \(statistics.snapshot.postgresUnfit ?? "")\nworker log tail:\n\(logTail)"
                return left.isEmpty
            }
        }
    }

    /// The bot: caches a user's portfolio, then settles a trade for that user through the
    /// multi-host URL, reconnecting (as a bot with target_session_attrs does) when the primary is
    /// gone. Returns whether the commit was confirmed; a commit whose answer was lost is unknown.
    final class Bot {
        let url: String
        var connection: PGConnection?
        init(url: String) { self.url = url }

        func settle(_ tid: Int, _ hash: String) -> Bool {
            do {
                if connection == nil { connection = try PGConnection(conninfo: url, applicationName: "test-bot") }
                try connection!.execute(DeliveryTests.settledTrade(tid, hash))
                return true
            } catch {
                connection = nil
                return false
            }
        }
    }

    /// Synchronous replication: every commit the bot saw is on the standby. The primary dies
    /// (`-m immediate`), the standby is promoted, and every trade the new primary holds, before
    /// and after, has its key deleted; invalidation is back within seconds of the promotion.
    @Test func aPromotedSynchronousStandbyLosesNothingAndInvalidationResumes() throws {
        let world = try World(synchronous: true)
        let url = world.cluster.multiHostURL(database: world.database)
        try world.startWorker(url: url) { $0.reconnectMaximumMilliseconds = 2_000 }
        try awaitCondition("the worker leads", timeout: 20) { seen in
            seen = world.logTail
            return world.statistics.snapshot.active && world.statistics.snapshot.initialDrainDone
        }
        let bot = Bot(url: url)
        var written: [Int] = []
        for tid in 1000..<1020 {
            try world.set("portfolio:\(tid)")
            if bot.settle(tid, "0xbefore\(tid)") { written.append(tid) }
        }
        #expect(written.count == 20)
        try world.waitUntilGone(written.map { "portfolio:\($0)" }, timeout: 20)

        try world.cluster.stopPrimaryImmediately()
        // The bot keeps writing while no primary exists: those commits fail (unknown to it).
        for tid in 1020..<1025 {
            try world.set("portfolio:\(tid)")
            _ = bot.settle(tid, "0xduring\(tid)")
        }
        try world.cluster.promoteStandby()
        let promotedAt = Date()
        var after: [Int] = []
        for tid in 1100..<1120 {
            try world.set("portfolio:\(tid)")
            let written = try awaitValue("the bot writes to the new primary", timeout: 20) { seen -> Bool? in
                seen = "no commit yet"
                return bot.settle(tid, "0xafter\(tid)") ? true : nil
            }
            if written { after.append(tid) }
        }
        try world.waitUntilGone(["portfolio:\(after[0])"], timeout: 20)
        let resumedIn = Date().timeIntervalSince(promotedAt)
        #expect(resumedIn < 5, "invalidation resumed \(resumedIn) s after the promotion")

        // Zero missed: every trade the new primary holds has had its key deleted.
        let newPrimary = try PGConnection(conninfo: url)
        let held = try newPrimary.execute("SELECT telegram_id FROM trades ORDER BY telegram_id").rows.compactMap { $0[0].flatMap(Int.init) }
        #expect(Set(written).isSubset(of: Set(held)), "synchronous: every confirmed commit survived the failover")
        try world.waitUntilGone(held.map { "portfolio:\($0)" }, timeout: 20)
        #expect(try newPrimary.execute("SELECT inet_server_port()")[0, 0] == "\(world.cluster.standbyPort)")
        #expect(world.statistics.snapshot.primaryChanges == 1, "\(world.logTail)")
    }

    /// Asynchronous replication: a settled trade commits on the primary while the standby's WAL
    /// receiver is frozen, the worker deletes its key, and a reader caches a value again (computed
    /// from that write). The primary dies and the standby, which never received the write, is
    /// promoted: the worker sees the new timeline and deletes that key again.
    @Test func aWriteThePromotedStandbyLacksHasItsKeyDeletedAgain() throws {
        let world = try World(synchronous: false)
        let url = world.cluster.multiHostURL(database: world.database)
        try world.startWorker(url: url)
        try awaitCondition("the worker leads", timeout: 20) { seen in
            seen = world.logTail
            return world.statistics.snapshot.active && world.statistics.snapshot.initialDrainDone
        }
        try world.cluster.freezeWalReceiver()
        defer { world.cluster.thawWalReceiver() }
        try world.set("portfolio:2001")
        #expect(Bot(url: url).settle(2001, "0xlost"))
        try world.waitUntilGone(["portfolio:2001"], timeout: 20)
        // The second deletion (--redelete-after) has run too: only a failover replay is left.
        try awaitCondition("the second deletion", timeout: 20) { seen in
            seen = "\(world.statistics.snapshot.redeletedEvents)"
            return world.statistics.snapshot.redeletedEvents >= 1
        }
        try world.set("portfolio:2001", "computed from the lost write")

        try world.cluster.stopPrimaryImmediately()
        // Promoted with its receiver still frozen (the fixture kills it first): the WAL waiting
        // unread in its socket never reaches the standby.
        try world.cluster.promoteStandby()
        try world.waitUntilGone(["portfolio:2001"], timeout: 20)
        // Counted just after Redis confirmed the deletion, on the worker's thread.
        try awaitCondition("the replay counted", timeout: 10) { seen in
            let snapshot = world.statistics.snapshot
            seen = "\(snapshot)"
            return snapshot.failoverReplayedEvents >= 1 && snapshot.failoverRefilledKeys >= 1
        }
        #expect(world.statistics.snapshot.primaryChanges == 1, "\(world.logTail)")
        #expect(world.logs.captured.contains { $0.contains("postgres is on a new timeline (1 to 2)") }, "\(world.logTail)")
        let newPrimary = try PGConnection(conninfo: url)
        #expect(try newPrimary.execute("SELECT count(*) FROM trades WHERE tx_hash = '0xlost'")[0, 0] == "0",
                "the scenario: the promoted standby never received the write")
    }

    /// A URL that names only a standby: one clear line, not ready, `check` fails with the reason,
    /// and the worker keeps looking (no crash loop): once that server is promoted, it leads.
    @Test func aURLNamingOnlyAStandbyIsRefusedUntilItIsPromoted() throws {
        let world = try World(synchronous: false)
        let url = world.cluster.url(database: world.database, port: world.cluster.standbyPort)
        try world.startWorker(url: url) { $0.reconnectMaximumMilliseconds = 200 }
        try awaitCondition("refused as a standby", timeout: 20) { seen in
            seen = world.logTail
            return world.statistics.snapshot.postgresUnfit != nil
        }
        let readiness = Readiness.of(world.statistics.snapshot)
        #expect(!readiness.ready && readiness.reason.contains("is a standby, not the primary"), "\(readiness)")
        usleep(1_500_000)  // several attempts at 200 ms
        let lines = world.logs.captured.filter { $0.contains("is a standby (in recovery)") && !$0.contains("level=debug") }
        #expect(lines.count == 1, "said once per outage, not per attempt: \(lines)")
        #expect(lines.first?.contains("target_session_attrs=read-write") == true)
        #expect(world.statistics.snapshot.postgresErrors >= 3, "it keeps looking")

        var check = HealthCheck(configuration: WorkerConfiguration(databaseURL: url, redis: try RedisEndpoint.parse(try TestServers.get().redisURL)))
        check.configuration.listenProbeTimeoutSeconds = 5
        let primaryFinding = check.run().first { $0.subject == "primary" }
        #expect(primaryFinding?.ok == false && primaryFinding?.detail.contains("is a standby") == true, "\(String(describing: primaryFinding))")

        try world.cluster.promoteStandby()
        try awaitCondition("the worker leads on the promoted server", timeout: 20) { seen in
            seen = world.logTail
            return world.statistics.snapshot.active
        }
        #expect(Readiness.of(world.statistics.snapshot).ready)
    }
}
