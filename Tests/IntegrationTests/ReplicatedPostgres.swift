import Foundation
import Glibc
import PostgresClient
import Synchronization

/// A PostgreSQL 15 primary with one streaming standby (`application_name` "standby1"), each on a
/// free loopback port, in a directory of their own: for tests of failover, replication lag and
/// lost commits. Unlike `TestServers` it is not shared: each test makes its own and stops it.
///
/// With `synchronous: true` the primary names the standby in `synchronous_standby_names` and
/// runs `synchronous_commit = on`, so a commit returns only once the standby has *flushed* it (it
/// survives a failover) — not once it has replayed it: a query on the standby right after the
/// commit may still miss the row unless the transaction ran `SET LOCAL synchronous_commit =
/// remote_apply`. While the standby is down or its WAL receiver is frozen, every commit on a
/// synchronous primary waits.
///
/// The standby itself runs with `synchronous_standby_names = ''`: once promoted it has no standby,
/// and a promoted server waiting for one would hang every commit.
///
/// Both servers are stopped (`-m immediate`) and the directory removed by `stop()`, by `deinit`,
/// and at the latest when the test process exits.
final class ReplicatedPostgres: Sendable {
    typealias FixtureError = TestServers.TestServerError

    /// The standby's name in `primary_conninfo`, `pg_stat_replication` and `synchronous_standby_names`.
    static let standbyName = "standby1"

    let directory: String
    let primaryPort: Int
    let standbyPort: Int
    let synchronous: Bool
    let postgresBin: String

    var primaryDataDirectory: String { directory + "/primary" }
    var standbyDataDirectory: String { directory + "/standby" }
    var primaryLog: String { directory + "/primary.log" }
    var standbyLog: String { directory + "/standby.log" }

    private struct State {
        var stopped = false
        /// The standby's WAL receiver while `freezeWalReceiver()` holds it stopped.
        var frozenReceiver: pid_t?
    }
    private let state = Mutex(State())
    private let databaseCounter = Atomic<Int>(0)
    private static let instanceCounter = Atomic<Int>(0)

    /// Starts the primary, takes a base backup of it, starts the standby on it and waits until
    /// the primary sees the standby streaming (and, when `synchronous`, as its synchronous standby).
    init(synchronous: Bool) throws {
        let number = ReplicatedPostgres.instanceCounter.add(1, ordering: .relaxed).newValue
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("cache-invalidator-replicated-\(getpid())-\(number)").path
        try? FileManager.default.removeItem(atPath: base)
        do {
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        } catch {
            throw FixtureError(description: "cannot create \(base): \(error)")
        }
        directory = base
        self.synchronous = synchronous
        postgresBin = TestServers.findPostgresBin()
        primaryPort = TestServers.freePort()
        var standby = TestServers.freePort()
        while standby == primaryPort { standby = TestServers.freePort() }
        standbyPort = standby
        ReplicatedPostgres.register(directory: base, dataDirectories: [base + "/primary", base + "/standby"], bin: postgresBin)
        do {
            try start()
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    private func start() throws {
        if getuid() == 0 {
            // PostgreSQL refuses to run as root: hand the directory to the postgres OS user.
            try TestServers.run("/bin/chown", ["postgres:postgres", directory])
        }
        try TestServers.runAsPostgresUser("\(postgresBin)/initdb", ["-D", primaryDataDirectory, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
        // Appended to postgresql.conf (not given as -c options) so that a test may still change
        // them with ALTER SYSTEM and a reload.
        try appendConfiguration(primaryDataDirectory, [
            "listen_addresses = '127.0.0.1'",
            "port = \(primaryPort)",
            "unix_socket_directories = '\(directory)'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "hot_standby = on",
            "fsync = off",
            "synchronous_standby_names = '\(synchronous ? ReplicatedPostgres.standbyName : "")'",
            "synchronous_commit = on",
        ])
        try TestServers.runAsPostgresUser("\(postgresBin)/pg_ctl", ["-D", primaryDataDirectory, "-l", primaryLog, "-w", "-t", "30", "start"])

        // -R writes primary_conninfo (with this application_name) and standby.signal.
        try TestServers.runAsPostgresUser("\(postgresBin)/pg_basebackup", [
            "-R", "-X", "stream", "-d", "host=127.0.0.1 port=\(primaryPort) user=postgres application_name=\(ReplicatedPostgres.standbyName)",
            "-D", standbyDataDirectory,
        ])
        // The backup brought the primary's postgresql.conf; later lines win.
        try appendConfiguration(standbyDataDirectory, [
            "port = \(standbyPort)",
            "synchronous_standby_names = ''",
        ])
        try TestServers.runAsPostgresUser("\(postgresBin)/pg_ctl", ["-D", standbyDataDirectory, "-l", standbyLog, "-w", "-t", "30", "start"])

        let wanted = synchronous ? "streaming and sync" : "streaming"
        try waitFor("the primary to see \(ReplicatedPostgres.standbyName) \(wanted) in pg_stat_replication", log: standbyLog) { seen in
            let rows = try query(primaryPort, "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1", [ReplicatedPostgres.standbyName])
            seen = rows.isEmpty ? "no row" : "state=\(rows[0][0] ?? "null") sync_state=\(rows[0][1] ?? "null")"
            return rows.first.map { $0[0] == "streaming" && (!synchronous || $0[1] == "sync") } ?? false
        }
    }

    private func appendConfiguration(_ dataDirectory: String, _ lines: [String]) throws {
        let path = dataDirectory + "/postgresql.conf"
        guard let handle = FileHandle(forWritingAtPath: path) else { throw FixtureError(description: "cannot open \(path) for writing") }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(("\n# ReplicatedPostgres\n" + lines.joined(separator: "\n") + "\n").utf8))
    }

    // MARK: Addresses and connections

    func url(database: String = "postgres", port: Int) -> String {
        "postgresql://postgres@127.0.0.1:\(port)/\(database)"
    }

    /// Both servers, primary first; libpq takes the first that accepts writes.
    func multiHostURL(database: String = "postgres") -> String {
        "postgresql://postgres@127.0.0.1:\(primaryPort),127.0.0.1:\(standbyPort)/\(database)?target_session_attrs=read-write"
    }

    /// A new, empty database made on the primary; returns once the standby has it too (at
    /// once if its WAL receiver is frozen: then the standby gets it only after the thaw).
    func createDatabase() throws -> String {
        let name = "r\(databaseCounter.add(1, ordering: .relaxed).newValue)_\(getpid())"
        _ = try query(primaryPort, "CREATE DATABASE \(name)")
        if state.withLock({ $0.frozenReceiver }) == nil {
            try waitForStandbyToReplay()
        }
        return name
    }

    private func query(_ port: Int, _ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        let connection = try PGConnection(conninfo: url(port: port), applicationName: "replicated-postgres-fixture")
        return try (parameters.isEmpty ? connection.execute(sql) : connection.execute(sql, parameters)).rows
    }

    // MARK: Replication

    /// Waits until the standby has replayed everything the primary had written when this was called.
    func waitForStandbyToReplay(timeout: Double = 30) throws {
        guard let target = try query(primaryPort, "SELECT pg_current_wal_lsn()::text").first?[0] else {
            throw FixtureError(description: "the primary returned no pg_current_wal_lsn()")
        }
        let frozen = state.withLock { $0.frozenReceiver } != nil ? " (its WAL receiver is frozen)" : ""
        try waitFor("the standby\(frozen) to replay the primary's WAL up to \(target)", timeout: timeout, log: standbyLog) { seen in
            let row = try query(standbyPort, "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_replay_lsn() >= $1::pg_lsn", [target]).first
            seen = "replayed up to \(row?[0] ?? "null")"
            return row?[1] == "t"
        }
    }

    /// Stops the standby's WAL receiver (SIGSTOP): the primary keeps committing (and, when
    /// synchronous, its commits wait), the standby receives nothing until `thawWalReceiver()`.
    /// WAL the primary sent meanwhile waits unread in the receiver's socket; `promoteStandby()`
    /// discards it (see there).
    func freezeWalReceiver() throws {
        guard state.withLock({ $0.frozenReceiver }) == nil else { return }
        let pid = try poll("the standby's WAL receiver to stream", log: standbyLog) { seen -> pid_t? in
            let rows = try query(standbyPort, "SELECT pid, status FROM pg_stat_wal_receiver")
            seen = rows.isEmpty ? "no WAL receiver" : "status \(rows[0][1] ?? "null")"
            guard let row = rows.first, row[1] == "streaming", let text = row[0], let pid = pid_t(text) else { return nil }
            return pid
        }
        guard kill(pid, SIGSTOP) == 0 else {
            throw FixtureError(description: "cannot SIGSTOP the WAL receiver \(pid): \(String(cString: strerror(errno)))")
        }
        state.withLock { $0.frozenReceiver = pid }
        ReplicatedPostgres.setFrozen(pid, directory: directory)
    }

    /// Lets a frozen WAL receiver go on (SIGCONT): it reads what the primary sent meanwhile —
    /// even after `stopPrimaryImmediately()`, since that WAL is already in its socket. To lose
    /// the commits a frozen standby did not receive, call `promoteStandby()` without thawing.
    func thawWalReceiver() {
        guard let pid = state.withLock({ state -> pid_t? in defer { state.frozenReceiver = nil }; return state.frozenReceiver }) else { return }
        kill(pid, SIGCONT)
        ReplicatedPostgres.setFrozen(nil, directory: directory)
    }

    // MARK: Failover

    func stopPrimaryImmediately() throws {
        try TestServers.runAsPostgresUser("\(postgresBin)/pg_ctl", ["-D", primaryDataDirectory, "-m", "immediate", "-w", "-t", "30", "stop"])
    }

    /// Promotes the standby and waits until it accepts writes (`pg_is_in_recovery()` false).
    ///
    /// If its WAL receiver is frozen, it is killed first (SIGKILL) rather than thawed: thawed, it
    /// would read WAL the primary sent before it died from its socket, and the commits a frozen
    /// standby never received would not be lost. The postmaster restarts the standby's processes
    /// as after a crash (connections to the standby are dropped), it recovers from its own pg_wal
    /// and only then is promoted.
    func promoteStandby() throws {
        if let pid = state.withLock({ state -> pid_t? in defer { state.frozenReceiver = nil }; return state.frozenReceiver }) {
            ReplicatedPostgres.setFrozen(nil, directory: directory)
            kill(pid, SIGKILL)
            // Once the postmaster has reaped it, it is in crash recovery and refuses connections
            // until the standby is back: the next query that succeeds is after the restart.
            try waitFor("the killed WAL receiver \(pid) to be reaped", log: standbyLog) { seen in
                seen = "still in /proc"
                return !FileManager.default.fileExists(atPath: "/proc/\(pid)")
            }
            try waitFor("the standby to come back in recovery after its WAL receiver was killed", log: standbyLog) { seen in
                let recovering = try query(standbyPort, "SELECT pg_is_in_recovery()").first?[0]
                seen = "pg_is_in_recovery() = \(recovering ?? "null")"
                return recovering == "t"
            }
        }
        try TestServers.runAsPostgresUser("\(postgresBin)/pg_ctl", ["-D", standbyDataDirectory, "-w", "-t", "30", "promote"])
        try waitFor("the promoted standby to leave recovery", log: standbyLog) { seen in
            let recovering = try query(standbyPort, "SELECT pg_is_in_recovery()").first?[0]
            seen = "pg_is_in_recovery() = \(recovering ?? "null")"
            return recovering == "f"
        }
    }

    // MARK: Teardown

    /// Stops both servers (`-m immediate`) and removes the directory. Safe to call again.
    func stop() {
        let (alreadyStopped, frozen) = state.withLock { state -> (Bool, pid_t?) in
            defer { state.stopped = true; state.frozenReceiver = nil }
            return (state.stopped, state.frozenReceiver)
        }
        guard !alreadyStopped else { return }
        // A stopped process ignores the postmaster's SIGQUIT, which would then wait 5 s to SIGKILL it.
        if let frozen { kill(frozen, SIGCONT) }
        for dataDirectory in [standbyDataDirectory, primaryDataDirectory] where FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
            _ = try? TestServers.runAsPostgresUser("\(postgresBin)/pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "-t", "30", "stop"])
        }
        try? FileManager.default.removeItem(atPath: directory)
        ReplicatedPostgres.unregister(directory: directory)
    }

    // MARK: Waiting

    /// Polls `probe` (errors count as "not yet") until it returns true; past `timeout` throws an
    /// error naming what did not happen, what was last seen and the log to read.
    private func waitFor(_ what: String, timeout: Double = 30, log: String, _ probe: (_ seen: inout String) throws -> Bool) throws {
        try poll(what, timeout: timeout, log: log) { seen -> Bool? in try probe(&seen) ? true : nil }
    }

    @discardableResult
    private func poll<T>(_ what: String, timeout: Double = 30, log: String, _ probe: (_ seen: inout String) throws -> T?) throws -> T {
        try TestServers.poll("ReplicatedPostgres: \(what)", timeout: timeout, context: { "see \(log)" }, probe)
    }

    // MARK: Clean-up at exit

    private struct Registered: Sendable {
        var dataDirectories: [String]
        var bin: String
        var frozenReceiver: pid_t?
    }

    /// Every instance not yet stopped, by directory: what the exit hook stops and removes.
    private static let registry = Mutex<[String: Registered]>([:])

    private static let exitHook: Void = {
        atexit { ReplicatedPostgres.cleanUpAtExit() }
    }()

    private static func register(directory: String, dataDirectories: [String], bin: String) {
        _ = exitHook
        registry.withLock { $0[directory] = Registered(dataDirectories: dataDirectories, bin: bin) }
    }

    private static func setFrozen(_ pid: pid_t?, directory: String) {
        registry.withLock { $0[directory]?.frozenReceiver = pid }
    }

    private static func unregister(directory: String) {
        _ = registry.withLock { $0.removeValue(forKey: directory) }
    }

    private static func cleanUpAtExit() {
        let left = registry.withLock { registry in defer { registry = [:] }; return registry }
        for (directory, entry) in left {
            if let pid = entry.frozenReceiver { kill(pid, SIGCONT) }
            for dataDirectory in entry.dataDirectories where FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") {
                _ = try? TestServers.runAsPostgresUser("\(entry.bin)/pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "-t", "30", "stop"])
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}

extension TestServers {
    /// Runs `tool` as the postgres OS user when we are root (PostgreSQL and PgBouncer refuse to
    /// run as root), as ourselves otherwise; like `asPostgresUser`, without the shared servers.
    @discardableResult
    static func runAsPostgresUser(_ tool: String, _ arguments: [String]) throws(TestServerError) -> String {
        if getuid() == 0 {
            try run("/usr/sbin/runuser", ["-u", "postgres", "--", tool] + arguments)
        } else {
            try run(tool, arguments)
        }
    }
}
