import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import Logging
import PostgresClient
import RedisClient
import Testing

/// One test's world: a fresh database with the migrations applied, a key prefix of its own in
/// the shared Redis, an in-process worker whose log lines are captured, and helpers to write as
/// the bot and to look at Redis.
final class Harness {
    let servers: TestServers
    let databaseName: String
    let databaseURL: String
    /// The bot's connection (superuser on the test server).
    let db: PGConnection
    let redis: RedisConnection
    let prefix: String
    let logs = LogSink(capturing: true)
    private(set) var worker: WorkerHandle?

    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url.path }
        }
        return FileManager.default.currentDirectoryPath
    }()

    static var migrationsDirectory: String { repositoryRoot + "/migrations" }

    init(migrate: Bool = true) throws {
        servers = try TestServers.get()
        databaseName = try servers.makeDatabase()
        databaseURL = servers.postgresURL(database: databaseName)
        db = try PGConnection(conninfo: databaseURL, applicationName: "test-bot")
        redis = try servers.redisConnection()
        prefix = "\(databaseName):"
        if migrate {
            _ = try Migrator(connection: db, directory: Harness.migrationsDirectory, logger: quietLogger()).up()
        }
    }

    deinit {
        worker?.stop()
        _ = worker?.wait(seconds: 10)
    }

    func quietLogger() -> Logger {
        Logger(label: "test-migrate") { _ in
            var handler = LogfmtLogHandler(format: .logfmt, sink: LogSink(capturing: true))
            handler.logLevel = .error
            return handler
        }
    }

    func configuration() -> WorkerConfiguration {
        var config = WorkerConfiguration(databaseURL: databaseURL, redis: try! RedisEndpoint.parse(servers.redisURL))
        config.keyPrefix = prefix
        config.reconnectInitialMilliseconds = 20
        config.reconnectMaximumMilliseconds = 500
        return config
    }

    @discardableResult
    func startWorker(_ configure: (inout WorkerConfiguration) -> Void = { _ in }) -> WorkerHandle {
        var config = configuration()
        configure(&config)
        let handle = WorkerHandle.start(configuration: config, logger: Harness.workerLogger(logs))
        worker = handle
        return handle
    }

    /// A worker's logger writing logfmt lines into `sink`.
    static func workerLogger(_ sink: LogSink, level: Logger.Level = .debug) -> Logger {
        Logger(label: "worker") { _ in
            var handler = LogfmtLogHandler(format: .logfmt, sink: sink)
            handler.logLevel = level
            return handler
        }
    }

    func stopWorker() {
        worker?.stop()
        #expect(worker?.wait(seconds: 30) ?? true, "worker did not stop within 30 s")
        worker = nil
    }

    // MARK: Postgres

    @discardableResult
    func sql(_ text: String, _ parameters: [String?] = []) throws -> PGRows {
        parameters.isEmpty ? try db.execute(text) : try db.execute(text, parameters)
    }

    func count(_ text: String, _ parameters: [String?] = []) throws -> Int {
        Int(try sql(text, parameters)[0, 0] ?? "0") ?? 0
    }

    var eventCount: Int { get throws { try count("SELECT count(*) FROM cache_invalidation.events") } }
    var pendingCount: Int { get throws { try count("SELECT count(*) FROM cache_invalidation.events WHERE \(try pending)") } }

    /// SQL true for a row of cache_invalidation.events (not aliased) that is still pending: its id
    /// in the pending queue with 0005, its processed_at NULL before it.
    static func pendingCondition(on connection: PGConnection) throws -> String {
        try hasQueue(on: connection) ? "id IN (SELECT id FROM cache_invalidation.pending)" : "processed_at IS NULL"
    }

    /// Whether 0005's pending queue is installed.
    static func hasQueue(on connection: PGConnection) throws -> Bool {
        try connection.execute("SELECT to_regclass('cache_invalidation.pending') IS NOT NULL")[0, 0] == "t"
    }
    /// Runs `insert` (an INSERT INTO cache_invalidation.events, written by hand as a DBA or a
    /// newer migration might) and, with the pending queue, queues what it inserted, as emit() does;
    /// no NOTIFY.
    func logByHand(_ insert: String) throws {
        if try Harness.hasQueue(on: db) {
            try sql("WITH e AS (\(insert) RETURNING id) INSERT INTO cache_invalidation.pending (id) SELECT id FROM e")
        } else {
            try sql(insert)
        }
    }

    /// `pendingCondition` for this test's database, as it is now.
    var pending: String { get throws { try Harness.pendingCondition(on: db) } }
    /// The opposite: acknowledged.
    var processed: String { get throws { "NOT (\(try pending))" } }

    /// Waits until the worker acknowledged every event in the log (an event is acknowledged only
    /// after Redis confirmed its deletions, so its keys are gone by then).
    ///
    /// With `databaseURL`, the log is read over a fresh connection each time, so a server that
    /// restarts meanwhile (a fault test's own PostgreSQL) is waited for too.
    func waitUntilProcessed(databaseURL url: String? = nil, timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var pending = -1
        while Date() < deadline {
            if let url {
                if let connection = try? PGConnection(conninfo: url), let condition = try? Harness.pendingCondition(on: connection),
                   let rows = try? connection.execute("SELECT count(*) FROM cache_invalidation.events WHERE \(condition)") {
                    pending = Int(rows[0, 0] ?? "-1") ?? -1
                }
            } else {
                pending = try pendingCount
            }
            if pending == 0 { return }
            usleep(2_000)
        }
        Issue.record("events still pending after \(timeout) s: \(pending); worker log tail:\n\(logs.captured.suffix(20).joined(separator: "\n"))")
        throw HarnessError.timeout
    }

    /// Waits for a condition on the worker's statistics (e.g. a counter reaching a value).
    func waitFor(_ what: String, timeout: Double = 20, _ condition: (WorkerStatistics.Snapshot) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let snapshot = worker?.statistics.snapshot, condition(snapshot) { return }
            usleep(2_000)
        }
        Issue.record("timed out waiting for \(what); worker log tail:\n\(logs.captured.suffix(20).joined(separator: "\n"))")
        throw HarnessError.timeout
    }

    // MARK: Redis

    /// Sets each key (relative to the prefix) to "cached", in `other` or the shared Redis.
    func seed(_ keys: [String], redis other: RedisConnection? = nil) throws {
        for chunk in stride(from: 0, to: keys.count, by: 1000) {
            let commands = keys[chunk..<min(chunk + 1000, keys.count)].map { [Array("SET".utf8), Array((prefix + $0).utf8), Array("cached".utf8)] }
            for reply in try (other ?? redis).pipeline(commands) { #expect(reply == .status("OK")) }
        }
    }

    /// A burst of `count` settled trades committed in one transaction, each `tx:` key cached
    /// first: telegram id `telegramBase + g % users` and tx hash `hashPrefix` + g, for g in
    /// 1...count. Returns the keys, relative to the prefix.
    @discardableResult
    func cachedTradeBurst(_ count: Int, telegramBase: Int, users: Int, hashPrefix: String, redis other: RedisConnection? = nil) throws -> [String] {
        let keys = (1...count).map { "tx:\(telegramBase + $0 % users):\(hashPrefix)\($0)" }
        try seed(keys, redis: other)
        try sql("""
            INSERT INTO trades (telegram_id, wallet_address, token_address, side, source, tx_hash, status)
            SELECT $1::int8 + g % $2::int8, '0xW', '0xT', 'buy', 'manual', $3 || g, 'confirmed' FROM generate_series(1, $4::int8) g
            """, [String(telegramBase), String(users), hashPrefix, String(count)])
        return keys
    }

    /// Waits (at most 20 s) until `count` events whose tx hash starts with `hashPrefix` are acknowledged.
    func waitForAcknowledged(_ count: Int, hashPrefix: String) throws {
        let deadline = Date().addingTimeInterval(20)
        while try acknowledgedCount(hashPrefix: hashPrefix) < count && Date() < deadline { usleep(1_000) }
    }

    func acknowledgedCount(hashPrefix: String) throws -> Int {
        try self.count("SELECT count(*) FROM cache_invalidation.events WHERE \(try processed) AND starts_with(payload->>'tx_hash', $1)", [hashPrefix])
    }

    /// The keys (relative to the prefix) among `keys` that no longer exist.
    func deleted(among keys: [String], redis other: RedisConnection? = nil) throws -> Set<String> {
        let replies = try (other ?? redis).pipeline(keys.map { [Array("EXISTS".utf8), Array((prefix + $0).utf8)] })
        var gone: Set<String> = []
        for (key, reply) in zip(keys, replies) where reply == .integer(0) { gone.insert(key) }
        return gone
    }

    func exists(_ key: String) throws -> Bool {
        try redis.command([Array("EXISTS".utf8), Array((prefix + key).utf8)]) == .integer(1)
    }

    enum HarnessError: Error { case timeout }
}
