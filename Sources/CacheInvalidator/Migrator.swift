import Foundation
import InvalidationCore
import Logging
import PostgresClient

/// Applies and rolls back the numbered SQL files under `migrations/`, tracked in
/// `public.cache_invalidator_schema_migrations` and serialized by an advisory lock, so two
/// deploys running `migrate` at once cannot interleave.
///
/// Each file is one transaction with its own `lock_timeout` and records its own version,
/// so `psql -v ON_ERROR_STOP=1 -f` and this command leave the database in the same state.
public struct Migrator {
    public struct Failure: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public static let trackingTable = "public.cache_invalidator_schema_migrations"
    /// Arbitrary but fixed: the key of the advisory lock every `migrate` run takes.
    static let lockKey = "7210845061204851712"

    let connection: PGConnection
    let directory: String
    let migrations: [Migration]
    let logger: Logger

    public init(connection: PGConnection, directory: String, logger: Logger) throws {
        self.connection = connection
        self.directory = directory
        self.logger = logger
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw Failure(message: "migrations directory \(directory) cannot be read; pass --migrations-dir (or MIGRATIONS_DIR) pointing at the project's migrations/ folder")
        }
        do {
            migrations = try MigrationCatalog.parse(fileNames: names)
        } catch {
            throw Failure(message: "\(directory): \(error)")
        }
        guard !migrations.isEmpty else { throw Failure(message: "\(directory) holds no NNNN_name.up.sql files") }
    }

    public var available: [Migration] { migrations }

    public func appliedVersions() throws -> Set<Int64> {
        let exists = try connection.execute("SELECT to_regclass($1) IS NOT NULL", [Self.trackingTable])
        guard exists[0, 0] == "t" else { return [] }
        let rows = try connection.execute("SELECT version FROM \(Self.trackingTable)")
        return Set(rows.rows.compactMap { $0[0].flatMap { Int64($0) } })
    }

    /// Applied migrations this directory does not have: a newer release's, applied by a DBA
    /// with that release's files. Lowest version first.
    public func unknownApplied() throws -> [(version: Int64, name: String)] {
        let exists = try connection.execute("SELECT to_regclass($1) IS NOT NULL", [Self.trackingTable])
        guard exists[0, 0] == "t" else { return [] }
        let known = Set(migrations.map(\.version))
        let rows = try connection.execute("SELECT version, name FROM \(Self.trackingTable) ORDER BY version")
        return rows.rows.compactMap { row in
            guard let version = row[0].flatMap({ Int64($0) }), !known.contains(version) else { return nil }
            return (version, row[1] ?? "")
        }
    }

    /// Applies every migration not yet applied, in order, up to `target` if given.
    /// Returns the versions applied.
    @discardableResult
    public func up(to target: Int64? = nil) throws -> [Int64] {
        try withLock {
            let applied = try appliedVersions()
            var done: [Int64] = []
            for migration in migrations where !applied.contains(migration.version) {
                if let target, migration.version > target { break }
                try run(file: migration.upFile, migration: migration, direction: "up")
                try connection.execute("""
                    CREATE TABLE IF NOT EXISTS \(Self.trackingTable) (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
                    """)
                try connection.execute("INSERT INTO \(Self.trackingTable) (version, name) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
                                       [String(migration.version), migration.name])
                done.append(migration.version)
            }
            return done
        }
    }

    /// Rolls back the `steps` most recent applied migrations (all when nil). Returns the versions rolled back.
    @discardableResult
    public func down(steps: Int?) throws -> [Int64] {
        try withLock {
            let applied = try appliedVersions()
            // Rolling back under a newer migration would pull out what it was built on, and this
            // directory has no down file for it.
            if let newest = migrations.last(where: { applied.contains($0.version) }),
               let unknown = try unknownApplied().last, unknown.version > newest.version {
                throw Failure(message: "migration \(String(format: "%04lld", unknown.version)) \(unknown.name) is applied, and \(directory) does not have it (a newer release's); roll it back first with the release that ships it (its migrate down, or psql -f its .down.sql), then run this again. Nothing was rolled back")
            }
            var done: [Int64] = []
            for migration in migrations.reversed() where applied.contains(migration.version) {
                if let steps, done.count >= steps { break }
                try run(file: migration.downFile, migration: migration, direction: "down")
                if try connection.execute("SELECT to_regclass($1) IS NOT NULL", [Self.trackingTable])[0, 0] == "t" {
                    try connection.execute("DELETE FROM \(Self.trackingTable) WHERE version = $1", [String(migration.version)])
                }
                done.append(migration.version)
            }
            return done
        }
    }

    private func run(file: String, migration: Migration, direction: String) throws {
        let path = (directory as NSString).appendingPathComponent(file)
        let sql: String
        do {
            sql = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw Failure(message: "\(path) cannot be read as UTF-8 text")
        }
        let started = monotonicNanoseconds()
        do {
            try connection.execute(sql)
        } catch {
            // A file's own BEGIN ... COMMIT aborted; end the failed transaction so the lock can be released.
            _ = try? connection.execute("ROLLBACK")
            throw Failure(message: "\(file) failed, nothing of it was applied: \(error)")
        }
        logger.info("migration applied", metadata: [
            LogKey.migration: "\(file)", LogKey.version: "\(migration.version)", "direction": "\(direction)",
            "duration_ms": "\(formatMilliseconds(monotonicNanoseconds() - started))"])
    }

    private func withLock<T>(_ body: () throws -> T) throws -> T {
        // Wait a bounded time for another migrate run, instead of queueing forever.
        try connection.execute("SET lock_timeout = '60s'")
        do {
            try connection.execute("SELECT pg_advisory_lock(\(Self.lockKey))")
        } catch {
            throw Failure(message: "another `migrate` holds the migration lock (waited 60 s): \(error)")
        }
        defer { _ = try? connection.execute("SELECT pg_advisory_unlock(\(Self.lockKey))") }
        return try body()
    }
}
