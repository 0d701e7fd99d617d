import Foundation
import Testing

/// `cache-invalidator check` as a deploy gate: exit 0 when all is well, 1 with one line per
/// problem otherwise.
@Suite("check")
struct CheckTests {
    static func check(_ harness: Harness, databaseURL: String? = nil, redisURL: String? = nil) throws -> ProcessTests.Outcome {
        try ProcessTests.run(["check"], environment: [
            "DATABASE_URL": databaseURL ?? harness.databaseURL,
            "REDIS_URL": redisURL ?? harness.servers.redisURL,
            "KEY_PREFIX": harness.prefix,
        ])
    }

    @Test func healthySetupPasses() throws {
        let harness = try Harness()
        let outcome = try Self.check(harness)
        #expect(outcome.status == 0, "\(outcome.output)")
        for subject in ["postgres", "migrations", "privileges", "triggers", "backlog", "notify queue", "redis"] {
            #expect(outcome.output.contains("ok   \(subject):"), "\(subject) missing from:\n\(outcome.output)")
        }
        #expect(!outcome.output.contains("FAIL"))
    }

    @Test func missingOrDisabledTriggersFailWithTheirNames() throws {
        let harness = try Harness()
        try harness.sql("ALTER TABLE trades DISABLE TRIGGER cache_invalidation_trades_update")
        try harness.sql("DROP TRIGGER cache_invalidation_settings_truncate ON settings")
        // Replica-only triggers do not fire in the bot's sessions: as good as missing.
        try harness.sql("ALTER TABLE wallets ENABLE REPLICA TRIGGER cache_invalidation_wallets_insert")
        let outcome = try Self.check(harness)
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL triggers: cache_invalidation_wallets_insert enabled only for replication sessions (tgenabled=R) on public.wallets"), "\(outcome.output)")
        #expect(outcome.output.contains("FAIL triggers: cache_invalidation_trades_update disabled on public.trades"), "\(outcome.output)")
        #expect(outcome.output.contains("FAIL triggers: cache_invalidation_settings_truncate missing on public.settings"), "\(outcome.output)")
        #expect(outcome.output.split(separator: "\n").filter { $0.hasPrefix("FAIL") }.count == 3)
        #expect(outcome.output.contains("ok   backlog:"), "a failing section does not hide the others")
    }

    @Test func unmigratedDatabaseAndUnreachableRedisFail() throws {
        let harness = try Harness(migrate: false)
        let outcome = try Self.check(harness, redisURL: "redis://127.0.0.1:1/0")
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL migrations:") && outcome.output.contains("apply the migrations"), "\(outcome.output)")
        #expect(outcome.output.contains("FAIL redis:") && outcome.output.contains("Connection refused"), "\(outcome.output)")
    }

    @Test func backlogOverTheLimitFails() throws {
        let harness = try Harness()
        try harness.sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, status)
            SELECT g, '0xW', '0xT', 'buy', 'manual', 'confirmed' FROM generate_series(1, 5) g
            """)
        let outcome = try ProcessTests.run(["check", "--max-backlog", "3"], environment: [
            "DATABASE_URL": harness.databaseURL, "REDIS_URL": harness.servers.redisURL, "KEY_PREFIX": harness.prefix])
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL backlog: 5 events pending"), "\(outcome.output)")
    }

    @Test func aRoleThatCannotPruneFailsWhenRetentionIsOn() throws {
        let harness = try Harness()
        let role = "ci_noprune_\(harness.databaseName)"
        try harness.sql("CREATE ROLE \(role) LOGIN")
        try harness.sql("GRANT USAGE ON SCHEMA cache_invalidation TO \(role); GRANT SELECT ON cache_invalidation.events, cache_invalidation.expected_triggers TO \(role); GRANT UPDATE (processed_at) ON cache_invalidation.events TO \(role); GRANT SELECT, DELETE ON cache_invalidation.pending TO \(role); GRANT SELECT, INSERT, DELETE ON cache_invalidation.acknowledged TO \(role)")
        try harness.sql("GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO \(role)")
        let url = harness.servers.postgresURL(database: harness.databaseName, user: role)
        let outcome = try Self.check(harness, databaseURL: url)
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL privileges: missing DELETE on cache_invalidation.events (for --retention)"), "\(outcome.output)")
        let off = try ProcessTests.run(["check"], environment: ["DATABASE_URL": url, "REDIS_URL": harness.servers.redisURL, "KEY_PREFIX": harness.prefix, "RETENTION": "0"])
        #expect(off.status == 0, "\(off.output)")
    }

    @Test func aRoleThatCannotListenPrivatelyFailsWithTheGrantToApply() throws {
        let harness = try Harness()
        let role = "ci_nolisten_\(harness.databaseName)"
        try harness.sql("CREATE ROLE \(role) LOGIN")
        try harness.sql("GRANT USAGE ON SCHEMA cache_invalidation TO \(role); GRANT SELECT ON cache_invalidation.events, cache_invalidation.expected_triggers TO \(role); GRANT DELETE ON cache_invalidation.events TO \(role); GRANT UPDATE (processed_at) ON cache_invalidation.events TO \(role); GRANT SELECT, DELETE ON cache_invalidation.pending TO \(role); GRANT SELECT, INSERT, DELETE ON cache_invalidation.acknowledged TO \(role)")
        let outcome = try Self.check(harness, databaseURL: harness.servers.postgresURL(database: harness.databaseName, user: role))
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL privileges: missing EXECUTE on function cache_invalidation.listen_privately()"), "\(outcome.output)")
        #expect(outcome.output.contains("apply deploy/postgres/roles.sql"), "\(outcome.output)")
    }

    /// A role granted as before 0005 (roles.sql not re-applied after it) is told what it lacks:
    /// the worker could read events but never acknowledge one.
    @Test func aRoleWithoutTheQueueGrantsFailsAfter0005() throws {
        let harness = try Harness()
        let role = "ci_noqueue_\(harness.databaseName)"
        try harness.sql("CREATE ROLE \(role) LOGIN")
        try harness.sql("GRANT USAGE ON SCHEMA cache_invalidation TO \(role); GRANT SELECT ON cache_invalidation.events, cache_invalidation.expected_triggers TO \(role); GRANT DELETE ON cache_invalidation.events TO \(role); GRANT UPDATE (processed_at) ON cache_invalidation.events TO \(role)")
        try harness.sql("GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO \(role)")
        let outcome = try Self.check(harness, databaseURL: harness.servers.postgresURL(database: harness.databaseName, user: role))
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL privileges: missing SELECT, DELETE on cache_invalidation.pending and SELECT, INSERT, DELETE on cache_invalidation.acknowledged; apply deploy/postgres/roles.sql"), "\(outcome.output)")
    }

    /// A DBA who disables row-level security on the private channel's table, or grants it to a
    /// reporting role, is told what that exposes and how to undo it.
    @Test func aTamperedPrivateChannelFails() throws {
        let harness = try Harness()
        let fine = try Self.check(harness, databaseURL: harness.databaseURL)
        #expect(fine.output.contains("ok   private channel: its name is hidden from other roles"), "\(fine.output)")
        try harness.sql("ALTER TABLE cache_invalidation.private_channel DISABLE ROW LEVEL SECURITY; GRANT SELECT ON cache_invalidation.private_channel TO PUBLIC")
        let outcome = try Self.check(harness, databaseURL: harness.databaseURL)
        #expect(outcome.status == 1)
        #expect(outcome.output.contains("FAIL private channel: row-level security is off on cache_invalidation.private_channel; cache_invalidation.private_channel is granted to other roles"), "\(outcome.output)")
        #expect(outcome.output.contains("re-apply migrations/0004_private_channel.up.sql"), "\(outcome.output)")
        #expect(try MigrationTests.psql(harness.databaseURL, file: Harness.migrationsDirectory + "/0004_private_channel.up.sql").status == 0)
        let repaired = try Self.check(harness, databaseURL: harness.databaseURL)
        #expect(repaired.output.contains("ok   private channel:"), "\(repaired.output)")
    }

    @Test func theRestrictedWorkerRolePassesToo() throws {
        let harness = try Harness()
        let result = try MigrationTests.psql(harness.databaseURL, file: Harness.repositoryRoot + "/deploy/postgres/roles.sql")
        #expect(result.status == 0, "\(result.output)")
        let outcome = try Self.check(harness, databaseURL: harness.servers.postgresURL(database: harness.databaseName, user: "cache_invalidator"))
        #expect(outcome.status == 0, "\(outcome.output)")
        #expect(outcome.output.contains("ok   triggers: all 13 in place and enabled"), "\(outcome.output)")
    }
}
