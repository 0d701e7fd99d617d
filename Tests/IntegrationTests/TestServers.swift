import Foundation
import Glibc
import PostgresClient
import RedisClient
import Synchronization
import Testing

/// Throwaway PostgreSQL 15 and Redis 7 servers for the integration tests: started once per test
/// process on free loopback ports in a temporary directory, stopped and removed at exit.
///
/// There is no skipping: if a server cannot start, every integration test fails with the reason.
final class TestServers: Sendable {
    let directory: String
    let postgresPort: Int
    let redisPort: Int
    let postgresBin: String
    private let counter = Atomic<Int>(0)

    static let shared: Result<TestServers, TestServerError> = Result { () throws(TestServerError) -> TestServers in try TestServers() }

    static func get() throws -> TestServers { try shared.get() }

    struct TestServerError: Error, CustomStringConvertible {
        var description: String
    }

    private init() throws(TestServerError) {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("cache-invalidator-test-\(getpid())").path
        try? FileManager.default.removeItem(atPath: base)
        do {
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        } catch {
            throw TestServerError(description: "cannot create \(base): \(error)")
        }
        directory = base
        postgresBin = TestServers.findPostgresBin()
        postgresPort = TestServers.freePort()
        redisPort = TestServers.freePort()
        TestServers.registerCleanup(directory: base, postgresBin: postgresBin)
        try startPostgres()
        try startRedis()
    }

    // MARK: Postgres

    private var pgData: String { directory + "/pg" }

    private func startPostgres() throws(TestServerError) {
        let isRoot = getuid() == 0
        if isRoot {
            // Postgres refuses to run as root: hand the directory to the postgres OS user.
            try TestServers.run("/bin/chown", ["postgres:postgres", directory])
        }
        try asPostgresUser("\(postgresBin)/initdb", ["-D", pgData, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
        let options = "-p \(postgresPort) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        try asPostgresUser("\(postgresBin)/pg_ctl", ["-D", pgData, "-l", directory + "/postgres.log", "-o", options, "-w", "-t", "60", "start"])
    }

    func asPostgresUser(_ tool: String, _ arguments: [String]) throws(TestServerError) {
        if getuid() == 0 {
            try TestServers.run("/usr/sbin/runuser", ["-u", "postgres", "--", tool] + arguments)
        } else {
            try TestServers.run(tool, arguments)
        }
    }

    /// Superuser URL of a database on the test server.
    func postgresURL(database: String = "postgres", user: String = "postgres", password: String? = nil) -> String {
        let auth = password.map { "\(user):\($0)" } ?? user
        return "postgresql://\(auth)@127.0.0.1:\(postgresPort)/\(database)"
    }

    /// A fresh, empty database for one test.
    func makeDatabase() throws -> String {
        let name = "t\(counter.add(1, ordering: .relaxed).newValue)_\(getpid())"
        let admin = try PGConnection(conninfo: postgresURL())
        try admin.execute("CREATE DATABASE \(name)")
        return name
    }

    func restartPostgres() throws {
        try asPostgresUser("\(postgresBin)/pg_ctl", ["-D", pgData, "-m", "fast", "-w", "-t", "60", "restart"])
    }

    // MARK: Redis

    private func startRedis() throws(TestServerError) {
        let arguments = ["--port", "\(redisPort)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", directory, "--logfile", directory + "/redis.log", "--daemonize", "yes",
                         "--pidfile", directory + "/redis.pid", "--notify-keyspace-events", "KEg"]
        do {
            let status = try TestServers.spawnAndWait(TestServers.which("redis-server") ?? "/usr/bin/redis-server", arguments, outputPath: directory + "/redis-start.log")
            guard status == 0 else { throw TestServerError(description: "redis-server exited \(status); see \(directory)/redis-start.log") }
        } catch let error as TestServerError {
            throw error
        } catch {
            throw TestServerError(description: "redis-server cannot start (install redis-server): \(error)")
        }
        for _ in 0..<200 {
            if let connection = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: redisPort)),
               (try? connection.command([Array("PING".utf8)])) == .status("PONG") {
                return
            }
            usleep(25_000)
        }
        throw TestServerError(description: "redis-server did not answer PING on port \(redisPort); see \(directory)/redis.log")
    }

    /// A Redis of its own for a test that stops and restarts it (the shared one serves every test).
    /// `probe: false` for a server the plaintext PING cannot reach (TLS only): the caller waits.
    func startExtraRedis(port: Int? = nil, extraArguments: [String] = [], probe: Bool = true) throws -> Int {
        let port = port ?? TestServers.freePort()
        let arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory,
                         "--logfile", directory + "/redis-\(port).log", "--daemonize", "yes", "--pidfile", directory + "/redis-\(port).pid"] + extraArguments
        let status = try TestServers.spawnAndWait(TestServers.which("redis-server") ?? "/usr/bin/redis-server", arguments, outputPath: directory + "/redis-start.log")
        guard status == 0 else { throw TestServerError(description: "redis-server on \(port) exited \(status)") }
        if !probe { return port }
        for _ in 0..<200 {
            if let connection = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port)),
               let pong = try? connection.command([Array("PING".utf8)]), pong == .status("PONG") || pong.isAuthError {
                return port
            }
            usleep(25_000)
        }
        throw TestServerError(description: "extra redis-server did not answer on \(port)")
    }

    func stopExtraRedis(port: Int, password: String? = nil) {
        if let connection = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port)) {
            if let password { try? connection.handshake(username: nil, password: password, database: 0) }
            _ = try? connection.command([Array("SHUTDOWN".utf8), Array("NOSAVE".utf8)])
        }
        for _ in 0..<200 where (try? RedisConnection(address: .tcp(host: "127.0.0.1", port: port))) != nil { usleep(25_000) }
    }


    /// Stops an extra Redis by its pid file (one no plaintext connection can reach).
    func killExtraRedis(port: Int) {
        let pidFile = directory + "/redis-\(port).pid"
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return }
        kill(pid, SIGKILL)
        try? FileManager.default.removeItem(atPath: pidFile)
    }

    func redisConnection() throws -> RedisConnection {
        try RedisConnection(address: .tcp(host: "127.0.0.1", port: redisPort))
    }

    var redisURL: String { "redis://127.0.0.1:\(redisPort)/0" }

    // MARK: Process helpers

    static func findPostgresBin() -> String {
        if let output = try? capture("/usr/bin/pg_config", ["--bindir"]), FileManager.default.fileExists(atPath: output + "/initdb") {
            return output
        }
        return "/usr/lib/postgresql/15/bin"
    }

    static func which(_ name: String) -> String? {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) throws(TestServerError) -> String {
        do {
            return try capture(tool, arguments)
        } catch let error as TestServerError {
            throw error
        } catch {
            throw TestServerError(description: "\(tool) failed to start: \(error)")
        }
    }

    /// Runs a tool to completion with posix_spawn and waitpid. Output goes to a file, not a pipe:
    /// `pg_ctl start` leaves the server holding its inherited descriptors, so reading a pipe to
    /// EOF would wait forever (and Foundation's Process can miss the exit of a short-lived child).
    static func capture(_ tool: String, _ arguments: [String]) throws -> String {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("ci-test-output-\(getpid())-\(UInt64.random(in: 0...UInt64.max))").path
        defer { unlink(outputPath) }
        let status = try spawnAndWait(tool, arguments, outputPath: outputPath)
        let text = ((try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard status == 0 else {
            throw TestServerError(description: "\(tool) \(arguments.joined(separator: " ")) exited \(status): \(text)")
        }
        return text
    }

    /// Spawns `tool` with stdin from /dev/null and stdout+stderr to `outputPath`; returns its exit status.
    static func spawnAndWait(_ tool: String, _ arguments: [String], outputPath: String, environment: [String]? = nil) throws -> Int32 {
        let pid = try spawn(tool, arguments, outputPath: outputPath, environment: environment)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw TestServerError(description: "waitpid failed: \(String(cString: strerror(errno)))") }
        }
        return exitCode(status)
    }

    /// Runs `tool` to completion with exactly `environment` (plus PATH) and returns its exit code
    /// and output. A command expected to end at once must not hang the suite if it starts working
    /// instead: past `timeout` it is killed and an issue recorded, naming `what`.
    static func runBounded(_ tool: String, _ arguments: [String], environment: [String: String], timeout: Double = 30, what: String) throws -> (status: Int32, output: String) {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("run-\(UUID().uuidString).log").path
        defer { unlink(outputPath) }
        let env = environment.merging(["PATH": "/usr/bin:/bin"]) { a, _ in a }.map { "\($0.key)=\($0.value)" }
        let pid = try spawn(tool, arguments, outputPath: outputPath, environment: env)
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(timeout)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                Issue.record("\(what) did not exit within \(Int(timeout)) s")
                break
            }
            usleep(10_000)
        }
        return (exitCode(status), (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    /// A `waitpid` status as a shell shows it: the exit code, or 128 + the signal.
    /// (WIFEXITED / WEXITSTATUS, spelled out: the C macros are not imported.)
    static func exitCode(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    static func spawn(_ tool: String, _ arguments: [String], outputPath: String, environment: [String]? = nil) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([tool] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let envStrings = environment ?? ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        let envp: [UnsafeMutablePointer<CChar>?] = envStrings.map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, tool, &actions, nil, argv, envp)
        guard result == 0 else {
            throw TestServerError(description: "cannot start \(tool): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// A fixture's wait: polls `probe` (an error counts as "not yet") until it returns a value;
    /// past `timeout` throws, naming what did not happen, what was last seen, and `context()`
    /// (where the servers' logs are, or how they end). Unlike `awaitValue` it records no issue:
    /// a fixture that cannot start throws to the test that asked for it.
    static func poll<T>(_ what: String, timeout: Double, context: () -> String, _ probe: (_ seen: inout String) throws -> T?) throws(TestServerError) -> T {
        let deadline = Date().addingTimeInterval(timeout)
        var seen = "nothing yet"
        while true {
            do {
                if let value = try probe(&seen) { return value }
            } catch {
                seen = "error: \(error)"
            }
            if Date() >= deadline { break }
            usleep(20_000)
        }
        throw TestServerError(description: "timed out after \(timeout) s waiting for \(what); last saw: \(seen); \(context())")
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    // MARK: Teardown

    private static let cleanup = Mutex<(directory: String, bin: String)?>(nil)

    private static func registerCleanup(directory: String, postgresBin: String) {
        cleanup.withLock { $0 = (directory, postgresBin) }
        atexit {
            guard let (directory, bin) = TestServers.cleanup.withLock({ $0 }) else { return }
            let pgctl = ["\(bin)/pg_ctl", "-D", directory + "/pg", "-m", "immediate", "-w", "stop"]
            if getuid() == 0 {
                _ = try? TestServers.spawnAndWait("/usr/sbin/runuser", ["-u", "postgres", "--"] + pgctl, outputPath: "/dev/null")
            } else {
                _ = try? TestServers.spawnAndWait(pgctl[0], Array(pgctl.dropFirst()), outputPath: "/dev/null")
            }
            for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where file.hasPrefix("redis") && file.hasSuffix(".pid") {
                if let pidText = try? String(contentsOfFile: directory + "/" + file, encoding: .utf8),
                   let pid = Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)) {
                    kill(pid, SIGKILL)
                }
            }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}

extension RedisReply {
    var isAuthError: Bool { if case .error(let message) = self { return message.hasPrefix("NOAUTH") } else { return false } }
}
