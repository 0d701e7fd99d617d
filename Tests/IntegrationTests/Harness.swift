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
        // The whole suite shares two cores: a notification can take longer than the default 1 s.
        config.listenProbeTimeoutSeconds = 5
        return config
    }

    /// With `metrics`, the worker also does what it does only for `/metrics` (reading Redis's INFO).
    @discardableResult
    func startWorker(metrics: WorkerMetrics? = nil, _ configure: (inout WorkerConfiguration) -> Void = { _ in }) -> WorkerHandle {
        var config = configuration()
        configure(&config)
        let handle = WorkerHandle.start(configuration: config, logger: Harness.workerLogger(logs), metrics: metrics)
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
    func waitUntilProcessed(databaseURL url: String? = nil, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try awaitCondition("every event acknowledged", timeout: timeout, sourceLocation: sourceLocation) { seen in
            var pending = -1
            if let url {
                if let connection = try? PGConnection(conninfo: url), let condition = try? Harness.pendingCondition(on: connection),
                   let rows = try? connection.execute("SELECT count(*) FROM cache_invalidation.events WHERE \(condition)") {
                    pending = Int(rows[0, 0] ?? "-1") ?? -1
                }
            } else {
                pending = try pendingCount
            }
            seen = "\(pending) events pending; worker log tail:\n\(logTail)"
            return pending == 0
        }
    }

    /// Waits for a condition on the worker's statistics (e.g. a counter reaching a value).
    func waitFor(_ what: String, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation, _ condition: (WorkerStatistics.Snapshot) -> Bool) throws {
        try awaitCondition(what, timeout: timeout, sourceLocation: sourceLocation) { seen in
            guard let snapshot = worker?.statistics.snapshot else { seen = "no worker"; return false }
            seen = "\(snapshot); worker log tail:\n\(logTail)"
            return condition(snapshot)
        }
    }

    /// Waits until the worker leads, drained, and left the settling a new lead starts with: an
    /// event committed now is taken from its notification, not found by a settling poll first.
    func waitUntilNotified(sourceLocation: SourceLocation = #_sourceLocation) throws {
        try waitFor("listening, notified, caught up", sourceLocation: sourceLocation) { $0.listening && $0.redisUp && $0.initialDrainDone && !$0.polling && !$0.workWaiting }
    }

    /// Waits until the worker has written `count` lines containing `text`, in all.
    func waitForLogLines(containing text: String, count: Int, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try awaitCondition("\(count) log lines containing \(text.debugDescription)", timeout: timeout, sourceLocation: sourceLocation) { seen in
            let found = logs.captured.filter { $0.contains(text) }.count
            seen = "\(found) such lines; worker log tail:\n\(logTail)"
            return found >= count
        }
    }

    var logTail: String { logs.captured.suffix(20).joined(separator: "\n") }

    // MARK: Backends (pg_stat_activity)

    /// A backend as pg_stat_activity shows it, with the pids that block it (pg_blocking_pids).
    struct Backend: CustomStringConvertible {
        var pid: Int32
        var state: String
        var waitEventType: String
        var waitEvent: String
        var query: String
        /// When its current (or, idle, its last) statement started: tells two statements apart.
        var queryStart: String
        var blockedBy: [Int32]

        /// Waiting for a heavyweight lock (a row, a table, a transaction) another session holds.
        var waitsForLock: Bool { waitEventType == "Lock" }

        var description: String {
            "pid \(pid) \(state), wait \(waitEventType.isEmpty ? "none" : "\(waitEventType)/\(waitEvent)"), blocked by \(blockedBy), since \(queryStart): \(query.prefix(200).debugDescription)"
        }
    }

    private static let backendColumns = """
        a.pid, coalesce(a.state, ''), coalesce(a.wait_event_type, ''), coalesce(a.wait_event, ''),
        coalesce(a.query, ''), coalesce(a.query_start::text, ''), pg_blocking_pids(a.pid)::text
        """

    private func backends(_ query: String, _ parameters: [String?] = []) throws -> [Backend] {
        try sql(query, parameters).rows.map { row in
            Backend(pid: Int32(row[0] ?? "") ?? 0, state: row[1] ?? "", waitEventType: row[2] ?? "", waitEvent: row[3] ?? "",
                    query: row[4] ?? "", queryStart: row[5] ?? "",
                    blockedBy: (row[6] ?? "{}").dropFirst().dropLast().split(separator: ",").compactMap { Int32($0) })
        }
    }

    /// The active worker's backend in this test's database: the session that holds the leader
    /// lock (EventLog.leaderLockKey, "cacheinv": classid 1667326824, objid 1701408374 in pg_locks).
    func workerBackend() throws -> Backend? {
        try backends("""
            SELECT \(Self.backendColumns) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1667326824 AND l.objid = 1701408374 AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """).first
    }

    func backend(pid: Int32) throws -> Backend? {
        try backends("SELECT \(Self.backendColumns) FROM pg_stat_activity a WHERE a.pid = $1::int4", [String(pid)]).first
    }

    /// Waits until the active worker's backend waits for a lock that backend `blocker` holds, in a
    /// statement containing `statement`: proof that the worker is held exactly there. Returns
    /// what its backend showed then (`queryStart` tells whether it is still the same statement later).
    @discardableResult
    func waitForWorkerBlocked(in statement: String, by blocker: Int32, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws -> Backend {
        try awaitValue("the worker's backend waiting for a lock held by pid \(blocker), in \(statement.debugDescription)", timeout: timeout, sourceLocation: sourceLocation) { seen in
            guard let worker = try workerBackend() else { seen = "no session holds the leader lock"; return nil }
            seen = "the worker's backend: \(worker)"
            return worker.waitsForLock && worker.blockedBy.contains(blocker) && worker.query.contains(statement) ? worker : nil
        }
    }

    /// Waits until backend `pid` waits for a lock (a statement queued behind another session).
    @discardableResult
    func waitForLockWait(pid: Int32, _ what: String, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws -> Backend {
        try awaitValue(what, timeout: timeout, sourceLocation: sourceLocation) { seen in
            guard let backend = try backend(pid: pid) else { seen = "no backend with pid \(pid)"; return nil }
            seen = "\(backend)"
            return backend.waitsForLock ? backend : nil
        }
    }

    /// Waits until the active worker has run `count` more statements containing `statement`,
    /// counted by their distinct start times in pg_stat_activity. Sampled every 2 ms: a statement
    /// the worker follows at once with another may be missed, so name one that its backend shows
    /// until the next round (the last of a periodic round).
    func waitForWorkerStatements(containing statement: String, count: Int, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var starts: Set<String> = []
        try awaitCondition("\(count) more statements of the worker containing \(statement.debugDescription)", timeout: timeout, sourceLocation: sourceLocation) { seen in
            let worker = try workerBackend()
            if let worker, worker.query.contains(statement) { starts.insert(worker.queryStart) }
            seen = "\(starts.count) such statements; the worker's backend now: \(worker.map { "\($0)" } ?? "none")"
            return starts.count >= count
        }
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

    /// Waits (at most `timeout`) until `count` events whose tx hash starts with `hashPrefix` are
    /// acknowledged; fails the test with how many were otherwise.
    func waitForAcknowledged(_ count: Int, hashPrefix: String, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try awaitCondition("\(count) events of \(hashPrefix) acknowledged", timeout: timeout, interval: 1_000, sourceLocation: sourceLocation) { seen in
            let acknowledged = try acknowledgedCount(hashPrefix: hashPrefix)
            seen = "\(acknowledged) acknowledged; worker log tail:\n\(logTail)"
            return acknowledged >= count
        }
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

    /// Waits until a client of `redis` is blocked (CLIENT LIST flag `b`) in `command`, as a
    /// write is while Redis is paused (CLIENT PAUSE ... WRITE): proof that the worker is held there.
    static func waitForBlockedClient(_ redis: RedisConnection, command: String, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try awaitCondition("a Redis client blocked in \(command)", timeout: timeout, sourceLocation: sourceLocation) { seen in
            guard case .bulk(let bytes) = try redis.command([Array("CLIENT".utf8), Array("LIST".utf8)]) else { return false }
            let clients = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
            seen = clients.joined(separator: "\n")
            let blocked = clients.contains { client in
                let fields = client.split(separator: " ")
                return fields.contains { $0.hasPrefix("flags=") && $0.contains("b") } && fields.contains("cmd=\(command)")
            }
            return blocked
        }
    }

    enum HarnessError: Error { case timeout }
}

/// A connection of a test's own whose statement may wait for a lock: `start` runs it on a thread
/// and returns at once, `finish` waits for it. The backend's pid is known from the start, so the
/// test can see the statement queue (`Harness.waitForLockWait`).
final class BackgroundSession: @unchecked Sendable {
    let connection: PGConnection
    let pid: Int32
    private let done = DispatchSemaphore(value: 0)
    private var outcome: Result<Void, PostgresError>?

    init(databaseURL: String, applicationName: String) throws {
        connection = try PGConnection(conninfo: databaseURL, applicationName: applicationName)
        pid = connection.backendPID
    }

    func start(_ statement: String) {
        Thread { [self] in
            outcome = Result { () throws(PostgresError) in _ = try connection.execute(statement) }
            done.signal()
        }.start()
    }

    /// Waits for the statement `start` sent; fails the test if it failed or is still waiting.
    func finish(seconds: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) throws {
        guard done.wait(timeout: .now() + seconds) == .success else {
            Issue.record("the statement of backend \(pid) did not finish within \(seconds) s", sourceLocation: sourceLocation)
            throw Harness.HarnessError.timeout
        }
        try outcome?.get()
    }
}

/// `awaitValue` for a condition: polls `probe` until it returns true.
func awaitCondition(_ what: String, timeout: Double, interval: useconds_t = 2_000, sourceLocation: SourceLocation = #_sourceLocation,
                    _ probe: (_ seen: inout String) throws -> Bool) throws {
    try awaitValue(what, timeout: timeout, interval: interval, sourceLocation: sourceLocation) { seen -> Void? in try probe(&seen) ? () : nil }
}

/// Polls `probe` every `interval` until it returns a value. Past `timeout` the test fails, naming
/// what was awaited and what `probe` last said it saw, and this throws: a wait that times out never
/// returns as if its condition held.
@discardableResult
func awaitValue<T>(_ what: String, timeout: Double, interval: useconds_t = 2_000, sourceLocation: SourceLocation = #_sourceLocation,
                   _ probe: (_ seen: inout String) throws -> T?) throws -> T {
    let deadline = Date().addingTimeInterval(timeout)
    var seen = ""
    while true {
        if let value = try probe(&seen) { return value }
        if Date() >= deadline { break }
        usleep(interval)
    }
    Issue.record("timed out after \(timeout) s waiting for \(what); saw: \(seen)", sourceLocation: sourceLocation)
    throw Harness.HarnessError.timeout
}
