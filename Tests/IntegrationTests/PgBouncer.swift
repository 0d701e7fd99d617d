import Foundation
import Glibc
import PostgresClient
import Synchronization

/// A PgBouncer of a test's own in front of one PostgreSQL server (any database name is passed
/// through to it), listening on a free loopback port, with its configuration, log and pid file
/// in a directory of its own. `auth_type = trust`: no passwords, any user listed in `users`.
///
/// PgBouncer refuses to run as root, so as root it runs as the postgres OS user. Stopped by
/// `stop()`, by `deinit`, and at the latest when the test process exits.
///
/// libpq's `options` startup parameter (`-c name=value` settings) is refused by PgBouncer 1.18
/// ("unsupported startup parameter: options") unless listed in `ignore_startup_parameters`;
/// what `PGConnection` sends (application_name, client_encoding; its keepalive and timeout
/// settings stay in libpq) is accepted.
final class PgBouncer: Sendable {
    typealias FixtureError = TestServers.TestServerError

    enum PoolMode: String, Sendable {
        /// A client keeps one server connection until it disconnects.
        case session
        /// A client holds a server connection for one transaction only.
        case transaction
        /// A server connection for one statement: multi-statement transactions are refused.
        case statement
    }

    let directory: String
    let port: Int
    let poolMode: PoolMode
    let backendPort: Int

    var configurationPath: String { directory + "/pgbouncer.ini" }
    var logPath: String { directory + "/pgbouncer.log" }
    var pidPath: String { directory + "/pgbouncer.pid" }

    /// The daemon's pid once started; nil once stopped.
    private let pid = Mutex<pid_t?>(nil)
    private static let instanceCounter = Atomic<Int>(0)

    /// Starts PgBouncer and waits until `SELECT 1` through it (to the backend's "postgres"
    /// database, as the first of `users`) answers.
    ///
    /// `settings` are added to the `[pgbouncer]` section after the defaults (later lines win).
    /// The defaults include `server_login_retry = 1` (PgBouncer's 15 s would make a test of a
    /// backend coming back wait that long) and `admin_users = postgres` (`SHOW POOLS` etc. on the
    /// "pgbouncer" database).
    init(poolMode: PoolMode, backendPort: Int, users: [String] = ["postgres"], settings: [(String, String)] = []) throws {
        let number = PgBouncer.instanceCounter.add(1, ordering: .relaxed).newValue
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("cache-invalidator-pgbouncer-\(getpid())-\(number)").path
        try? FileManager.default.removeItem(atPath: base)
        directory = base
        port = TestServers.freePort()
        self.poolMode = poolMode
        self.backendPort = backendPort
        PgBouncer.register(directory: base)
        do {
            try start(users: users, settings: settings)
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    private func start(users: [String], settings: [(String, String)]) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let pgbouncerSettings: [(String, String)] = [
                ("listen_addr", "127.0.0.1"),
                ("listen_port", "\(port)"),
                ("unix_socket_dir", directory),
                ("auth_type", "trust"),
                ("auth_file", directory + "/userlist.txt"),
                ("admin_users", "postgres"),
                ("pool_mode", poolMode.rawValue),
                ("max_client_conn", "200"),
                ("default_pool_size", "20"),
                ("ignore_startup_parameters", "extra_float_digits"),
                ("server_login_retry", "1"),
                ("logfile", logPath),
                ("pidfile", pidPath),
            ] + settings
            let configuration = "[databases]\n* = host=127.0.0.1 port=\(backendPort)\n\n[pgbouncer]\n"
                + pgbouncerSettings.map { "\($0.0) = \($0.1)\n" }.joined()
            try configuration.write(toFile: configurationPath, atomically: true, encoding: .utf8)
            // userlist.txt: "name" "password" a line, a double quote in a name written twice.
            let userList = users.map { "\"\($0.replacingOccurrences(of: "\"", with: "\"\""))\" \"\"\n" }.joined()
            try userList.write(toFile: directory + "/userlist.txt", atomically: true, encoding: .utf8)
        } catch {
            throw FixtureError(description: "cannot write PgBouncer's configuration in \(directory): \(error)")
        }
        if getuid() == 0 {
            // PgBouncer refuses to run as root: hand the directory to the postgres OS user.
            try TestServers.run("/bin/chown", ["-R", "postgres:postgres", directory])
        }
        guard let pgbouncer = TestServers.which("pgbouncer") else {
            throw FixtureError(description: "pgbouncer not found in /usr/sbin, /usr/bin or /usr/local/bin (install the pgbouncer package; scripts/setup does)")
        }
        // -d: it forks and the parent exits, so this returns once it runs (or with its error,
        // e.g. a bad setting or a port in use); the pid file comes a moment later.
        let arguments = ["-d", configurationPath]
        try PgBouncer.withSignalsUnblocked { () throws(FixtureError) in
            try TestServers.runAsPostgresUser(pgbouncer, arguments)
        }

        let daemon = try poll("PgBouncer to write its pid file \(pidPath)") { seen -> pid_t? in
            let text = (try? String(contentsOfFile: pidPath, encoding: .utf8)) ?? ""
            seen = text.isEmpty ? "no pid file" : "pid file says \(text.debugDescription)"
            return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        pid.withLock { $0 = daemon }
        PgBouncer.setPID(daemon, directory: directory)

        let user = users.first ?? "postgres"
        try poll("SELECT 1 through PgBouncer on port \(port) (backend port \(backendPort))") { seen -> Bool? in
            guard PgBouncer.isAlive(daemon) else {
                throw FixtureError(description: "PgBouncer (pid \(daemon)) exited; see \(logPath)")
            }
            let connection = try PGConnection(conninfo: url(user: user), applicationName: "pgbouncer-fixture")
            let answer = try connection.execute("SELECT 1")[0, 0]
            seen = "SELECT 1 returned \(answer ?? "null")"
            return answer == "1" ? true : nil
        }
    }

    /// A URL of `database` on the backend, through PgBouncer.
    func url(database: String = "postgres", user: String = "postgres") -> String {
        "postgresql://\(user)@127.0.0.1:\(port)/\(database)"
    }

    /// SIGTERM (PgBouncer's immediate shutdown), SIGKILL if it is still there after 5 s; then
    /// removes the directory. Safe to call again.
    func stop() {
        let daemon = pid.withLock { pid -> pid_t? in defer { pid = nil }; return pid }
        if let daemon {
            PgBouncer.terminate(daemon)
        } else if FileManager.default.fileExists(atPath: directory), let text = try? String(contentsOfFile: pidPath, encoding: .utf8),
                  let written = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            // Started, but the start-up failed before the pid was taken.
            PgBouncer.terminate(written)
        }
        try? FileManager.default.removeItem(atPath: directory)
        PgBouncer.unregister(directory: directory)
    }

    private static func terminate(_ daemon: pid_t) {
        kill(daemon, SIGTERM)
        for _ in 0..<250 where isAlive(daemon) { usleep(20_000) }
        if isAlive(daemon) {
            kill(daemon, SIGKILL)
            for _ in 0..<250 where isAlive(daemon) { usleep(20_000) }
        }
    }

    /// Runs `body` on a thread of its own with no signal blocked, and waits for it. A process
    /// starts with its spawner's signal mask, and the threads tests run on block SIGTERM, SIGHUP
    /// and more (libdispatch's worker threads do); PgBouncer does not unblock them, so spawned
    /// from such a thread it would never see the SIGTERM of `stop()` (nor a SIGHUP reload).
    private static func withSignalsUnblocked(_ body: @escaping @Sendable () throws(FixtureError) -> Void) throws(FixtureError) {
        final class Outcome: Sendable {
            let result = Mutex<Result<Void, FixtureError>?>(nil)
        }
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        Thread {
            var none = sigset_t()
            sigemptyset(&none)
            pthread_sigmask(SIG_SETMASK, &none, nil)
            let result = Result { () throws(FixtureError) in try body() }
            outcome.result.withLock { $0 = result }
            done.signal()
        }.start()
        done.wait()
        try outcome.result.withLock { $0 ?? .failure(FixtureError(description: "PgBouncer's start-up thread ended without a result")) }.get()
    }

    /// Whether `pid` runs: a zombie does not count. The daemon is not our child: whoever
    /// reaps orphans here (PID 1 in a container may not) reaps it, if anyone.
    static func isAlive(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.range(of: ") ", options: .backwards) else { return false }
        return stat[end.upperBound...].first != "Z"
    }

    /// Polls `probe` (an error counts as "not yet", except a `FixtureError`, which ends the
    /// wait) until it returns a value; past `timeout` throws, naming what did not happen.
    @discardableResult
    private func poll<T>(_ what: String, timeout: Double = 30, _ probe: (_ seen: inout String) throws -> T?) throws -> T {
        let deadline = Date().addingTimeInterval(timeout)
        var seen = "nothing yet"
        while true {
            do {
                if let value = try probe(&seen) { return value }
            } catch let error as FixtureError {
                throw error
            } catch {
                seen = "error: \(error)"
            }
            if Date() >= deadline { break }
            usleep(20_000)
        }
        throw FixtureError(description: "PgBouncer: timed out after \(timeout) s waiting for \(what); last saw: \(seen); see \(logPath)")
    }

    // MARK: Clean-up at exit

    /// Every instance not yet stopped: its directory and, once known, its pid.
    private static let registry = Mutex<[String: pid_t?]>([:])

    private static let exitHook: Void = {
        atexit { PgBouncer.cleanUpAtExit() }
    }()

    private static func register(directory: String) {
        _ = exitHook
        registry.withLock { $0[directory] = .some(nil) }
    }

    private static func setPID(_ pid: pid_t, directory: String) {
        registry.withLock { $0[directory] = .some(pid) }
    }

    private static func unregister(directory: String) {
        _ = registry.withLock { $0.removeValue(forKey: directory) }
    }

    private static func cleanUpAtExit() {
        let left = registry.withLock { registry in defer { registry = [:] }; return registry }
        for (directory, pid) in left {
            if let pid { kill(pid, SIGKILL) }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}
