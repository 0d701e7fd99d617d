import CacheInvalidator
import Foundation
import Glibc
import Logging
import PostgresClient
import Testing

/// Migration 0005: what is still to invalidate is the pending queue, not the log's processed_at.
/// Applying or rolling it back on a live database, under a running worker, loses nothing.
@Suite("Pending queue (0005)")
struct PendingQueueTests {
    static func migrator(_ harness: Harness) throws -> Migrator {
        try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
    }

    static func trades(_ harness: Harness, _ range: ClosedRange<Int>, tag: String) throws -> [String] {
        let keys = range.map { "tx:\($0):0x\(tag)\($0)" }
        try harness.seed(keys)
        for id in range { try harness.sql(DeliveryTests.settledTrade(id, "0x\(tag)\(id)")) }
        return keys
    }

    /// The queue holds exactly the events the log had not acknowledged; acknowledged ones stay
    /// acknowledged; the worker then works off the queue without ever writing to the log.
    @Test func theMigrationQueuesExactlyWhatWasPending() throws {
        let harness = try Harness(migrate: false)
        _ = try Self.migrator(harness).up(to: 4)
        let done = try Self.trades(harness, 1...10, tag: "done")
        harness.startWorker()
        try harness.waitUntilProcessed()
        harness.stopWorker()
        #expect(try harness.deleted(among: done).count == 10)
        let waiting = try Self.trades(harness, 11...15, tag: "wait")
        let unprocessed = try harness.sql("SELECT id FROM cache_invalidation.events WHERE processed_at IS NULL ORDER BY id").rows.map { $0[0]! }
        #expect(unprocessed.count == 5)

        #expect(try Self.migrator(harness).up() == [5])
        #expect(try harness.sql("SELECT id FROM cache_invalidation.pending ORDER BY id").rows.map { $0[0]! } == unprocessed)
        #expect(try harness.count("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_pending_idx'") == 0)
        // A new event is queued by emit(), in the bot's transaction.
        let later = try Self.trades(harness, 16...16, tag: "new")
        #expect(try harness.pendingCount == 6)

        harness.startWorker()
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: waiting + later).count == 6)
        // The log was not written: the ten acknowledged before keep their processed_at, the six
        // since have none.
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE processed_at IS NOT NULL") == 10)
        // What was acknowledged is on record for replay --since.
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.acknowledged WHERE min_id <= $1::int8", [unprocessed[0]]) >= 1)
        harness.stopWorker()
    }

    /// A bot transaction that wrote an event before 0005 and commits while the migration waits:
    /// the migration waits for it (and holds new writers off) so that its event is queued too.
    /// Without the lock the copy would not see it, and the worker never would.
    @Test func anEventInFlightDuringTheMigrationIsQueued() throws {
        let harness = try Harness(migrate: false)
        _ = try Self.migrator(harness).up(to: 4)
        let bot = try PGConnection(conninfo: harness.databaseURL, applicationName: "test-bot-in-flight")
        try bot.execute("BEGIN")
        try bot.execute(DeliveryTests.settledTrade(7, "0xinflight"))
        let applying = BackgroundResult()
        let url = harness.databaseURL
        Thread.detachNewThread {
            applying.finish {
                let connection = try PGConnection(conninfo: url, applicationName: "test-migrate-in-flight")
                return try Migrator(connection: connection, directory: Harness.migrationsDirectory, logger: Logger(label: "m") { _ in SwiftLogNoOpLogHandler() }).up()
            }
        }
        // The migration is queued behind the bot's transaction.
        try awaitCondition("the migration waiting for the writer's lock", timeout: 20) { seen in
            let rows = try harness.sql("""
                SELECT coalesce(wait_event_type, ''), pg_blocking_pids(pid)::text, query FROM pg_stat_activity
                WHERE application_name = 'test-migrate-in-flight'
                """).rows
            seen = "\(rows)"
            return rows.contains { $0[0] == "Lock" && $0[1] == "{\(bot.backendPID)}" }
        }
        try bot.execute("COMMIT")
        let result = applying.wait(seconds: 20)
        #expect(result == .success([5]), "\(String(describing: result))")
        #expect(try harness.count("""
            SELECT count(*) FROM cache_invalidation.pending p JOIN cache_invalidation.events e USING (id)
            WHERE e.payload->>'tx_hash' = '0xinflight'
            """) == 1)
    }

    /// A worker running on the old schema when 0005 is applied switches to the queue, and back
    /// when it is rolled back; every event on either side of each switch is invalidated, and the
    /// rollback leaves the log as an older worker expects it (acknowledged events have a
    /// processed_at, the others none).
    @Test func aRunningWorkerFollowsTheMigrationBothWays() throws {
        let harness = try Harness(migrate: false)
        let migrator = try Self.migrator(harness)
        _ = try migrator.up(to: 4)
        harness.startWorker { $0.summaryIntervalNanoseconds = 200_000_000 }
        try harness.waitFor("listening") { $0.listening && $0.initialDrainDone }
        var keys = try Self.trades(harness, 1...5, tag: "before")
        try harness.waitUntilProcessed()

        #expect(try migrator.up() == [5])
        keys += try Self.trades(harness, 6...10, tag: "during")
        try harness.waitFor("the switch to the queue", timeout: 10) { _ in
            harness.logs.captured.contains { $0.contains("the pending queue (0005_pending_queue) was applied; reconnecting") }
        }
        keys += try Self.trades(harness, 11...15, tag: "queued")
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: keys).count == keys.count)
        // Written in queue mode: no processed_at.
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE processed_at IS NULL AND payload->>'tx_hash' LIKE '0xqueued%'") == 5)

        #expect(try migrator.down(steps: 1) == [5])
        keys += try Self.trades(harness, 16...20, tag: "after")
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: keys).count == keys.count)
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE processed_at IS NULL") == 0)
        #expect(try harness.count("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_pending_idx'") == 1)
        harness.stopWorker()

        // Rolled back with one event not yet acknowledged: it stays pending for the old schema.
        #expect(try migrator.up() == [5])
        let last = try Self.trades(harness, 21...21, tag: "unacked")
        #expect(try migrator.down(steps: 1) == [5])
        #expect(try harness.sql("SELECT payload->>'tx_hash' FROM cache_invalidation.events WHERE processed_at IS NULL").rows.map { $0[0] } == ["0xunacked21"])
        harness.startWorker()
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: last) == Set(last))
        harness.stopWorker()
    }
}

/// A result handed from a helper thread to the test.
final class BackgroundResult: @unchecked Sendable {
    enum Outcome: Equatable { case success([Int64]), failure(String) }
    private let condition = NSCondition()
    private var outcome: Outcome?

    func finish(_ body: () throws -> [Int64]) {
        let result: Outcome
        do { result = .success(try body()) } catch { result = .failure("\(error)") }
        condition.lock()
        outcome = result
        condition.broadcast()
        condition.unlock()
    }

    func wait(seconds: Double) -> Outcome? {
        let deadline = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        while outcome == nil && condition.wait(until: deadline) {}
        return outcome
    }
}
