import Foundation
import PostgresClient
import Testing

/// deploy/postgres/roles.sql gives the worker exactly what it needs: it runs as that role, and
/// that role can touch nothing of the bot's.
@Suite("Least privilege")
struct PrivilegeTests {
    @Test func workerRunsAsTheRestrictedRoleWhichCanDoNothingElse() throws {
        let harness = try Harness()
        let rolesFile = Harness.repositoryRoot + "/deploy/postgres/roles.sql"
        // The role is cluster-wide and other tests apply the file too: psql's own idempotence is under test.
        for _ in 0..<2 {
            let result = try MigrationTests.psql(harness.databaseURL, file: rolesFile)
            #expect(result.status == 0, "\(result.output)")
        }
        let workerURL = harness.servers.postgresURL(database: harness.databaseName, user: "cache_invalidator")
        harness.startWorker { $0.databaseURL = workerURL }
        try harness.waitUntilNotified()
        try harness.seed(["tx:9:0xrole", "user:9"])
        try harness.sql(DeliveryTests.settledTrade(9, "0xrole"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:9:0xrole", "user:9"]) == ["tx:9:0xrole"])
        // The grant of listen_privately() works: the event came from its notification.
        try harness.waitFor("the event taken from the private channel") { $0.eventsFromNotifications == 1 }
        #expect(!harness.logs.captured.contains { $0.contains("cannot listen on the private channel") })
        harness.stopWorker()

        let worker = try PGConnection(conninfo: workerURL)
        let forbidden = [
            "SELECT * FROM wallets",
            "INSERT INTO trades (telegram_id, wallet_address, token_address, status) VALUES (1, 'x', 'y', 'confirmed')",
            #"INSERT INTO cache_invalidation.events (kind, payload) VALUES ('table_truncated', '{"table":"wallets"}')"#,
            #"SELECT cache_invalidation.emit('table_truncated', '{"table":"wallets"}')"#,
            "UPDATE cache_invalidation.events SET payload = '{}'",
            "TRUNCATE trades",
            // The channel's name is the capability to send events on it: not readable.
            "SELECT name FROM cache_invalidation.private_channel",
            // Nothing can be queued by the worker, only taken off the queue.
            "INSERT INTO cache_invalidation.pending (id) VALUES (1)",
            "UPDATE cache_invalidation.pending SET id = id + 1",
            "UPDATE cache_invalidation.acknowledged SET min_id = 0",
        ]
        for statement in forbidden {
            #expect {
                try worker.execute(statement)
            } throws: { error in
                (error as? PostgresError)?.sqlState == "42501"
            }
        }
        // What it needs still works: reading, and deleting (pruning past retention).
        #expect(try worker.execute("SELECT count(*) FROM cache_invalidation.events").rows.count == 1)
        #expect(try worker.execute("DELETE FROM cache_invalidation.events WHERE processed_at < now() - interval '1 day'").affected == 0)
        // Acknowledging in the queue, recording it, and pruning those records.
        #expect(try worker.execute("DELETE FROM cache_invalidation.pending WHERE id = -1").affected == 0)
        #expect(try worker.execute("INSERT INTO cache_invalidation.acknowledged (min_id) VALUES (-1)").affected == 1)
        #expect(try worker.execute("DELETE FROM cache_invalidation.acknowledged WHERE min_id = -1").affected == 1)
    }
}
