import CacheInvalidator
import Foundation
import Glibc
import Logging
import PostgresClient
import Testing

/// The fixtures other tests build failover and pooling cases on: these show that they do what
/// they say, including the cases where something must *not* happen (a commit that never reached
/// the standby is lost; a replay wait that cannot succeed fails).
@Suite("Fixtures: a replicated PostgreSQL and PgBouncer", .serialized)
struct ReplicationFixtureTests {
    @Test("async: the standby replays, a frozen WAL receiver loses a commit, the promoted standby takes writes without it")
    func asynchronousFailoverLosesUnreceivedCommit() throws {
        let cluster = try ReplicatedPostgres(synchronous: false)
        defer { cluster.stop() }
        let database = try cluster.createDatabase()
        let primary = try PGConnection(conninfo: cluster.url(database: database, port: cluster.primaryPort))
        _ = try Migrator(connection: primary, directory: Harness.migrationsDirectory, logger: Logger(label: "fixture-migrate") { _ in SwiftLogNoOpLogHandler() }).up()
        _ = try primary.execute("CREATE TABLE fixture_rows (id int PRIMARY KEY)")
        _ = try primary.execute("INSERT INTO fixture_rows VALUES (1)")

        try cluster.waitForStandbyToReplay()
        let standby = try PGConnection(conninfo: cluster.url(database: database, port: cluster.standbyPort))
        #expect(try standby.execute("SELECT pg_is_in_recovery(), inet_server_port()").rows == [["t", String(cluster.standbyPort)]])
        #expect(try ids(standby) == [1])
        #expect(try standby.execute("SELECT to_regclass('cache_invalidation.events') IS NOT NULL").rows == [["t"]], "the migrations replicated")

        try cluster.freezeWalReceiver()
        _ = try primary.execute("INSERT INTO fixture_rows VALUES (2)")
        #expect(try ids(primary) == [1, 2])
        #expect(throws: ReplicatedPostgres.FixtureError.self, "a standby that receives nothing never catches up") {
            try cluster.waitForStandbyToReplay(timeout: 0.5)
        }
        #expect(try ids(standby) == [1])

        try cluster.stopPrimaryImmediately()
        #expect(throws: PostgresError.self) { _ = try PGConnection(conninfo: cluster.url(database: database, port: cluster.primaryPort)) }
        try cluster.promoteStandby()
        // The frozen receiver was killed, so the standby restarted: a new connection.
        let promoted = try PGConnection(conninfo: cluster.url(database: database, port: cluster.standbyPort))
        #expect(try promoted.execute("SELECT pg_is_in_recovery()").rows == [["f"]])
        _ = try promoted.execute("INSERT INTO fixture_rows VALUES (3)")
        #expect(try ids(promoted) == [1, 3], "row 2 was committed on the primary only")
    }

    @Test("sync: a commit is on the standby when it returns, survives failover, and the multi-host URL then reaches the promoted standby")
    func synchronousFailoverKeepsCommits() throws {
        let cluster = try ReplicatedPostgres(synchronous: true)
        defer { cluster.stop() }
        let database = try cluster.createDatabase()
        let url = cluster.multiHostURL(database: database)
        let primary = try PGConnection(conninfo: url)
        #expect(try primary.execute("SELECT pg_is_in_recovery(), inet_server_port()").rows == [["f", String(cluster.primaryPort)]],
                "before failover the multi-host URL reaches the primary")
        _ = try primary.execute("CREATE TABLE fixture_rows (id int PRIMARY KEY)")
        let standby = try PGConnection(conninfo: cluster.url(database: database, port: cluster.standbyPort))

        // remote_apply: the commit returns once the standby has replayed it, so it is readable there at once.
        _ = try primary.execute("BEGIN; SET LOCAL synchronous_commit = remote_apply; INSERT INTO fixture_rows VALUES (1); COMMIT")
        #expect(try ids(standby) == [1])

        // on (the configured level): the commit returns once the standby has flushed it, so it
        // survives the primary's immediate death though nobody waited for the standby to replay.
        _ = try primary.execute("INSERT INTO fixture_rows VALUES (2)")
        try cluster.stopPrimaryImmediately()
        try cluster.promoteStandby()
        #expect(try ids(standby) == [1, 2], "a hot-standby connection survives a promotion")

        let failedOver = try PGConnection(conninfo: url)
        #expect(try failedOver.execute("SELECT pg_is_in_recovery(), inet_server_port()").rows == [["f", String(cluster.standbyPort)]])
        _ = try failedOver.execute("INSERT INTO fixture_rows VALUES (3)")
        #expect(try ids(failedOver) == [1, 2, 3])
        // The new timeline shows in the WAL file names at once (the control file's checkpoint
        // only once the end-of-recovery checkpoint, which runs in the background, is done).
        #expect(try failedOver.execute("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").rows == [["00000002"]])
    }

    @Test("PgBouncer: session and transaction pooling answer and hand out backends as their mode says")
    func pgBouncerPoolModes() throws {
        let backendPort = try TestServers.get().postgresPort

        let session = try PgBouncer(poolMode: .session, backendPort: backendPort)
        defer { session.stop() }
        let sessionClient = try PGConnection(conninfo: session.url())
        #expect(try sessionClient.execute("SELECT 1").rows == [["1"]])
        let sessionBackend = try transactionBackend(sessionClient)
        #expect(try transactionBackend(sessionClient) == sessionBackend, "session mode: a client keeps its backend")
        let otherSessionClient = try PGConnection(conninfo: session.url())
        #expect(try transactionBackend(otherSessionClient) != sessionBackend, "session mode: an idle client's backend is not lent")

        let pooled = try PgBouncer(poolMode: .transaction, backendPort: backendPort)
        defer { pooled.stop() }
        let first = try PGConnection(conninfo: pooled.url())
        let second = try PGConnection(conninfo: pooled.url())
        #expect(try first.execute("SELECT 1").rows == [["1"]])
        let firstBackend = try transactionBackend(first)
        // The backend is idle again: the next transaction, another client's, gets it (PgBouncer
        // reuses idle server connections, the last released first)...
        _ = try second.execute("BEGIN")
        #expect(try backendPID(second) == firstBackend, "transaction mode: clients share a backend")
        // ...and while that transaction holds it, the first client's next one runs on another.
        #expect(try transactionBackend(first) != firstBackend, "transaction mode: one client, two backends")
        _ = try second.execute("COMMIT")

        let statement = try PgBouncer(poolMode: .statement, backendPort: backendPort)
        defer { statement.stop() }
        #expect(try PGConnection(conninfo: statement.url()).execute("SELECT 1").rows == [["1"]])

        pooled.stop()
        pooled.stop()
        #expect(throws: PostgresError.self, "a stopped PgBouncer is gone") { _ = try PGConnection(conninfo: pooled.url()) }
    }

    private func ids(_ connection: PGConnection) throws -> [Int] {
        try connection.execute("SELECT id FROM fixture_rows ORDER BY id").rows.compactMap { $0[0].flatMap { Int($0) } }
    }

    private func backendPID(_ connection: PGConnection) throws -> Int32? {
        try connection.execute("SELECT pg_backend_pid()").rows.first?[0].flatMap { Int32($0) }
    }

    /// The backend one transaction of `connection` ran on.
    private func transactionBackend(_ connection: PGConnection) throws -> Int32? {
        _ = try connection.execute("BEGIN")
        let pid = try backendPID(connection)
        _ = try connection.execute("COMMIT")
        return pid
    }
}
