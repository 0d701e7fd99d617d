import CacheInvalidator
import Foundation
import PostgresClient
import Testing

/// The migrations as DBAs apply them: with psql in file order or with `migrate`, again and again,
/// rolled back without touching the bot's data, onto tables the bot created itself.
@Suite("Migrations")
struct MigrationTests {
    static var upFiles: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: Harness.migrationsDirectory)) ?? []
        return names.filter { $0.hasSuffix(".up.sql") }.sorted().map { Harness.migrationsDirectory + "/" + $0 }
    }

    static func psql(_ url: String, file: String) throws -> (status: Int32, output: String) {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("psql-\(UUID().uuidString).log").path
        defer { unlink(outputPath) }
        let status = try TestServers.spawnAndWait("/usr/bin/psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", file], outputPath: outputPath)
        return (status, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    static let triggerCount = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'cache_invalidation_%' AND NOT tgisinternal"

    @Test func applyReapplyRollBackAndApplyAgain() throws {
        let harness = try Harness(migrate: false)
        #expect(Self.upFiles.count >= 2)
        for file in Self.upFiles {
            let result = try Self.psql(harness.databaseURL, file: file)
            #expect(result.status == 0, "\(file): \(result.output)")
        }
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        let all = Set(migrator.available.map(\.version))
        #expect(try migrator.appliedVersions() == all, "psql records versions like migrate does")
        #expect(try migrator.up().isEmpty, "nothing left to apply after psql")
        for file in Self.upFiles {
            let again = try Self.psql(harness.databaseURL, file: file)
            #expect(again.status == 0, "re-applying \(file): \(again.output)")
        }
        #expect(try harness.count(Self.triggerCount) == 13)

        try harness.sql("""
            INSERT INTO wallets (telegram_id, address) VALUES (1, '0xkeep');
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, amount_mon, status) VALUES (1, '0xkeep', '0xT', 'buy', 'manual', 12.5, 'confirmed');
            INSERT INTO transfers (telegram_id, from_address, to_address, amount, status) VALUES (1, '0xkeep', '0xB', 3, 'pending');
            INSERT INTO settings (telegram_id, slippage_bps) VALUES (1, 42);
            """)
        #expect(try migrator.down(steps: nil) == Array(all).sorted(by: >))
        #expect(try harness.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'cache_invalidation'") == 0)
        #expect(try harness.count(Self.triggerCount) == 0)
        #expect(try harness.count("SELECT count(*) FROM wallets WHERE address = '0xkeep'") == 1, "rollback kept the bot's rows")
        #expect(try harness.sql("SELECT amount_mon::text FROM trades")[0, 0] == "12.5")
        #expect(try harness.count("SELECT count(*) FROM transfers") == 1)
        #expect(try harness.count("SELECT slippage_bps FROM settings") == 42)
        #expect(try migrator.down(steps: nil).isEmpty, "rolling back twice is harmless")

        #expect(try migrator.up() == Array(all).sorted())
        #expect(try harness.count(Self.triggerCount) == 13)
        try harness.sql("UPDATE trades SET status = 'failed'")
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE kind = 'trade_settled'") == 1)
    }

    @Test func downRollsBackOneStepByDefault() throws {
        let harness = try Harness()
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        let latest = migrator.available.map(\.version).max()!
        #expect(try migrator.down(steps: 1) == [latest])
        #expect(try !migrator.appliedVersions().contains(latest))
        #expect(try migrator.up() == [latest])
    }

    /// The release's idea of its newest migration (what the worker, `check` and the
    /// `schema_version_supported` gauge compare the database with) is the newest file it ships:
    /// a migration added without raising it would be reported as newer than the worker.
    @Test func theReleaseKnowsItsNewestMigration() throws {
        let harness = try Harness(migrate: false)
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        #expect(HealthCheck.latestSchemaVersion == migrator.available.map(\.version).max())
    }

    /// The bot created its tables long ago, with columns of its own and an enum for status.
    @Test func attachesToTablesTheBotAlreadyHas() throws {
        let harness = try Harness(migrate: false)
        try harness.sql("""
            CREATE TYPE trade_status AS ENUM ('pending', 'confirmed', 'failed');
            CREATE TABLE wallets (telegram_id bigint PRIMARY KEY, address text NOT NULL UNIQUE, encrypted_private_key bytea, created_at timestamptz DEFAULT now(), label text);
            CREATE TABLE settings (telegram_id bigint PRIMARY KEY, slippage_bps int, gas_price_gwei numeric, auto_buy_enabled bool, auto_buy_amount_mon numeric, updated_at timestamptz, theme text);
            CREATE TABLE trades (id bigserial PRIMARY KEY, telegram_id bigint NOT NULL, wallet_address text NOT NULL, token_address text NOT NULL, side text, source text,
              amount_mon numeric, amount_token numeric, sell_id text, tx_hash text, status trade_status, created_at timestamptz, updated_at timestamptz, gas_used numeric);
            CREATE TABLE transfers (id bigserial PRIMARY KEY, telegram_id bigint NOT NULL, from_address text NOT NULL, to_address text NOT NULL, token_address text,
              amount numeric, tx_hash text, status varchar(16), created_at timestamptz, memo text);
            INSERT INTO wallets (telegram_id, address, label) VALUES (7, '0xold', 'main');
            """)
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        #expect(try migrator.up().count == migrator.available.count)
        #expect(try harness.count("SELECT count(*) FROM wallets") == 1)
        harness.startWorker()
        try harness.seed(["tx:7:0xenum", "wallet_balance:0xold", "user_settings:7"])
        try harness.sql("INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status, gas_used) VALUES (7, '0xold', '0xT', 'buy', 'auto', '0xenum', 'confirmed', 21000)")
        try harness.sql("INSERT INTO settings (telegram_id, theme) VALUES (7, 'dark')")
        try harness.sql("UPDATE settings SET theme = 'light' WHERE telegram_id = 7")
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["tx:7:0xenum", "wallet_balance:0xold", "user_settings:7"]) == ["tx:7:0xenum", "wallet_balance:0xold", "user_settings:7"])
        #expect(try harness.count("SELECT count(*) FROM cache_invalidation.events WHERE kind = 'settings_changed'") == 2, "a change to an extra column is a change")
        harness.stopWorker()
    }

    /// Behind a long bot transaction the migration gives up after its lock_timeout instead of
    /// queueing and stalling every write behind it, and leaves nothing half-applied.
    @Test func failsFastBehindALongTransaction() throws {
        let harness = try Harness(migrate: false)
        let migrator = try Migrator(connection: harness.db, directory: Harness.migrationsDirectory, logger: harness.quietLogger())
        try migrator.up(to: 1)
        let bot = try PGConnection(conninfo: harness.databaseURL)
        try bot.execute("BEGIN")
        try bot.execute("INSERT INTO wallets (telegram_id, address) VALUES (1, '0xbusy')")
        let started = Date()
        #expect {
            try migrator.up()
        } throws: { error in
            "\(error)".contains("55P03") || "\(error)".contains("lock timeout")
        }
        let waited = Date().timeIntervalSince(started)
        #expect(waited < 20, "gave up after \(waited) s")
        try bot.execute("COMMIT")
        #expect(try migrator.appliedVersions() == [1])
        #expect(try harness.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'cache_invalidation'") == 0)
        #expect(try migrator.up() == [2, 3, 4, 5])
    }

    @Test func migrateCommandAppliesListsAndRollsBack() throws {
        let harness = try Harness(migrate: false)
        let env = ["DATABASE_URL": harness.databaseURL]
        let up = try ProcessTests.run(["migrate", "up", "--migrations-dir", Harness.migrationsDirectory], environment: env)
        #expect(up.status == 0, "\(up.output)")
        let status = try ProcessTests.run(["migrate", "status", "--migrations-dir", Harness.migrationsDirectory], environment: env)
        #expect(status.output.contains("0001 bot_schema applied") && status.output.contains("0002 cache_invalidation applied"), "\(status.output)")
        #expect(status.output.contains("0003 quiet_notify applied") && status.output.contains("0004 private_channel applied")
                && status.output.contains("0005 pending_queue applied"), "\(status.output)")
        let down = try ProcessTests.run(["migrate", "down", "--steps", "4", "--migrations-dir", Harness.migrationsDirectory], environment: env)
        #expect(down.status == 0, "\(down.output)")
        let after = try ProcessTests.run(["migrate", "status", "--migrations-dir", Harness.migrationsDirectory], environment: env)
        #expect(after.output.contains("0002 cache_invalidation pending") && after.output.contains("0003 quiet_notify pending")
                && after.output.contains("0004 private_channel pending") && after.output.contains("0005 pending_queue pending"), "\(after.output)")
        let missing = try ProcessTests.run(["migrate", "up", "--migrations-dir", "/nonexistent"], environment: env)
        #expect(missing.status == 2 && missing.output.contains("/nonexistent cannot be read"), "\(missing.output)")
    }
}
