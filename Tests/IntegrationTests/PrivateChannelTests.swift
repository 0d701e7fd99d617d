import Foundation
import Glibc
import PostgresClient
import Testing

/// Migration 0004: emit() also sends the event itself on a channel whose name is a secret, and
/// the worker deletes straight from that notification; the log stays the source of truth.
@Suite("Private channel")
struct PrivateChannelTests {
    static func channelName(_ harness: Harness) throws -> String {
        try #require(try harness.sql("SELECT name FROM cache_invalidation.private_channel")[0, 0])
    }

    @Test func settledTradeIsDeletedFromItsNotificationAndAcknowledgedInTheLog() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("listening") { $0.listening && $0.initialDrainDone }
        try harness.seed(["tx:5:0xfast", "portfolio:5", "portfolio:6"])
        try harness.sql(DeliveryTests.settledTrade(5, "0xfast"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:5:0xfast", "portfolio:5", "portfolio:6"]) == ["tx:5:0xfast", "portfolio:5"])
        try harness.waitFor("taken from the notification") { $0.eventsFromNotifications == 1 && $0.eventsProcessed == 1 }
        // Its id came on the public channel too, and cost nothing: nothing forged, nothing twice.
        let snapshot = harness.worker!.statistics.snapshot
        #expect(snapshot.forgedNotifications == 0 && snapshot.malformedNotifications == 0)
        harness.stopWorker()
    }

    /// Pattern and whole-family deletions come only from the log, whatever the notification says.
    @Test func patternRulesAreReadFromTheLog() throws {
        let harness = try Harness()
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (101, '0xA1')")
        harness.startWorker()
        try harness.waitUntilProcessed()
        try harness.waitFor("the wallet event") { $0.eventsProcessed == 1 }
        let fromNotifications = harness.worker!.statistics.snapshot.eventsFromNotifications
        try harness.seed(["temp_sell_data:101:s1", "user:101", "temp_sell_data:202:s1"])
        try harness.sql("DELETE FROM wallets WHERE telegram_id = 101")
        try harness.waitUntilProcessed()
        try harness.waitFor("the delete event") { $0.eventsProcessed == 2 }
        #expect(try harness.deleted(among: ["temp_sell_data:101:s1", "user:101", "temp_sell_data:202:s1"]) == ["temp_sell_data:101:s1", "user:101"])
        #expect(harness.worker!.statistics.snapshot.eventsFromNotifications == fromNotifications)
        harness.stopWorker()
    }

    /// The secret is what makes the channel trustworthy: no role without the grant can read the
    /// name or subscribe, and what it sends on the public channel in the private format deletes
    /// nothing.
    @Test func aRoleWithoutTheGrantCanNeitherLearnNorUseTheChannel() throws {
        let harness = try Harness()
        let role = "snoop_\(harness.databaseName)"
        try harness.sql("CREATE ROLE \(role) LOGIN; GRANT USAGE ON SCHEMA cache_invalidation TO \(role)")
        defer { _ = try? harness.sql("DROP OWNED BY \(role); DROP ROLE \(role)") }
        harness.startWorker()
        try harness.waitFor("listening") { $0.listening && $0.initialDrainDone }
        try harness.seed(["user:7", "wallet_balance:0xA7"])
        let snoop = try PGConnection(conninfo: harness.servers.postgresURL(database: harness.databaseName, user: role))
        for statement in ["SELECT name FROM cache_invalidation.private_channel", "SELECT cache_invalidation.listen_privately()"] {
            #expect { try snoop.execute(statement) } throws: { ($0 as? PostgresError)?.sqlState == "42501" }
        }
        // The worker's own statements never name the channel.
        let name = try Self.channelName(harness)
        #expect(try harness.count("SELECT count(*) FROM pg_stat_activity WHERE position($1 IN query) > 0 AND pid <> pg_backend_pid()", [name]) == 0)
        // The private format on the public channel is not an event id: ignored, counted.
        try snoop.execute("SELECT pg_notify('cache_invalidation', $1)", [#"1 wallet_created 1 {"telegram_id":"7","address":"0xA7"}"#])
        try harness.waitFor("the forgery counted") { $0.malformedNotifications == 1 }
        #expect(try harness.deleted(among: ["user:7", "wallet_balance:0xA7"]).isEmpty)
        #expect(harness.worker!.statistics.snapshot.eventsProcessed == 0)
        harness.stopWorker()
    }

    /// Should the name leak, the worker still parses the channel defensively: a malformed payload
    /// is logged and counted, an event it would not take from a notification (an unknown kind, a
    /// payload the log path would report) is looked up in the log by id, and good events flow.
    @Test func hostilePayloadsOnThePrivateChannelAreRefusedOrCheckedAgainstTheLog() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitFor("listening") { $0.listening && $0.initialDrainDone }
        let name = try Self.channelName(harness)
        try harness.seed(["tx:8:0xgood", "user:66", "user:67"])
        let sender = try PGConnection(conninfo: harness.databaseURL)
        let malformed = ["", "garbage", "66 wallet_created", "66 wallet_created 1 ", "x wallet_created 1 {}", "66 WALLET 1 {}",
                         "66 wallet_created -5 {}", String(repeating: "9", count: 7_900)]
        for payload in malformed { try sender.execute("SELECT pg_notify($1, $2)", [name, payload]) }
        // Well-formed but not for the fast path: read from the log by id, which does not hold them.
        for payload in [#"900001 future_kind 1 {"telegram_id":"66"}"#, #"900002 wallet_created 1 {"telegram_id":{"x":1}}"#,
                        "900003 wallet_created 1 not json", #"900004 table_truncated 1 {"table":"wallets"}"#] {
            try sender.execute("SELECT pg_notify($1, $2)", [name, payload])
        }
        try harness.waitFor("the malformed ones counted") { $0.malformedNotifications == UInt64(malformed.count) }
        try harness.waitFor("the others found forged in the log") { $0.forgedNotifications == 4 }
        try harness.sql(DeliveryTests.settledTrade(8, "0xgood"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:8:0xgood", "user:66", "user:67"]) == ["tx:8:0xgood"])
        let errors = harness.logs.captured.filter { $0.contains("malformed notification on the private channel") }
        #expect(errors.count == malformed.count && errors.allSatisfy { !$0.contains("\n") && $0.count < 2_000 })
        harness.stopWorker()
    }

    /// A worker whose role was not granted listen_privately() says what to grant, once, and works
    /// as before 0004 (each event read from the log after its id's notification).
    @Test func withoutTheGrantTheWorkerWarnsAndReadsTheLog() throws {
        let harness = try Harness()
        let role = "nogrant_\(harness.databaseName)"
        try harness.sql("""
            CREATE ROLE \(role) LOGIN; GRANT USAGE ON SCHEMA cache_invalidation TO \(role);
            GRANT SELECT, UPDATE (processed_at) ON cache_invalidation.events TO \(role)
            """)
        defer { _ = try? harness.sql("DROP OWNED BY \(role); DROP ROLE \(role)") }
        let url = harness.servers.postgresURL(database: harness.databaseName, user: role)
        harness.startWorker { $0.databaseURL = url }
        try harness.waitFor("listening") { $0.listening && $0.initialDrainDone }
        try harness.seed(["tx:9:0xslow"])
        try harness.sql(DeliveryTests.settledTrade(9, "0xslow"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:9:0xslow"]) == ["tx:9:0xslow"])
        try harness.waitFor("recorded") { $0.eventsProcessed == 1 }
        #expect(harness.worker!.statistics.snapshot.eventsFromNotifications == 0)
        let warnings = harness.logs.captured.filter { $0.contains("cannot listen on the private channel") }
        #expect(warnings.count == 1 && warnings[0].contains("GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately()"))
        harness.stopWorker()
    }

    /// Re-applying keeps the name (a running worker stays subscribed); down restores 0003's
    /// emit(), which notifies the id only; 0004 refuses to go on without 0003.
    @Test func migrationKeepsItsNameRollsBackAndNeedsQuietNotify() throws {
        let harness = try Harness()
        let migrations = Harness.migrationsDirectory
        let name = try Self.channelName(harness)
        #expect(name.hasPrefix("cache_invalidation_") && name.utf8.count == 51)
        #expect(try MigrationTests.psql(harness.databaseURL, file: migrations + "/0004_private_channel.up.sql").status == 0)
        #expect(try Self.channelName(harness) == name)

        let listener = try PGConnection(conninfo: harness.databaseURL)
        #expect(try listener.execute("SELECT cache_invalidation.listen_privately()")[0, 0] == name)
        try listener.execute("LISTEN cache_invalidation")
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (1, '0xM1')")
        let both = try Self.notifications(on: listener, count: 2)
        #expect(both.map(\.channel) == [name, "cache_invalidation"])
        #expect(both.first?.payload.hasPrefix("1 wallet_created ") == true && both.first?.payload.hasSuffix(#"{"address": "0xM1", "telegram_id": "1"}"#) == true,
                "\(both)")

        for _ in 0..<2 {
            #expect(try MigrationTests.psql(harness.databaseURL, file: migrations + "/0004_private_channel.down.sql").status == 0)
        }
        #expect(try harness.count("SELECT count(*) FROM cache_invalidator_schema_migrations WHERE version = 4") == 0)
        #expect(try harness.sql("SELECT to_regclass('cache_invalidation.private_channel'), to_regprocedure('cache_invalidation.listen_privately()')").rows[0] == [nil, nil])
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (2, '0xM2')")
        #expect(try Self.notifications(on: listener, count: 1).map(\.payload) == ["2"])

        #expect(try MigrationTests.psql(harness.databaseURL, file: migrations + "/0003_quiet_notify.down.sql").status == 0)
        let refused = try MigrationTests.psql(harness.databaseURL, file: migrations + "/0004_private_channel.up.sql")
        #expect(refused.status != 0 && refused.output.contains("needs 0003_quiet_notify"), "\(refused.output)")
        #expect(try harness.sql("SELECT to_regclass('cache_invalidation.private_channel')")[0, 0] == nil)
    }

    /// Waits (at most 5 s) for `count` notifications on `connection`.
    static func notifications(on connection: PGConnection, count: Int) throws -> [PGNotification] {
        var received: [PGNotification] = []
        let deadline = Date().addingTimeInterval(5)
        while received.count < count && Date() < deadline {
            try connection.consumeInput()
            received += connection.notifications()
            if received.count < count { usleep(5_000) }
        }
        return received
    }
}
