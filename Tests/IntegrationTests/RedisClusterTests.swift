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
