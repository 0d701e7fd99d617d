import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import PostgresClient
import RedisClient
import Synchronization
import Testing

/// The worker against a Redis master with a replica and three sentinels, through the URL form
/// production uses (`redis-sentinel://s1,s2,s3/mymaster/0`): discovery, a master killed in the
/// middle of a stream of trades, and a deletion the promoted replica never received.
///
/// Every key a test reads or writes is on the group's current master (asked from the sentinels),
/// never on the shared test Redis.
@Suite("Redis Sentinel", .serialized)
struct RedisSentinelTests {
    /// One test's world: a sentinel group, a database with the migrations (`Harness`) and a
    /// worker that finds Redis through the group's sentinels.
    final class World {
        let group: RedisSentinelGroup
        let harness: Harness
        let worker: WorkerHandle

        init(_ configure: (inout WorkerConfiguration) -> Void = { _ in }) throws {
            group = try RedisSentinelGroup()
            let harness = try Harness()
            let endpoint = try RedisEndpoint.parse(group.url())
            worker = harness.startWorker { config in
                config.redis = endpoint
                config.keyPrefix = harness.prefix
                configure(&config)
            }
            self.harness = harness
        }

        deinit {
            worker.stop()
            _ = worker.wait(seconds: 10)
            group.stop()
        }

        var statistics: WorkerStatistics.Snapshot { worker.statistics.snapshot }
        var prefix: String { harness.prefix }

        /// Waits until the worker leads, has drained the log and holds a Redis connection.
        func waitUntilReady() throws {
            try harness.waitFor("the worker active, drained, and connected to Redis through the sentinels") {
                $0.active && $0.initialDrainDone && $0.redisUp
            }
        }

        func set(_ key: String, _ value: String = "cached", port: Int) throws {
            let reply = try group.command(port: port, ["SET", prefix + key, value])
            #expect(reply == .status("OK"), "SET \(key) on \(port)")
        }

        func exists(_ key: String, port: Int) throws -> Bool {
            try group.command(port: port, ["EXISTS", prefix + key]) == .integer(1)
        }

        /// The keys among `keys` still on the server at `port`.
        func present(_ keys: [String], port: Int) throws -> [String] {
            let replies = try group.connection(port: port).pipeline(keys.map { [Array("EXISTS".utf8), Array((prefix + $0).utf8)] })
            return zip(keys, replies).filter { $0.1 != .integer(0) }.map(\.0)
        }

        func waitUntilGone(_ keys: [String], port: Int, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
            try awaitCondition("\(keys.count) keys deleted on \(port)", timeout: timeout, interval: 10_000, sourceLocation: sourceLocation) { seen in
                let left = try present(keys, port: port)
                seen = "still there: \(left.prefix(20)); \(statistics); worker log tail:\n\(harness.logTail)"
                return left.isEmpty
            }
        }
    }

    /// The settled trades' keys in the rule table (`trade_settled`) that are known from the
    /// telegram id and hash alone.
    static func keys(ofTrade tid: Int, _ hash: String) -> [String] {
        ["portfolio:\(tid)", "main_menu:\(tid)", "user_state:\(tid)", "tx:\(tid):\(hash)"]
    }

    // MARK: Discovery

    /// The worker asks the sentinels for the master and deletes there; the shared test Redis
    /// (the same keys under the same prefix) is not touched.
    @Test func theWorkerFindsTheMasterThroughTheSentinels() throws {
        let world = try World()
        try world.waitUntilReady()
        let group = world.group
        #expect(try group.currentMasterPort() == group.masterPort)
        let tids = Array(3001...3005)
        let keys = tids.flatMap { Self.keys(ofTrade: $0, "0xfound\($0)") }
        for key in keys + ["portfolio:3999"] { try world.set(key, port: group.masterPort) }
        // The control: a key of the same name in the shared Redis, which this worker must not reach.
        try world.harness.seed(["portfolio:3001"])
        for tid in tids { try world.harness.sql(DeliveryTests.settledTrade(tid, "0xfound\(tid)")) }
        try world.harness.waitUntilProcessed()

        #expect(try world.present(keys, port: group.masterPort).isEmpty, "every trade's keys deleted on the master")
        #expect(try world.exists("portfolio:3999", port: group.masterPort), "a key no trade names is kept")
        #expect(try world.harness.exists("portfolio:3001"), "the shared Redis is not the one the sentinels name")
        // Deletions on the master reach its replica as usual.
        #expect(try group.command(port: group.masterPort, ["WAIT", "1", "2000"]) == .integer(1))
        #expect(try world.present(keys, port: group.replicaPort).isEmpty)
        let snapshot = world.statistics
        #expect(snapshot.redisUp)
        #expect(snapshot.redisConnects == 1 && snapshot.redisMasterChanges == 0 && snapshot.redisErrors == 0, "\(snapshot)")
    }

    // MARK: A master killed mid-stream

    /// The bot for a Sentinel deployment: a thread that, at a steady rate, caches a user's
    /// portfolio on the current master and then commits a settled trade for that user (a
    /// telegram id of its own per write). A SET that fails (the master is gone, or the server the
    /// sentinels name is still a replica) is retried on the master the sentinels name then; the
    /// trade is committed only once its key is cached, so every committed trade has a key to
    /// invalidate.
    final class SentinelBot: Sendable {
        struct Progress: Sendable {
            var committed: [Int] = []
            var failedSets = 0
            var lastError = ""
            /// Why the bot stopped on its own (a SET that no master took within 30 s, a failed commit).
            var gaveUp: String?
        }

        private let group: RedisSentinelGroup
        private let databaseURL: String
        private let prefix: String
        private let firstTid: Int
        private let interval: Double
        private let stopFlag = Atomic<Bool>(false)
        private let done = DispatchSemaphore(value: 0)
        private let state = Mutex(Progress())

        init(group: RedisSentinelGroup, databaseURL: String, prefix: String, firstTid: Int, perSecond: Double = 40) {
            self.group = group
            self.databaseURL = databaseURL
            self.prefix = prefix
            self.firstTid = firstTid
            self.interval = 1 / perSecond
        }

        var progress: Progress { state.withLock { $0 } }

        func start() {
            let thread = Thread { [self] in
                run()
                done.signal()
            }
            thread.start()
        }

        /// Stops the bot after the write in progress; safe to call again.
        func stop() {
            guard !stopFlag.exchange(true, ordering: .relaxed) else { return }
            #expect(done.wait(timeout: .now() + 40) == .success, "the bot did not stop within 40 s")
        }

        /// Waits until at least `count` more trades committed than had when called.
        func waitForCommits(_ count: Int, timeout: Double = 30, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let target = progress.committed.count + count
            try awaitCondition("\(count) more commits of the bot", timeout: timeout, interval: 5_000, sourceLocation: sourceLocation) { seen in
                let now = progress
                seen = "\(now.committed.count) of \(target) committed, \(now.failedSets) failed SETs, last error: \(now.lastError), gave up: \(now.gaveUp ?? "no")"
                return now.committed.count >= target || now.gaveUp != nil
            }
            if let reason = progress.gaveUp {
                Issue.record("the bot gave up: \(reason)", sourceLocation: sourceLocation)
                throw Harness.HarnessError.timeout
            }
        }

        private func run() {
            var db: PGConnection? = nil
            var redis: RedisConnection? = nil
            var tid = firstTid
            var next = Date()
            while !stopFlag.load(ordering: .relaxed) {
                tid += 1
                let set = ["SET", prefix + "portfolio:\(tid)", "cached"].map { Array($0.utf8) }
                let deadline = Date().addingTimeInterval(30)
                var cached = false
                while !cached && !stopFlag.load(ordering: .relaxed) && Date() < deadline {
                    do {
                        if redis == nil { redis = try group.connection(port: try group.currentMasterPort()) }
                        let reply = try redis!.command(set)
                        guard reply == .status("OK") else { throw TestServers.TestServerError(description: "SET answered \(reply)") }
                        cached = true
                    } catch {
                        redis = nil
                        state.withLock { $0.failedSets += 1; $0.lastError = "\(error)" }
                        usleep(20_000)
                    }
                }
                if stopFlag.load(ordering: .relaxed) { break }
                guard cached else {
                    state.withLock { $0.gaveUp = "no master took SET portfolio:\(tid) within 30 s; last error: \($0.lastError)" }
                    break
                }
                do {
                    if db == nil { db = try PGConnection(conninfo: databaseURL, applicationName: "test-bot") }
                    try db!.execute(DeliveryTests.settledTrade(tid, "0xstream\(tid)"))
                } catch {
                    // PostgreSQL is not under test here: a failed commit ends the stream.
                    state.withLock { $0.gaveUp = "the commit of trade \(tid) failed: \(error)" }
                    break
                }
                state.withLock { $0.committed.append(tid) }
                next = next.addingTimeInterval(interval)
                let pause = next.timeIntervalSinceNow
                if pause > 0 { usleep(UInt32(pause * 1_000_000)) } else if pause < -1 { next = Date() }
            }
        }
    }

    /// A bot writes 40 trades a second throughout; the master is killed (SIGKILL) in the middle
    /// and the sentinels promote the replica. The same worker (never restarted) follows the
    /// sentinels to the new master, and once every event is acknowledged and the replay of the
    /// events acknowledged before the change is done, no committed trade's key is left there.
    @Test func aMasterKilledMidStreamLosesNoInvalidation() throws {
        let world = try World()
        try world.waitUntilReady()
        let group = world.group
        let worker = world.worker
        let bot = SentinelBot(group: group, databaseURL: world.harness.databaseURL, prefix: world.prefix, firstTid: 10_000)
        bot.start()
        defer { bot.stop() }
        try bot.waitForCommits(80)
        let beforeKill = bot.progress.committed.count

        let killedAt = Date()
        group.killMaster()
        let newMaster = try group.waitForFailover(timeout: 30)
        let failoverSeconds = Date().timeIntervalSince(killedAt)
        #expect(newMaster == group.replicaPort)
        let atFailover = bot.progress.committed.count
        try bot.waitForCommits(80)
        bot.stop()

        let progress = bot.progress
        #expect(progress.gaveUp == nil)
        try world.harness.waitUntilProcessed(timeout: 30)
        // The replay after the change runs after the drain, on the worker's thread: wait for its
        // last round before looking at the keys.
        try world.harness.waitForLogLines(containing: "deleted again the keys of the events acknowledged before the PostgreSQL primary or the Redis master changed", count: 1)

        let keys = progress.committed.map { "portfolio:\($0)" }
        let missed = try world.present(keys, port: newMaster)
        #expect(missed.isEmpty, """
            zero missed: \(missed.count) of \(keys.count) committed trades' keys still on the new master: \(missed.prefix(20)) \
            (\(beforeKill) committed before the kill, \(atFailover - beforeKill) during the \(String(format: "%.1f", failoverSeconds)) s \
            failover, the rest after); worker log tail:\n\(world.harness.logTail)
            """)
        #expect(world.harness.worker === worker, "the same worker throughout")
        let snapshot = world.statistics
        #expect(snapshot.redisUp)
        #expect(snapshot.redisConnects >= 2, "\(snapshot)")
        #expect(snapshot.redisMasterChanges >= 1, "\(snapshot)")
        #expect(snapshot.failoverReplayedEvents >= 1, "\(snapshot)")
        #expect(world.harness.logs.captured.contains { $0.contains("redis is another master than before") && $0.contains(":\(newMaster)") },
                "\(world.harness.logTail)")
    }

    // MARK: A deletion the promoted replica never received

    /// What `loseADeletionOnTheReplica` leaves: the world and the promoted replica's port.
    struct LostDeletion {
        let world: World
        let newMaster: Int
        let key: String
    }

    /// The lost deletion, step by step, with the worker running and idle: a key cached on the
    /// master and on the replica (WAIT 1); the replica frozen and its replication link cut, so
    /// nothing the master does afterwards ever reaches it; a settled trade, whose key the worker
    /// deletes on the master (and, with the second deletion on, deletes again there too); the
    /// master killed; the replica thawed and promoted. The new master still holds the key.
    ///
    /// The worker is idle when the master dies: its Redis heartbeat (a PING after 4 s without an
    /// answer) finds the dead connection, so the replay follows within seconds of the failover.
    private func loseADeletionOnTheReplica(replay: Bool) throws -> LostDeletion {
        let world = try World { config in
            if !replay {
                config.failoverReplayNanoseconds = 0
                config.redeleteAfterNanoseconds = 0
            }
        }
        try world.waitUntilReady()
        let group = world.group
        let key = "portfolio:4001"

        try world.set(key, "computed before the trade", port: group.masterPort)
        #expect(try group.command(port: group.masterPort, ["WAIT", "1", "1000"]) == .integer(1), "the replica acknowledged the SET")
        #expect(try world.exists(key, port: group.replicaPort), "the replica has the key")

        try group.freezeReplica()
        defer { group.thawReplica() }
        try group.cutReplicationLink()
        try world.harness.sql(DeliveryTests.settledTrade(4001, "0xlost"))
        try world.waitUntilGone([key], port: group.masterPort)
        try world.harness.waitUntilProcessed()
        if replay {
            // The second deletion went to the old master too: only the replay is left.
            try world.harness.waitFor("the second deletion") { $0.redeletedEvents >= 1 }
        }
        #expect(world.statistics.redisMasterChanges == 0)

        group.killMaster()
        group.thawReplica()
        let newMaster = try group.waitForFailover(timeout: 30)
        #expect(newMaster == group.replicaPort, "the only replica, frozen until the master died, is promoted")
        return LostDeletion(world: world, newMaster: newMaster, key: key)
    }

    /// The worker, on reaching the promoted replica, deletes again the keys of the events it
    /// acknowledged in the last FAILOVER_REPLAY window: the key the new master kept is gone
    /// within seconds, and the replay found it there (a refilled key).
    @Test func aDeletionTheReplicaNeverReceivedIsDoneAgainAfterTheFailover() throws {
        let lost = try loseADeletionOnTheReplica(replay: true)
        let world = lost.world
        try world.waitUntilGone([lost.key], port: lost.newMaster, timeout: 10)
        // Counted just after Redis confirmed the deletion, on the worker's thread.
        try world.harness.waitFor("the replay counted", timeout: 10) { $0.failoverReplayedEvents >= 1 }
        let snapshot = world.statistics
        #expect(snapshot.failoverReplayedEvents >= 1, "\(snapshot)")
        #expect(snapshot.failoverRefilledKeys >= 1, "the replay found the key on the new master: \(snapshot)")
        #expect(snapshot.redisMasterChanges == 1, "\(snapshot)")
        #expect(snapshot.redisConnects >= 2, "\(snapshot)")
    }

    /// The control: the same steps with the replay and the second deletion off. The worker
    /// reaches the new master and invalidates there, yet the key the new master kept stays: what
    /// the replay is for.
    @Test func withoutTheReplayTheDeletionTheReplicaNeverReceivedStaysLost() throws {
        let lost = try loseADeletionOnTheReplica(replay: false)
        let world = lost.world
        try world.harness.waitFor("the worker on the new master") { $0.redisMasterChanges == 1 && $0.redisUp }
        // The worker works on the new master: another trade's key is deleted there.
        try world.set("portfolio:4002", port: lost.newMaster)
        try world.harness.sql(DeliveryTests.settledTrade(4002, "0xafter"))
        try world.waitUntilGone(["portfolio:4002"], port: lost.newMaster)
        try world.harness.waitUntilProcessed()
        #expect(try world.exists(lost.key, port: lost.newMaster), "without the replay the new master keeps the key whose deletion it never received")
        let snapshot = world.statistics
        #expect(snapshot.failoverReplayedEvents == 0 && snapshot.redeletedEvents == 0, "\(snapshot)")
        #expect(snapshot.redisMasterChanges == 1, "\(snapshot)")
    }
}
