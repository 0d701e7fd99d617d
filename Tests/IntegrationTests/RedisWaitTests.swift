import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import RedisClient
import Testing

/// `--redis-wait-replicas`: a batch is acknowledged only once the master's replica has its
/// deletions (`WAIT`); with the replica frozen, the batch is retried, not acknowledged.
@Suite("Redis WAIT for replicas", .serialized)
struct RedisWaitTests {
    @Test func aBatchIsAcknowledgedOnlyOnceAReplicaHasItsDeletions() throws {
        let group = try RedisSentinelGroup()
        defer { group.stop() }
        let harness = try Harness()
        harness.startWorker { config in
            config.redis = try! RedisEndpoint.parse("redis://127.0.0.1:\(group.masterPort)/0")
            config.redisWaitReplicas = 1
            config.redisTimeoutMilliseconds = 1000
        }
        let master = try group.connection(port: group.masterPort)
        func cache(_ key: String) throws { _ = try master.command(["SET", harness.prefix + key, "cached"].map { Array($0.utf8) }) }
        func exists(_ key: String) throws -> Bool { try master.command(["EXISTS", harness.prefix + key].map { Array($0.utf8) }) == .integer(1) }

        try cache("portfolio:61")
        try harness.sql(DeliveryTests.settledTrade(61, "0xwait1"))
        try harness.waitUntilProcessed()
        #expect(!(try exists("portfolio:61")))

        try group.freezeReplica()
        try cache("portfolio:62")
        try harness.sql(DeliveryTests.settledTrade(62, "0xwait2"))
        try harness.waitForLogLines(containing: "WAIT: 0 of 1 replicas have the deletions", count: 1)
        #expect(!(try exists("portfolio:62")), "deleted on the master")
        #expect(try harness.pendingCount == 1, "but not acknowledged while no replica has the deletion")
        group.thawReplica()
        try harness.waitUntilProcessed(timeout: 30)
        harness.stopWorker()
    }
}
