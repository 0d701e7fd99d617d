import Foundation
import Glibc
import RedisClient
import Synchronization

/// A Redis master with one replica and three sentinels watching it as `mymaster` (quorum 2,
/// `down-after-milliseconds` 1000, `failover-timeout` 5000), each on a free loopback port: for
/// tests of Sentinel discovery and failover. Unlike `TestServers` it is not shared: each test
/// makes its own and stops it.
///
/// The servers keep nothing on disk (`--save "" --appendonly no`). Their pid files are
/// `redis-sentinel-group-*.pid` in the shared test directory, so `TestServers`' exit hook kills
/// whatever a crashed test left running; configuration files (which the sentinels rewrite, one
/// each) and logs are in a directory of the group's own there.
///
/// `init` returns once the replica is connected (`connected_slaves:1` on the master, its link up)
/// and every sentinel knows the master, the replica and the two other sentinels.
///
/// All five are killed (SIGKILL; a frozen replica too) by `stop()`, by `deinit`, and at the latest
/// when the test process exits.
final class RedisSentinelGroup: Sendable {
    typealias FixtureError = TestServers.TestServerError

    static let defaultMasterName = "mymaster"

    /// The group's own directory: configuration files and logs.
    let directory: String
    /// The master at start (after a failover, ask `currentMasterPort()`).
    let masterPort: Int
    /// The replica at start (`--replicaof 127.0.0.1 masterPort`).
    let replicaPort: Int
    let sentinelPorts: [Int]

    /// Where the pid files are: `TestServers`' directory, whose exit hook kills every `redis*.pid`.
    private let pidDirectory: String
    private let tag: String

    private struct State {
        var stopped = false
        var replicaFrozen = false
    }
    private let state = Mutex(State())
    private static let instanceCounter = Atomic<Int>(0)

    init(timeout: Double = 30) throws {
        let servers = try TestServers.get()
        let number = RedisSentinelGroup.instanceCounter.add(1, ordering: .relaxed).newValue
        tag = "redis-sentinel-group-\(number)"
        pidDirectory = servers.directory
        directory = servers.directory + "/sentinel-group-\(number)"
        try? FileManager.default.removeItem(atPath: directory)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw FixtureError(description: "RedisSentinelGroup: cannot create \(directory): \(error)")
        }
        var ports: [Int] = []
        while ports.count < 5 {
            let port = TestServers.freePort()
            if port != servers.redisPort && port != servers.postgresPort && !ports.contains(port) { ports.append(port) }
        }
        masterPort = ports[0]
        replicaPort = ports[1]
        sentinelPorts = Array(ports[2...])
        do {
            try start(timeout: timeout)
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    // MARK: Files

    private enum Role { case master, replica, sentinel(Int) }

    private func name(_ role: Role) -> String {
        switch role {
        case .master: return "master-\(masterPort)"
        case .replica: return "replica-\(replicaPort)"
        case .sentinel(let port): return "sentinel-\(port)"
        }
    }

    private func pidFile(_ role: Role) -> String { "\(pidDirectory)/\(tag)-\(name(role)).pid" }
    private func logFile(_ role: Role) -> String { "\(directory)/\(name(role)).log" }
    private var allRoles: [Role] { [.master, .replica] + sentinelPorts.map { .sentinel($0) } }

    /// The last lines of every server's log: the directory is gone once the group is stopped.
    var logTails: String {
        allRoles.map { role in
            let lines = ((try? String(contentsOfFile: logFile(role), encoding: .utf8)) ?? "(no log)").split(separator: "\n").suffix(8)
            return "\(name(role)):\n" + lines.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    // MARK: Start

    private func start(timeout: Double) throws {
        let redisServer = TestServers.which("redis-server") ?? "/usr/bin/redis-server"
        func launch(_ role: Role, _ arguments: [String]) throws {
            let status = try TestServers.spawnAndWait(redisServer, arguments, outputPath: directory + "/start.log")
            guard status == 0 else {
                let output = (try? String(contentsOfFile: directory + "/start.log", encoding: .utf8)) ?? ""
                throw FixtureError(description: "RedisSentinelGroup: redis-server for the \(name(role)) exited \(status): \(output)\n\(logTails)")
            }
        }
        func serverArguments(_ role: Role, port: Int) -> [String] {
            ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory,
             "--logfile", logFile(role), "--daemonize", "yes", "--pidfile", pidFile(role),
             // A diskless full sync waits 5 s (the default) for more replicas to come: none will.
             "--repl-diskless-sync-delay", "0"]
        }
        try launch(.master, serverArguments(.master, port: masterPort))
        try launch(.replica, serverArguments(.replica, port: replicaPort) + ["--replicaof", "127.0.0.1", "\(masterPort)"])
        try waitFor("the replica \(replicaPort) to be connected to the master \(masterPort)", timeout: timeout) { seen in
            let master = try info(port: masterPort, section: "replication")
            let replica = try info(port: replicaPort, section: "replication")
            seen = "master: connected_slaves=\(master["connected_slaves"] ?? "?"); replica: master_link_status=\(replica["master_link_status"] ?? "?")"
            return master["connected_slaves"] == "1" && replica["master_link_status"] == "up"
        }
        for port in sentinelPorts {
            let configuration = directory + "/sentinel-\(port).conf"
            let lines = [
                "port \(port)",
                "bind 127.0.0.1",
                "daemonize yes",
                "pidfile \(pidFile(.sentinel(port)))",
                "logfile \(logFile(.sentinel(port)))",
                "dir \(directory)",
                "sentinel monitor \(RedisSentinelGroup.defaultMasterName) 127.0.0.1 \(masterPort) 2",
                "sentinel down-after-milliseconds \(RedisSentinelGroup.defaultMasterName) 1000",
                "sentinel failover-timeout \(RedisSentinelGroup.defaultMasterName) 5000",
                "sentinel parallel-syncs \(RedisSentinelGroup.defaultMasterName) 1",
            ]
            do {
                try (lines.joined(separator: "\n") + "\n").write(toFile: configuration, atomically: true, encoding: .utf8)
            } catch {
                throw FixtureError(description: "RedisSentinelGroup: cannot write \(configuration): \(error)")
            }
            try launch(.sentinel(port), [configuration, "--sentinel"])
        }
        for port in sentinelPorts {
            try waitFor("sentinel \(port) to know the master, the replica and the two other sentinels", timeout: timeout) { seen in
                let master = try sentinelMaster(sentinelPort: port)
                seen = "flags=\(master["flags"] ?? "?") port=\(master["port"] ?? "?") num-slaves=\(master["num-slaves"] ?? "?") num-other-sentinels=\(master["num-other-sentinels"] ?? "?")"
                return master["port"] == "\(masterPort)" && master["flags"] == "master"
                    && master["num-slaves"] == "1" && master["num-other-sentinels"] == "2"
            }
        }
        // Redis writes its pid file before it serves: by now every one is there.
        for role in allRoles where readPid(role) == nil {
            throw FixtureError(description: "RedisSentinelGroup: no pid in \(pidFile(role))")
        }
    }

    // MARK: Addresses and connections

    /// The `redis-sentinel://` URL naming all three sentinels.
    func url(masterName: String = RedisSentinelGroup.defaultMasterName, database: Int = 0) -> String {
        "redis-sentinel://\(sentinelPorts.map { "127.0.0.1:\($0)" }.joined(separator: ","))/\(masterName)/\(database)"
    }

    /// A new connection to one of the group's servers (1 s timeout: a frozen server must not hang a test for long).
    func connection(port: Int) throws -> RedisConnection {
        try RedisConnection(address: .tcp(host: "127.0.0.1", port: port), timeoutMilliseconds: 1000)
    }

    /// The master's port as the sentinels say now: the first that answers (during a failover
    /// they may briefly disagree).
    func currentMasterPort() throws -> Int {
        var failures: [String] = []
        for port in sentinelPorts {
            do {
                return try masterPortAccording(toSentinel: port)
            } catch {
                failures.append("sentinel \(port): \(error)")
            }
        }
        throw FixtureError(description: "RedisSentinelGroup: no sentinel named the master: \(failures.joined(separator: "; "))")
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel.
    func masterPortAccording(toSentinel port: Int) throws -> Int {
        let reply = try command(port: port, ["SENTINEL", "get-master-addr-by-name", RedisSentinelGroup.defaultMasterName])
        guard case .array(let fields) = reply, fields.count == 2, case .bulk(let portText) = fields[1],
              let master = Int(String(decoding: portText, as: UTF8.self)) else {
            throw FixtureError(description: "get-master-addr-by-name answered \(reply)")
        }
        return master
    }

    /// `ROLE`'s first field on a server: "master", "slave" (or "sentinel").
    func role(port: Int) throws -> String {
        let reply = try command(port: port, ["ROLE"])
        guard case .array(let fields) = reply, case .bulk(let name)? = fields.first else {
            throw FixtureError(description: "ROLE on \(port) answered \(reply)")
        }
        return String(decoding: name, as: UTF8.self)
    }

    /// `SENTINEL master mymaster` on one sentinel, as a dictionary.
    func sentinelMaster(sentinelPort: Int) throws -> [String: String] {
        let reply = try command(port: sentinelPort, ["SENTINEL", "master", RedisSentinelGroup.defaultMasterName])
        guard case .array(let fields) = reply else { throw FixtureError(description: "SENTINEL master answered \(reply)") }
        var result: [String: String] = [:]
        for index in stride(from: 0, to: fields.count - 1, by: 2) {
            if case .bulk(let key) = fields[index], case .bulk(let value) = fields[index + 1] {
                result[String(decoding: key, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
            }
        }
        return result
    }

    /// `INFO section` on a server, as a dictionary.
    func info(port: Int, section: String) throws -> [String: String] {
        let reply = try command(port: port, ["INFO", section])
        guard case .bulk(let bytes) = reply else { throw FixtureError(description: "INFO \(section) on \(port) answered \(reply)") }
        var result: [String: String] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":"), !line.hasPrefix("#") else { continue }
            result[String(line[..<colon])] = String(line[line.index(after: colon)...])
        }
        return result
    }

    /// One command on a new connection to `port`.
    func command(port: Int, _ arguments: [String]) throws -> RedisReply {
        try connection(port: port).command(arguments.map { Array($0.utf8) })
    }

    // MARK: Faults

    /// Kills the master at start (SIGKILL, by its pid file) and returns once its port refuses
    /// connections: nothing it had not yet passed to its replica reaches it any more.
    func killMaster() {
        guard let pid = readPid(.master) else { return }
        kill(pid, SIGKILL)
        unlink(pidFile(.master))
        for _ in 0..<400 where (try? connection(port: masterPort)) != nil { usleep(5_000) }
    }

    /// Stops the replica (SIGSTOP): it reads nothing, answers nothing (the sentinels soon see it
    /// down) until `thawReplica()`.
    func freezeReplica() throws {
        guard let pid = readPid(.replica) else { throw FixtureError(description: "RedisSentinelGroup: no pid in \(pidFile(.replica))") }
        guard kill(pid, SIGSTOP) == 0 else {
            throw FixtureError(description: "RedisSentinelGroup: cannot SIGSTOP the replica \(pid): \(String(cString: strerror(errno)))")
        }
        state.withLock { $0.replicaFrozen = true }
    }

    /// Lets a frozen replica go on (SIGCONT).
    func thawReplica() {
        guard state.withLock({ state -> Bool in defer { state.replicaFrozen = false }; return state.replicaFrozen }) else { return }
        if let pid = readPid(.replica) { kill(pid, SIGCONT) }
    }

    /// Closes the master's connection to its replica (`CLIENT KILL TYPE replica`): what the
    /// master writes afterwards never reaches the replica's socket. A frozen replica notices only
    /// once thawed; it then tries to reconnect (and resync, if the master is still there).
    func cutReplicationLink() throws {
        let reply = try command(port: masterPort, ["CLIENT", "KILL", "TYPE", "replica"])
        guard case .integer(let killed) = reply, killed >= 1 else {
            throw FixtureError(description: "RedisSentinelGroup: CLIENT KILL TYPE replica on the master answered \(reply): no replica connected")
        }
    }

    /// Waits until a sentinel names another master than the one at start and that server
    /// answers ROLE as a master; returns its port.
    @discardableResult
    func waitForFailover(timeout: Double = 30) throws -> Int {
        try poll("a failover: a sentinel naming another master than \(masterPort), which answers ROLE as master", timeout: timeout) { seen -> Int? in
            var answers: [String] = []
            for sentinel in sentinelPorts {
                guard let port = try? masterPortAccording(toSentinel: sentinel) else { answers.append("\(sentinel): no answer"); continue }
                answers.append("\(sentinel): \(port)")
                guard port != masterPort else { continue }
                let answer = (try? role(port: port)) ?? "no answer"
                answers.append("ROLE on \(port): \(answer)")
                if answer == "master" { return port }
            }
            seen = answers.joined(separator: ", ")
            return nil
        }
    }

    // MARK: Teardown

    /// Kills all five (SIGKILL; a frozen replica is killed as it is) and removes the pid files
    /// and the directory. Safe to call again.
    func stop() {
        let alreadyStopped = state.withLock { state -> Bool in
            defer { state.stopped = true; state.replicaFrozen = false }
            return state.stopped
        }
        guard !alreadyStopped else { return }
        for role in allRoles {
            if let pid = readPid(role) { kill(pid, SIGKILL) }
            unlink(pidFile(role))
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func readPid(_ role: Role) -> pid_t? {
        guard let text = try? String(contentsOfFile: pidFile(role), encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else { return nil }
        return pid
    }

    // MARK: Waiting

    private func waitFor(_ what: String, timeout: Double, _ probe: (_ seen: inout String) throws -> Bool) throws {
        _ = try poll(what, timeout: timeout) { seen -> Bool? in try probe(&seen) ? true : nil }
    }

    private func poll<T>(_ what: String, timeout: Double, _ probe: (_ seen: inout String) throws -> T?) throws -> T {
        try TestServers.poll("RedisSentinelGroup: \(what)", timeout: timeout, context: { "the servers' logs end with:\n\(logTails)" }, probe)
    }
}
