import ArgumentParser
import CacheInvalidator
import Foundation
import Logging
import PostgresClient

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply, roll back or list the SQL migrations (tracked, under an advisory lock).",
        discussion: """
            The files under migrations/ are plain SQL: `psql -v ON_ERROR_STOP=1 -f FILE` applies them the same way, and both record the version in public.cache_invalidator_schema_migrations. Each file is one transaction with lock_timeout = 5s: behind a long bot transaction it fails fast (SQLSTATE 55P03) instead of stalling the bot's writes; run it again when that transaction ends.
            """,
        subcommands: [Up.self, Down.self, Status.self],
        defaultSubcommand: Up.self)

    struct Common: ParsableArguments {
        @Option(help: ArgumentHelp(.databaseURL, valueName: "url"))
        var databaseURL: String?
        @Option(help: ArgumentHelp("Folder holding NNNN_name.up.sql / .down.sql. [env: MIGRATIONS_DIR, default: ./migrations, then ../share/cache-invalidator/migrations beside the binary]", valueName: "dir"))
        var migrationsDir: String?
        @OptionGroup var logging: LoggingOptions

        func migrator() throws -> (Migrator, Logger) {
            var flags = logging.flags
            flags[.databaseURL] = databaseURL
            let resolver = SettingsResolver(flags: flags)
            let logger: Logger
            let connection: PGConnection
            let directory: String
            do {
                logger = try bootstrapLogging(resolver)
                connection = try PGConnection(conninfo: try resolver.databaseURL(), applicationName: "cache-invalidator migrate")
                directory = try Common.locate(migrationsDir)
                return (try Migrator(connection: connection, directory: directory, logger: logger), logger)
            } catch {
                fail(error)
            }
        }

        static func locate(_ given: String?) throws -> String {
            if let given = given ?? ProcessInfo.processInfo.environment["MIGRATIONS_DIR"] { return given }
            let candidates = [
                "migrations",
                URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
                    .deletingLastPathComponent().appendingPathComponent("../share/cache-invalidator/migrations").path,
            ]
            for candidate in candidates {
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDirectory), isDirectory.boolValue { return candidate }
            }
            throw ConfigurationError("no migrations folder found (looked in ./migrations and beside the binary); pass --migrations-dir")
        }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply every migration not yet applied (default).")
        @OptionGroup var common: Common
        @Option(help: "Stop after this version.") var to: Int64?

        func run() throws {
            let (migrator, logger) = try common.migrator()
            do {
                let applied = try migrator.up(to: to)
                logger.info(applied.isEmpty ? "migrations already up to date" : "migrations applied", metadata: [
                    LogKey.version: "\(applied.map(String.init).joined(separator: ","))"])
            } catch {
                fail(error)
            }
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Roll back the latest applied migration (or --steps N, or --all).",
            discussion: "Rolling back removes the triggers and the cache_invalidation schema; it never drops a bot table or a row the bot wrote.")
        @OptionGroup var common: Common
        @Option(help: "How many migrations to roll back.") var steps: Int = 1
        @Flag(help: "Roll back every applied migration.") var all = false

        func run() throws {
            guard all || steps >= 1 else { fail(ConfigurationError("--steps must be at least 1")) }
            let (migrator, logger) = try common.migrator()
            do {
                let rolledBack = try migrator.down(steps: all ? nil : steps)
                logger.info(rolledBack.isEmpty ? "nothing to roll back" : "migrations rolled back", metadata: [
                    LogKey.version: "\(rolledBack.map(String.init).joined(separator: ","))"])
            } catch {
                fail(error)
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the migrations and whether each is applied.")
        @OptionGroup var common: Common

        func run() throws {
            let (migrator, _) = try common.migrator()
            do {
                let applied = try migrator.appliedVersions()
                for migration in migrator.available {
                    print("\(String(format: "%04lld", migration.version)) \(migration.name) \(applied.contains(migration.version) ? "applied" : "pending")")
                }
                for unknown in try migrator.unknownApplied() {
                    print("\(String(format: "%04lld", unknown.version)) \(unknown.name) applied, not in this release's migrations (upgrade cache-invalidator: this worker may not follow what it changed)")
                }
            } catch {
                fail(error)
            }
        }
    }
}
