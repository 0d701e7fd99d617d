import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import RedisClient
import Testing

/// The worker against a real Redis Cluster (three masters, one replica each) named by one node's
/// URL: it detects the cluster, routes each key to its slot's master, and survives a master's
/// death.
@Suite("Redis Cluster", .serialized)
struct RedisClusterTests {
    /// One cluster for the rule table's rows (each test has its own key prefix).
    static let shared = Result { try RedisClusterGroup() }

    @Test(arguments: RuleTableTests.cases + RuleTableTests.truncateCases)
    func everyRowOfTheRuleTableOnACluster(_ testCase: RuleTableTests.Case) throws {
        try RuleTableTests.check(testCase, cluster: try Self.shared.get())
    }

    /// `check` sees the cluster and its masters.
    @Test func checkReportsTheTopology() throws {
        let cluster = try Self.shared.get()
        let harness = try Harness()
        var check = HealthCheck(configuration: harness.configuration())
        check.configuration.redis = try RedisEndpoint.parse(cluster.url())
        let finding = check.run().first { $0.subject == "redis" }
        #expect(finding?.ok == true && finding?.detail.contains("a cluster of 3 masters") == true, "\(String(describing: finding))")
    }

    /// A master SIGKILLed while the bot writes: its replica is promoted, the worker follows
    /// without a restart, and every committed trade's key is gone in the end.
    @Test func aMasterKilledMidStreamLosesNoInvalidation() throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let harness = try Harness()
        harness.startWorker { $0.redis = try! RedisEndpoint.parse(cluster.url(port: cluster.ports[1])) }
        try harness.waitFor("the worker connected") { $0.redisUp && $0.active && $0.initialDrainDone }
        let handle = harness.worker!
        let victim = try #require(try cluster.topology().masters.first)
        var written: [Int] = []
        for tid in 4000..<4060 {
            let key = harness.prefix + "portfolio:\(tid)"
            // While the slot's master is dead and not yet replaced, the bot's own SET fails too.
            try awaitCondition("the bot caches \(key)", timeout: 30, interval: 50_000) { seen in
                do { try cluster.set([key]); return true } catch { seen = "\(error)"; return false }
            }
            try harness.sql(DeliveryTests.settledTrade(tid, "0xcluster\(tid)"))
            written.append(tid)
            if tid == 4020 { cluster.kill(port: victim.port) }
            usleep(20_000)
        }
        try cluster.waitUntilHealthy()
        try harness.waitUntilProcessed(timeout: 60)
        let left = try written.filter { try cluster.exists(harness.prefix + "portfolio:\($0)") }
        #expect(left.isEmpty, "keys never deleted: \(left)\n\(harness.logTail)")
        let snapshot = handle.statistics.snapshot
        #expect(harness.worker === handle && snapshot.redisConnects >= 2, "\(snapshot)")
        #expect(snapshot.redisMasterChanges >= 1, "\(harness.logTail)")
    }
}

extension RedisClusterTests {
    /// A slot migrated while the worker runs: during the migration the key lives on the target,
    /// and the source answers `ASK`; once done, `MOVED`. The worker follows both, and every key
    /// is deleted.
    @Test func aSlotMigratedMidStreamIsFollowedThroughAskAndMoved() throws {
        let cluster = try Self.shared.get()
        let harness = try Harness()
        harness.startWorker { $0.redis = try! RedisEndpoint.parse(cluster.url()) }
        try harness.waitFor("the worker connected") { $0.redisUp && $0.active && $0.initialDrainDone }
        func command(_ port: Int, _ arguments: String...) throws -> RedisReply {
            try RedisConnection(address: .tcp(host: "127.0.0.1", port: port)).command(arguments.map { Array($0.utf8) })
        }
        func id(_ port: Int) throws -> String {
            guard case .bulk(let bytes) = try command(port, "CLUSTER", "MYID") else { throw TestServers.TestServerError(description: "no CLUSTER MYID") }
            return String(decoding: bytes, as: UTF8.self)
        }
        let moving = harness.prefix + "portfolio:5001"
        let slot = HashSlot.of(Array(moving.utf8))
        let topology = try cluster.topology()
        let source = try #require(topology.master(of: slot))
        let target = try #require(topology.masters.first { $0 != source })
        let (sourceID, targetID) = (try id(source.port), try id(target.port))
        // The worker has used the map once (a first trade), so it believes the slot is the source's.
        try cluster.set([harness.prefix + "portfolio:5000"])
        try harness.sql(DeliveryTests.settledTrade(5000, "0xbefore"))
        try harness.waitUntilProcessed()

        try cluster.set([moving])
        #expect(try command(target.port, "CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", sourceID) == .status("OK"))
        #expect(try command(source.port, "CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", targetID) == .status("OK"))
        #expect(try command(source.port, "MIGRATE", "127.0.0.1", "\(target.port)", "", "0", "5000", "KEYS", moving) == .status("OK"))
        // Migrating: the source no longer has the key and answers ASK.
        let asked = harness.worker!.statistics.snapshot.redisRedirections
        try harness.sql(DeliveryTests.settledTrade(5001, "0xduring"))
        try harness.waitUntilProcessed()
        #expect(try command(target.port, "ASKING") == .status("OK"))
        #expect(!(try cluster.exists(moving)) && (try RedisConnection(address: .tcp(host: "127.0.0.1", port: target.port))
            .pipeline([[Array("ASKING".utf8)], ["EXISTS", moving].map { Array($0.utf8) }])[1]) == .integer(0), "deleted through ASK")
        #expect(harness.worker!.statistics.snapshot.redisRedirections > asked, "an ASK was followed")

        // Done: the slot is the target's for good; the worker's map still says the source: MOVED.
        for node in topology.masters {
            #expect(try command(node.port, "CLUSTER", "SETSLOT", "\(slot)", "NODE", targetID) == .status("OK"))
        }
        try cluster.set([moving])
        let moved = harness.worker!.statistics.snapshot.redisRedirections
        try harness.sql(DeliveryTests.settledTrade(5001, "0xafter"))
        try harness.waitUntilProcessed()
        #expect(!(try cluster.exists(moving)), "deleted after MOVED")
        #expect(harness.worker!.statistics.snapshot.redisRedirections > moved, "a MOVED was followed")
        harness.stopWorker()
    }
}
