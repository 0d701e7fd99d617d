import CacheInvalidator
import Foundation
import Testing

/// A DBA applied a newer release's migration before upgrading the worker: the worker says so and
/// works on, `check` fails, `migrate status` lists it, and `migrate down` refuses to pull out
/// what it was built on.
@Suite("Schema newer than the worker")
struct SchemaVersionTests {
    static let newer = HealthCheck.latestSchemaVersion + 1

    /// A worker that checks every 100 ms, with nothing after the check in each round (no pruning):
    /// the trigger check, which follows the schema read, is then what its backend shows until the
    /// next round, and `maintenanceRounds` can count the rounds in pg_stat_activity.
    static func startChecking(_ harness: Harness) {
        harness.startWorker {
            $0.maintenanceIntervalNanoseconds = 100_000_000
            $0.retentionSeconds = 0
            $0.heartbeatIdleNanoseconds = 600_000_000_000
        }
    }

    /// Waits for `count` more maintenance rounds, each a schema check.
    static func maintenanceRounds(_ harness: Harness, _ count: Int) throws {
        try harness.waitForWorkerStatements(containing: "FROM cache_invalidation.expected_triggers", count: count)
    }

    static func recordNewerMigration(_ harness: Harness) throws {
        try harness.sql("INSERT INTO cache_invalidator_schema_migrations (version, name) VALUES ($1, 'from_a_newer_release')", [String(newer)])
    }

    @Test func theWorkerReportsItOnceAndKeepsInvalidating() throws {
        let harness = try Harness()
        try Self.recordNewerMigration(harness)
        Self.startChecking(harness)
        try harness.waitFor("the schema version read") { $0.schemaVersion == Self.newer }
        let keys = try harness.cachedTradeBurst(3, telegramBase: 810_000, users: 3, hashPrefix: "0xnewer")
        try harness.waitForAcknowledged(3, hashPrefix: "0xnewer")
        for key in keys { #expect(try !harness.exists(key), "\(key) still cached") }
        // Several more checks: still one report for the same version.
        try Self.maintenanceRounds(harness, 4)
        let reports = harness.logs.captured.filter { $0.contains("schema is newer than this worker knows") }
        #expect(reports.count == 1, "\(reports)")
        #expect(reports.first?.contains("level=error") == true && reports.first?.contains("version=\(Self.newer)") == true, "\(reports)")
        // The check repeats: a still newer migration is reported too, once.
        try harness.sql("INSERT INTO cache_invalidator_schema_migrations (version, name) VALUES ($1, 'newer_still')", [String(Self.newer + 1)])
        try harness.waitFor("the newer version read") { $0.schemaVersion == Self.newer + 1 }
        try Self.maintenanceRounds(harness, 3)
        let all = harness.logs.captured.filter { $0.contains("schema is newer than this worker knows") }
        #expect(all.count == 2 && all.last?.contains("version=\(Self.newer + 1)") == true, "\(all)")
        harness.stopWorker()
    }

    @Test func aKnownSchemaIsNotReported() throws {
        let harness = try Harness()
        Self.startChecking(harness)
        try harness.waitFor("the schema version read") { $0.schemaVersion == HealthCheck.latestSchemaVersion }
        try Self.maintenanceRounds(harness, 3)
        #expect(!harness.logs.captured.contains { $0.contains("schema is newer") })
        harness.stopWorker()
    }

    @Test func checkFailsAndStatusListsIt() throws {
        let harness = try Harness()
        try Self.recordNewerMigration(harness)
        let outcome = try CheckTests.check(harness)
        #expect(outcome.status == 1, "\(outcome.output)")
        #expect(outcome.output.contains("FAIL migrations: schema version \(Self.newer) is newer than this release knows (up to \(HealthCheck.latestSchemaVersion))"), "\(outcome.output)")
        let status = try ProcessTests.run(["migrate", "status", "--migrations-dir", Harness.migrationsDirectory], environment: ["DATABASE_URL": harness.databaseURL])
        #expect(status.status == 0, "\(status.output)")
        #expect(status.output.contains(String(format: "%04lld from_a_newer_release applied, not in this release's migrations", Self.newer)), "\(status.output)")
    }

    @Test func migrateDownRefusesToRollBackUnderIt() throws {
        let harness = try Harness()
        try Self.recordNewerMigration(harness)
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        let before = try migrator.appliedVersions()
        #expect {
            try migrator.down(steps: 1)
        } throws: { error in
            "\(error)".contains(String(format: "migration %04lld from_a_newer_release is applied", Self.newer)) && "\(error)".contains("Nothing was rolled back")
        }
        #expect(try migrator.appliedVersions() == before)
        #expect(try harness.count("SELECT count(*) FROM pg_class WHERE oid = to_regclass('cache_invalidation.pending')") == 1)
        // Once the newer release rolled its own migration back, this one's down works again.
        try harness.sql("DELETE FROM cache_invalidator_schema_migrations WHERE version = $1", [String(Self.newer)])
        #expect(try migrator.down(steps: 1) == [HealthCheck.latestSchemaVersion])
    }
}
