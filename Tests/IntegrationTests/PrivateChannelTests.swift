import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
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
        try harness.waitUntilNotified()
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
    /// name (not even one that reads all data, or that default privileges grant every new table
    /// to), see it in a debug message of its own NOTIFY, or subscribe; and what it sends on the
    /// public channel in the private format deletes nothing.
    @Test func aRoleWithoutTheGrantCanNeitherLearnNorUseTheChannel() throws {
        let harness = try Harness(migrate: false)
        let role = "snoop_\(harness.databaseName)"
        // Default privileges in force when 0004 creates its table, as a DBA may have set them up.
        try harness.sql("CREATE ROLE \(role) LOGIN; GRANT pg_read_all_data TO \(role); ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO \(role)")
        defer { _ = try? harness.sql("DROP OWNED BY \(role); DROP ROLE \(role)") }
        _ = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger()).up()
        try harness.sql("ALTER DATABASE \(harness.databaseName) SET log_statement = 'all'")
        harness.startWorker()
        try harness.waitUntilNotified()
        try harness.seed(["user:7", "wallet_balance:0xA7"])
        let name = try Self.channelName(harness)
        let url = harness.servers.postgresURL(database: harness.databaseName, user: role)
        let snoop = try PGConnection(conninfo: url)
        #expect(try snoop.execute("SELECT count(*) FROM cache_invalidation.private_channel")[0, 0] == "0", "row-level security hides the row")
        for statement in ["SELECT cache_invalidation.listen_privately()",
                          "UPDATE cache_invalidation.private_channel SET name = 'cache_invalidation_00000000000000000000000000000000'",
                          "INSERT INTO cache_invalidation.private_channel (name, one_row) VALUES ('cache_invalidation_00000000000000000000000000000000', false)"] {
            #expect { try snoop.execute(statement) } throws: { ($0 as? PostgresError)?.sqlState == "42501" }
        }
        // Its own NOTIFY, traced: the DEBUG lines name no channel of emit()'s.
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("snoop-\(UUID().uuidString).sql").path
        defer { unlink(script) }
        try "SET trace_notify = on;\nSET client_min_messages = debug1;\nBEGIN;\nSELECT cache_invalidation.request_refresh(7);\nNOTIFY mine;\nROLLBACK;\n".write(toFile: script, atomically: true, encoding: .utf8)
        let traced = try MigrationTests.psql(url, file: script)
        #expect(traced.status == 0 && traced.output.contains("Async_Notify(mine)"), "\(traced.output)")
        #expect(!traced.output.contains(name) && !traced.output.contains("cache_invalidation_"), "\(traced.output)")
        // The worker's own statements never name the channel: every statement of its session
        // went to the server log (log_statement = all for this database), the name is not there.
        let serverLog = try String(contentsOfFile: harness.servers.directory + "/postgres.log", encoding: .utf8)
        #expect(serverLog.contains("cache_invalidation.listen_privately()"), "the worker's statements were logged")
        #expect(!serverLog.contains(name))
        // The private format on the public channel is not an event id: ignored, counted.
        try snoop.execute("SELECT pg_notify('cache_invalidation', $1)", [#"1 wallet_created {"telegram_id":"7","address":"0xA7"}"#])
        try harness.waitFor("the forgery counted") { $0.malformedNotifications == 1 }
        #expect(try harness.deleted(among: ["user:7", "wallet_balance:0xA7"]).isEmpty)
        #expect(harness.worker!.statistics.snapshot.eventsProcessed == 0)
        harness.stopWorker()
    }

    /// Should the name leak, a forged event that carries the id of a real one (here: ahead of a
    /// wallet deletion, whose pattern rule only the log may trigger) cannot stand in for it: the
    /// log does not hold that event, so nothing is acknowledged in its name, and the real event is
    /// read from the log and fully processed.
    @Test func aForgedEventCannotStandInForTheRealOne() throws {
        let harness = try Harness()
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (101, '0xA1')")
        harness.startWorker()
        try harness.waitUntilProcessed()
        try harness.waitFor("the wallet event") { $0.eventsProcessed == 1 }
        try harness.seed(["temp_sell_data:101:s1", "user:101", "portfolio:101"])
        let name = try Self.channelName(harness)
        try harness.sql("BEGIN")
        let next = try harness.sql("SELECT last_value + 1 FROM cache_invalidation.events_id_seq")[0, 0]!
        try harness.sql("SELECT pg_notify($1, $2)", [name, next + #" settings_changed {"telegram_id":"101"}"#])
        try harness.sql("DELETE FROM wallets WHERE telegram_id = 101")
        try harness.sql("COMMIT")
        #expect(try harness.sql("SELECT kind FROM cache_invalidation.events WHERE id = $1", [next])[0, 0] == "wallet_deleted")
        try harness.waitUntilProcessed()
        try harness.waitFor("the deletion recorded") { $0.eventsProcessed == 2 }
        #expect(try harness.deleted(among: ["temp_sell_data:101:s1", "user:101", "portfolio:101"]) == ["temp_sell_data:101:s1", "user:101", "portfolio:101"])
        // The creation was drained at start, the deletion read from the log.
        let snapshot = harness.worker!.statistics.snapshot
        #expect(snapshot.eventsFromNotifications == 0)
        // The forgery's keys were sent, but no event of its kind was: keys_total{kind} counts
        // only what the log confirmed (a CI run once counted an unconfirmed batch's keys twice).
        #expect(snapshot.keysByKind["settings_changed", default: 0] == 0, "\(snapshot.keysByKind)")
        #expect(snapshot.keysByKind["wallet_deleted", default: 0] > 0)
        harness.stopWorker()
    }

    /// Should the name leak, the worker still parses the channel defensively: a malformed payload
    /// is logged and counted, an event it would not take from a notification (an unknown kind, a
    /// payload the log path would report) is looked up in the log by id, and good events flow.
    @Test func hostilePayloadsOnThePrivateChannelAreRefusedOrCheckedAgainstTheLog() throws {
        let harness = try Harness()
        harness.startWorker()
        try harness.waitUntilNotified()
        let name = try Self.channelName(harness)
        try harness.seed(["tx:8:0xgood", "user:66", "user:67"])
        let sender = try PGConnection(conninfo: harness.databaseURL)
        let malformed = ["", "garbage", "66 wallet_created", "66 wallet_created ", "x wallet_created {}", "66 WALLET {}",
                         "66  wallet_created {}", String(repeating: "9", count: 7_900)]
        for payload in malformed { try sender.execute("SELECT pg_notify($1, $2)", [name, payload]) }
        // Well-formed but not for the fast path: read from the log by id, which does not hold them.
        for payload in [#"900001 future_kind {"telegram_id":"66"}"#, #"900002 wallet_created {"telegram_id":{"x":1}}"#,
                        "900003 wallet_created not json", #"900004 table_truncated {"table":"wallets"}"#] {
            try sender.execute("SELECT pg_notify($1, $2)", [name, payload])
        }
        try harness.waitFor("the malformed ones counted") { $0.malformedNotifications == UInt64(malformed.count) }
        try harness.waitFor("the others found forged in the log") { $0.forgedNotifications == 4 }
        #expect(try harness.deleted(among: ["tx:8:0xgood", "user:66", "user:67"]).isEmpty)
        // Fit for the fast path, but no such event: what a leaked name can do is delete the keys
        // it names (never a pattern); nothing is acknowledged or recorded for it, and it is
        // counted as forged.
        try sender.execute("SELECT pg_notify($1, $2)", [name, #"900005 wallet_created {"telegram_id":"67","address":"0xA67"}"#])
        try harness.waitFor("the fifth forgery counted") { $0.forgedNotifications == 5 }
        try harness.sql(DeliveryTests.settledTrade(8, "0xgood"))
        try harness.waitUntilProcessed()
        try harness.waitFor("only the real event recorded") { $0.eventsProcessed == 1 }
        #expect(try harness.deleted(among: ["tx:8:0xgood", "user:66", "user:67"]) == ["tx:8:0xgood", "user:67"])
        #expect(harness.worker!.statistics.snapshot.eventsFromNotifications == 1)
        let errors = harness.logs.captured.filter { $0.contains("malformed notification on the private channel") }
        #expect(errors.count == malformed.count && errors.allSatisfy { !$0.contains("\n") && $0.count < 2_000 })
        #expect(!errors.contains { $0.contains("garbage") || $0.contains("99999") }, "payloads are not logged")
        harness.stopWorker()
    }

    /// A worker whose role was not granted listen_privately() says what to grant, once, and works
    /// as before 0004 (each event read from the log after its id's notification).
    @Test func withoutTheGrantTheWorkerWarnsAndReadsTheLog() throws {
        let harness = try Harness()
        let role = "nogrant_\(harness.databaseName)"
        try harness.sql("""
            CREATE ROLE \(role) LOGIN; GRANT USAGE ON SCHEMA cache_invalidation TO \(role);
            GRANT SELECT, UPDATE (processed_at) ON cache_invalidation.events TO \(role);
            GRANT SELECT, DELETE ON cache_invalidation.pending TO \(role);
            GRANT SELECT, INSERT, DELETE ON cache_invalidation.acknowledged TO \(role)
            """)
        defer { _ = try? harness.sql("DROP OWNED BY \(role); DROP ROLE \(role)") }
        let url = harness.servers.postgresURL(database: harness.databaseName, user: role)
        harness.startWorker { $0.databaseURL = url }
        try harness.waitUntilNotified()
        try harness.seed(["tx:9:0xslow"])
        try harness.sql(DeliveryTests.settledTrade(9, "0xslow"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:9:0xslow"]) == ["tx:9:0xslow"])
        try harness.waitFor("recorded") { $0.eventsProcessed == 1 }
        #expect(harness.worker!.statistics.snapshot.eventsFromNotifications == 0)
        // Once, not at every connect: the worker's session is ended and it takes the lead again.
        try harness.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", [role])
        try harness.waitFor("connected again and listening") { $0.postgresConnects >= 2 && $0.listening }
        try harness.seed(["tx:10:0xslow2"])
        try harness.sql(DeliveryTests.settledTrade(10, "0xslow2"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:10:0xslow2"]) == ["tx:10:0xslow2"])
        let warnings = harness.logs.captured.filter { $0.contains("cannot listen on the private channel") }
        #expect(warnings.count == 1 && warnings[0].contains("GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately()"))
        harness.stopWorker()
    }

    /// Every listen_privately() draws a new name (a copy of an old one, in a dump, is stale);
    /// re-applying keeps it; down restores 0003's emit(), which notifies the id only; 0004
    /// refuses to go on without 0003.
    @Test func migrationRotatesTheNameRollsBackAndNeedsQuietNotify() throws {
        let harness = try Harness()
        let migrations = Harness.migrationsDirectory
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.private_channel") == 0, "no name before a worker listens")
        let first = try #require(try harness.sql("SELECT cache_invalidation.listen_privately()")[0, 0])
        let listener = try PGConnection(conninfo: harness.databaseURL)
        let name = try #require(try listener.execute("SELECT cache_invalidation.listen_privately()")[0, 0])
        #expect(name != first && name.hasPrefix("cache_invalidation_") && name.utf8.count == 51)
        #expect(try Self.channelName(harness) == name)
        #expect(try MigrationTests.psql(harness.databaseURL, file: migrations + "/0004_private_channel.up.sql").status == 0)
        #expect(try Self.channelName(harness) == name)
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

    /// 0004 gives its table and function to emit()'s owner, whoever applies it: row-level security
    /// shows the row to the table's owner only, and emit() reads it with its owner's rights.
    @Test func theChannelBelongsToEmitsOwnerWhoeverAppliesTheMigration() throws {
        let harness = try Harness(migrate: false)
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        _ = try migrator.up(to: 3)
        let dba = "dba_\(harness.databaseName)"
        try harness.sql("CREATE ROLE \(dba) LOGIN; GRANT CREATE, USAGE ON SCHEMA cache_invalidation TO \(dba); GRANT postgres TO \(dba)")
        defer { _ = try? harness.sql("DROP OWNED BY \(dba); DROP ROLE \(dba)") }
        let applied = try MigrationTests.psql(harness.servers.postgresURL(database: harness.databaseName, user: dba),
                                              file: Harness.migrationsDirectory + "/0004_private_channel.up.sql")
        #expect(applied.status == 0, "\(applied.output)")
        let owners = try harness.sql("""
            SELECT (SELECT relowner FROM pg_class WHERE oid = 'cache_invalidation.private_channel'::regclass) = p.proowner,
                   (SELECT proowner FROM pg_proc WHERE oid = 'cache_invalidation.listen_privately()'::regprocedure) = p.proowner
            FROM pg_proc p WHERE p.oid = 'cache_invalidation.emit(text,jsonb)'::regprocedure
            """)
        #expect(owners.rows[0] == ["t", "t"])
        #expect(try harness.sql("SELECT relpersistence FROM pg_class WHERE oid = 'cache_invalidation.private_channel'::regclass")[0, 0] == "u")
        harness.startWorker()
        try harness.waitUntilNotified()
        try harness.seed(["user:3"])
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (3, '0xO3')")
        try harness.waitUntilProcessed()
        try harness.waitFor("taken from the notification") { $0.eventsFromNotifications == 1 }
        #expect(try harness.deleted(among: ["user:3"]) == ["user:3"])
        harness.stopWorker()
    }

    /// Waits (at most 5 s) for `count` notifications on `connection`; fails the test with those
    /// that came if fewer did.
    static func notifications(on connection: PGConnection, count: Int, sourceLocation: SourceLocation = #_sourceLocation) throws -> [PGNotification] {
        var received: [PGNotification] = []
        return try awaitValue("\(count) notifications", timeout: 5, interval: 5_000, sourceLocation: sourceLocation) { seen in
            try connection.consumeInput()
            received += connection.notifications()
            seen = "\(received)"
            return received.count >= count ? received : nil
        }
    }

    /// The acknowledgement carries payloads in an array literal: values Swift groups oddly (a
    /// combining mark right after a quote) reach Postgres byte for byte, so such an event is
    /// confirmed like any other, without a failed statement and a reconnect.
    @Test func oddUnicodeRoundTripsAndStaysOnTheFastPath() throws {
        let harness = try Harness()
        let values = ["\u{301}\"q", "x\\\u{301}", "\u{600}\"", "\"\u{FE0F}\\\u{1F3FD}", "plain", "", "a,b}", "line\nbreak"]
        let hex = try harness.sql("""
            SELECT coalesce(string_agg(encode(convert_to(v, 'UTF8'), 'hex'), ',' ORDER BY o), '')
            FROM unnest($1::text[]) WITH ORDINALITY AS t(v, o)
            """, [PostgresArray.text(values)])[0, 0]
        #expect(hex == values.map { $0.utf8.map { String(format: "%02x", $0) }.joined() }.joined(separator: ","))

        harness.startWorker()
        try harness.waitUntilNotified()
        let address = "\u{301}\"0xodd\\\u{301}"
        try harness.seed(["tx:12:0xodd", "wallet_balance:\(address)"])
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            VALUES (12, $1, '0xT', 'buy', 'manual', '0xodd', 'confirmed')
            """, [address])
        try harness.waitUntilProcessed()
        try harness.waitFor("taken from the notification") { $0.eventsFromNotifications == 1 }
        #expect(try harness.deleted(among: ["tx:12:0xodd", "wallet_balance:\(address)"]).count == 2)
        #expect(harness.worker!.statistics.snapshot.postgresConnects == 1, "no failed statement, no reconnect")
        harness.stopWorker()
    }
}
