import CacheInvalidator
import Foundation
import Glibc
import RedisClient
import Testing

/// The second deletion (`--redelete-after`): the cache-aside race, where a reader that read a
/// row before a write committed fills the key after the worker deleted it, and puts the old
/// value back.
@Suite("Second deletion")
struct RedeleteTests {
    /// Caches a key, commits the trade that makes it stale, waits for the first deletion, and
    /// returns at once (the caller fills the key again, as a racing reader would).
    static func firstDeletion(_ harness: Harness, tid: Int, hash: String) throws -> String {
        let key = "tx:\(tid):\(hash)"
        try harness.seed([key])
        try harness.sql(DeliveryTests.settledTrade(tid, hash))
        try awaitCondition("the first deletion of \(key)", timeout: 10) { seen in
            seen = "still cached"
            return try !harness.exists(key)
        }
        return key
    }

    func fill(_ harness: Harness, _ key: String, _ value: String) throws {
        _ = try harness.redis.command([Array("SET".utf8), Array((harness.prefix + key).utf8), Array(value.utf8)])
    }

    /// A stale fill that lands right after the first deletion is removed by the second, and is
    /// counted as a refill of its event's kind.
    @Test func aFillInsideTheWindowIsDeletedAgain() throws {
        let harness = try Harness()
        harness.startWorker { $0.redeleteAfterNanoseconds = 500_000_000 }
        try harness.waitFor("connected and notified") { $0.active && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        let key = try Self.firstDeletion(harness, tid: 1, hash: "0xrace")
        try fill(harness, key, "stale")
        let deletedAt = Date()
        try harness.waitFor("the second deletion") { $0.redeletedEvents >= 1 }
        #expect(try !harness.exists(key), "the stale fill outlived the second deletion")
        #expect(Date().timeIntervalSince(deletedAt) > 0.3, "deleted again too early: the fill would have landed after it")
        let stats = harness.worker!.statistics.snapshot
        #expect(stats.refilledKeys == 1 && stats.refilledKeysByKind["trade_settled"] == 1, "\(stats.refilledKeysByKind)")
        #expect(stats.eventsProcessed == 1, "a second deletion is not a second event")
        harness.stopWorker()
    }

    /// A fill slower than the window lands after the second deletion and stays: the documented
    /// limit (a TTL covers it).
    @Test func aFillAfterTheWindowStays() throws {
        let harness = try Harness()
        harness.startWorker { $0.redeleteAfterNanoseconds = 200_000_000 }
        try harness.waitFor("connected and notified") { $0.active && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        let key = try Self.firstDeletion(harness, tid: 2, hash: "0xlate")
        try harness.waitFor("the second deletion") { $0.redeletedEvents >= 1 }
        try fill(harness, key, "late")
        // Another event, and its second deletion: the worker went on, and left the late fill.
        _ = try Self.firstDeletion(harness, tid: 3, hash: "0xother")
        try harness.waitFor("the other event's second deletion") { $0.redeletedEvents >= 2 }
        #expect(try harness.exists(key))
        #expect(harness.worker!.statistics.snapshot.refilledKeys == 0)
        harness.stopWorker()
    }

    /// With `--redelete-after 0` nothing is deleted twice.
    @Test func offDeletesOnce() throws {
        let harness = try Harness()
        harness.startWorker {
            $0.redeleteAfterNanoseconds = 0
            $0.summaryIntervalNanoseconds = 200_000_000
        }
        try harness.waitFor("connected and notified") { $0.active && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        let key = try Self.firstDeletion(harness, tid: 4, hash: "0xonce")
        try fill(harness, key, "refilled")
        // Longer than the default window: time itself is what is tested here.
        usleep(1_500_000)
        #expect(try harness.exists(key))
        let stats = harness.worker!.statistics.snapshot
        #expect(stats.redeletedEvents == 0 && stats.redeletePending == 0)
        harness.stopWorker()
        #expect(harness.logs.captured.contains { $0.contains("lag summary") && $0.contains("events=1") }, "the summary line of the event")
        #expect(!harness.logs.captured.contains { $0.contains("refilled=") }, "no refill figure when it is off")
    }

    /// The worker killed between the two deletions, and no worker for longer than the window: the
    /// next worker to lead finds in the log what was acknowledged within the window before the
    /// last acknowledgement, and deletes it again.
    @Test func aKilledWorkersSecondDeletionIsDoneByTheNextLead() throws {
        let harness = try Harness()
        let environment = ["DATABASE_URL=\(harness.databaseURL)", "REDIS_URL=\(harness.servers.redisURL)", "KEY_PREFIX=\(harness.prefix)",
                           "REDELETE_AFTER=2s", "METRICS_ADDRESS=off", "PATH=/usr/bin:/bin"]
        let first = try KillTests.Worker(environment: environment)
        guard first.waitForLine(containing: "postgres connected, listening") else { return }
        let key = try Self.firstDeletion(harness, tid: 5, hash: "0xkilled")
        // Acknowledged, so the next lead owes it only the second deletion (not redone as new).
        try harness.waitForAcknowledged(1, hashPrefix: "0xkilled")
        first.signal(SIGKILL)
        _ = first.exitCode()
        try fill(harness, key, "stale")
        // No worker for longer than the window and its slack: time itself is what is tested here.
        sleep(6)
        harness.startWorker { $0.redeleteAfterNanoseconds = 2_000_000_000 }
        try harness.waitFor("the owed second deletion", timeout: 15) { $0.redeletedEvents >= 1 }
        #expect(try !harness.exists(key), "the killed worker's second deletion was never done")
        #expect(harness.worker!.statistics.snapshot.refilledKeys >= 1, "\(harness.worker!.statistics.snapshot); \(harness.logTail)")
        harness.stopWorker()
    }

    /// Before the pending queue (0005) the debt is read from `processed_at`: a worker stopped
    /// between the two deletions (its in-memory record gone) leaves it to the next lead.
    @Test func withoutThePendingQueueTheNextLeadPaysTheDebtFromProcessedAt() throws {
        let harness = try Harness(migrate: false)
        _ = try PendingQueueTests.migrator(harness).up(to: 4)
        harness.startWorker { $0.redeleteAfterNanoseconds = 2_000_000_000 }
        try harness.waitFor("connected and notified") { $0.active && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        let key = try Self.firstDeletion(harness, tid: 8, hash: "0xold")
        try harness.waitForAcknowledged(1, hashPrefix: "0xold")
        harness.stopWorker()
        try fill(harness, key, "stale")
        harness.startWorker { $0.redeleteAfterNanoseconds = 2_000_000_000 }
        try harness.waitFor("the owed second deletion", timeout: 15) { $0.redeletedEvents >= 1 }
        #expect(try !harness.exists(key), "the stopped worker's second deletion was never done")
        #expect(harness.worker!.statistics.snapshot.refilledKeys == 1)
        harness.stopWorker()
    }

    /// A burst's second deletions do not hold first deletions back. A worker that takes over
    /// after a burst of 20,000 owes all of their second deletions at once (ids read back from the
    /// log, a page per turn of its loop); an event committed meanwhile is deleted before they are
    /// done, and the burst's keys filled again after the takeover are deleted by them.
    @Test func aBurstDoesNotDelayFirstDeletions() throws {
        let harness = try Harness()
        harness.startWorker { $0.redeleteAfterNanoseconds = 0 }
        try harness.waitFor("connected and notified") { $0.active && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
        let burst = try harness.cachedTradeBurst(20_000, telegramBase: 900_000, users: 1_000, hashPrefix: "0xredeleteburst")
        try harness.waitForAcknowledged(20_000, hashPrefix: "0xredeleteburst", timeout: 60)
        harness.stopWorker()
        // Filled again after their first deletion, as racing readers would: the debt to pay.
        let refilled = stride(from: 0, to: burst.count, by: 200).map { burst[$0] }
        try harness.seed(refilled)
        // A window longer than the burst took, so the whole burst is owed.
        harness.startWorker {
            $0.redeleteAfterNanoseconds = 10_000_000_000
            $0.batchSize = 200
        }
        try harness.waitFor("the burst's second deletions under way", timeout: 20) { $0.redeletedEvents > 0 }
        let key = "tx:7:0xprobe"
        try harness.seed([key])
        try harness.sql(DeliveryTests.settledTrade(7, "0xprobe"))
        var redeletedWhenProbeWent: UInt64 = 0
        try awaitCondition("the probe's first deletion", timeout: 10) { seen in
            redeletedWhenProbeWent = harness.worker!.statistics.snapshot.redeletedEvents
            seen = "\(redeletedWhenProbeWent) deleted again"
            return try !harness.exists(key)
        }
        #expect(redeletedWhenProbeWent < 10_000, "the probe waited for \(redeletedWhenProbeWent) second deletions of the burst")
        try harness.waitFor("every second deletion of the burst", timeout: 60) { $0.redeletedEvents >= 20_000 }
        #expect(try harness.deleted(among: refilled).count == refilled.count, "the burst's refilled keys outlived the debt")
        #expect(harness.worker!.statistics.snapshot.refilledKeys >= UInt64(refilled.count))
        harness.stopWorker()
    }
}
