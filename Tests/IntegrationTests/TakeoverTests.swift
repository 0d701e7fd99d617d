import CacheInvalidator
import Foundation
import Glibc
import PostgresClient
import Testing

/// A worker that takes the lead after another session held the polling lock W: writers that
/// skipped their NOTIFY for that session may still be open, and none of them will ever notify.
@Suite("Takeover: settling before trusting notifications")
struct TakeoverTests {
    /// A previous leader polled (held W) and vanished; a writer that skipped its NOTIFY for it is
    /// still open when the new lead drains, and commits afterwards. The new lead settles (polls
    /// and waits for G) instead of trusting notifications at once, so it finds that event when
    /// it commits, not at the next sweep (pushed out of reach here).
    @Test func aQuietWriterOpenAcrossATakeoverIsFoundWhenItCommits() throws {
        let harness = try Harness()
        let previousLeader = try PGConnection(conninfo: harness.databaseURL, applicationName: "cache-invalidator")
        #expect(try previousLeader.execute("SELECT pg_try_advisory_lock($1::int8)", [String(0x6361_6368_6569_6E78 as Int64)])[0, 0] == "t")
        // The writer skips its NOTIFY (W is held) and stays open.
        try harness.seed(["tx:7:0xacross"])
        let writer = try PGConnection(conninfo: harness.databaseURL, applicationName: "test-quiet-writer")
        try writer.execute("BEGIN")
        try writer.execute(DeliveryTests.settledTrade(7, "0xacross"))
        harness.startWorker {
            $0.summaryIntervalNanoseconds = 600_000_000_000
            $0.pollingFullScanNanoseconds = 600_000_000_000
        }
        try harness.waitFor("the lead taken and the log drained") { $0.active && $0.redisUp && $0.initialDrainDone }
        #expect(try harness.count("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", [String(previousLeader.backendPID)]) == 0,
                "the previous leader's session was ended")
        #expect(harness.worker!.statistics.snapshot.polling, "trusted notifications while a quiet writer was open")
        try writer.execute("COMMIT")
        let deadline = Date().addingTimeInterval(3)
        while try harness.exists("tx:7:0xacross") && Date() < deadline { usleep(2_000) }
        #expect(try !harness.exists("tx:7:0xacross"), "the quiet writer's event waited for the sweep")
        try harness.waitFor("notified once the writer ended") { !$0.polling }
        harness.stopWorker()
    }
}
