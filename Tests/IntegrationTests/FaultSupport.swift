import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import PostgresClient
import RedisClient
import Synchronization
import Testing

/// The bot under fault: a thread that, at a steady rate, caches a key of its own (`tx:{tid}:{hash}`,
/// unique per write) and then commits the settled trade that makes it stale. It remembers which
/// trades committed, so a test can demand that every one of their keys was deleted.
///
/// It keeps going through faults the way a bot would: a failed Redis write means the key was not
/// cached (nothing to invalidate); a failed commit is resolved by looking the trade up after
/// reconnecting (a COMMIT whose answer was lost may still have committed).
final class BotStream: @unchecked Sendable {
    struct Write: Sendable {
        var key: String
        var cached: Bool
        var committedAt: Date
    }

    private let databaseURL: String
    private let redisPort: Int
    private let prefix: String
    private let tag: String
    private let interval: Double
    private let stopFlag = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    private let state = Mutex<(writes: [Write], failures: Int, lastError: String)>(([], 0, ""))

    init(databaseURL: String, redisPort: Int, prefix: String, tag: String = "s", perSecond: Double = 200) {
        self.databaseURL = databaseURL
        self.redisPort = redisPort
        self.prefix = prefix
        self.tag = tag
        self.interval = 1 / perSecond
    }

    var writes: [Write] { state.withLock { $0.writes } }
    var committed: Int { state.withLock { $0.writes.count } }
    /// Writes the bot saw fail (and, for commits, found not committed afterwards).
    var failures: Int { state.withLock { $0.failures } }
    var lastError: String { state.withLock { $0.lastError } }

    func start() {
        let thread = Thread { [self] in run(); done.signal() }
        thread.start()
    }

    func stop() {
        stopFlag.store(true, ordering: .relaxed)
        done.wait()
    }

    /// Waits until at least `count` more writes committed than had when called; fails the test
    /// (with how far the bot got, and why its writes failed) if they do not within `timeout`, and
    /// then tells the bot to stop, so that a failed test leaves no writer behind.
    func waitForCommits(_ count: Int, timeout: Double = 30, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let target = committed + count
        do {
            try awaitCondition("\(count) more commits of the bot (\(tag))", timeout: timeout, interval: 5_000, sourceLocation: sourceLocation) { seen in
                seen = "\(committed) of \(target) committed, \(failures) failed writes, last error: \(lastError.isEmpty ? "none" : lastError)"
                return committed >= target
            }
        } catch {
            stopFlag.store(true, ordering: .relaxed)
            throw error
        }
    }

    private func run() {
        var db: PGConnection? = nil
        var redis: RedisConnection? = nil
        var i = 0
        var next = Date()
        while !stopFlag.load(ordering: .relaxed) {
            i += 1
            let tid = 500_000 + i % 1000
            let hash = "0x\(tag)\(i)"
            let key = "tx:\(tid):\(hash)"
            if redis == nil { redis = try? RedisConnection(address: .tcp(host: "127.0.0.1", port: redisPort), timeoutMilliseconds: 200) }
            var cached = false
            if let connection = redis {
                do {
                    cached = try connection.command([Array("SET".utf8), Array((prefix + key).utf8), Array("cached".utf8)]) == .status("OK")
                } catch {
                    redis = nil
                }
            }
            var committed = false
            do {
                if db == nil { db = try PGConnection(conninfo: databaseURL, applicationName: "test-bot") }
                try db!.execute(DeliveryTests.settledTrade(tid, hash))
                committed = true
            } catch {
                db = nil
                state.withLock { $0.lastError = "\(error)" }
                // Did it commit after all? Ask once the server answers again.
                for _ in 0..<400 where !stopFlag.load(ordering: .relaxed) {
                    if let check = try? PGConnection(conninfo: databaseURL, applicationName: "test-bot"),
                       let rows = try? check.execute("SELECT count(*) FROM trades WHERE tx_hash = $1", [hash]) {
                        committed = rows[0, 0] == "1"
                        db = check
                        break
                    }
                    usleep(50_000)
                }
            }
            let write = Write(key: key, cached: cached, committedAt: Date())
            state.withLock { if committed { $0.writes.append(write) } else { $0.failures += 1 } }
            next = next.addingTimeInterval(interval)
            let pause = next.timeIntervalSinceNow
            if pause > 0 { usleep(UInt32(pause * 1_000_000)) } else if pause < -1 { next = Date() }
        }
    }
}

extension Harness {
    /// Every key the bot cached for a committed write that still exists in Redis: missed
    /// invalidations. Must be empty.
    func keysNeverDeleted(_ writes: [BotStream.Write], redis: RedisConnection? = nil) throws -> [String] {
        let keys = writes.filter(\.cached).map(\.key)
        let gone = try deleted(among: keys, redis: redis)
        return keys.filter { !gone.contains($0) }
    }
}

/// A PostgreSQL of a test's own, for faults that would disturb every other test (restarts).
final class ExtraPostgres {
    let servers: TestServers
    let directory: String
    let port: Int

    init(servers: TestServers) throws {
        self.servers = servers
        port = TestServers.freePort()
        directory = servers.directory + "/pg-extra-\(port)"
        try servers.asPostgresUser("\(servers.postgresBin)/initdb", ["-D", directory, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
        let options = "-p \(port) -k \(servers.directory) -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        try servers.asPostgresUser("\(servers.postgresBin)/pg_ctl", ["-D", directory, "-l", directory + ".log", "-o", options, "-w", "-t", "60", "start"])
    }

    deinit { stop() }

    var url: String { "postgresql://postgres@127.0.0.1:\(port)/postgres" }

    func restart() throws {
        try servers.asPostgresUser("\(servers.postgresBin)/pg_ctl", ["-D", directory, "-m", "fast", "-w", "-t", "60", "restart"])
    }

    func stop() {
        try? servers.asPostgresUser("\(servers.postgresBin)/pg_ctl", ["-D", directory, "-m", "immediate", "-w", "stop"])
    }
}

/// A TCP relay between the worker and Postgres that can go silent: `freeze()` stops relaying on
/// every connection open at that moment without closing anything, as a half-open connection or
/// a dead middlebox does (no RST, no FIN, the kernel still acknowledges). New connections relay
/// normally.
final class SilentableProxy: Sendable {
    let port: Int
    private let targetPort: Int
    private let listener: Int32
    private let generation = Atomic<Int>(0)
    private let frozenUpTo = Atomic<Int>(-1)
    private let stopped = Atomic<Bool>(false)

    init(targetPort: Int) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0, listen(fd, 16) == 0 else { throw ProxyError.cannotListen }
        withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        listener = fd
        Thread { [self] in acceptLoop() }.start()
    }

    enum ProxyError: Error { case cannotListen }

    /// Every connection open now stops relaying, for good.
    func freeze() { frozenUpTo.store(generation.load(ordering: .sequentiallyConsistent), ordering: .sequentiallyConsistent) }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while !stopped.load(ordering: .relaxed) {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { if stopped.load(ordering: .relaxed) { return } else { continue } }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = in_port_t(UInt16(targetPort).bigEndian)
            let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard connected == 0 else { close(client); close(upstream); continue }
            let mine = generation.add(1, ordering: .sequentiallyConsistent).newValue
            Thread { [self] in relay(client, upstream, generation: mine) }.start()
        }
    }

    private func relay(_ a: Int32, _ b: Int32, generation mine: Int) {
        defer { close(a); close(b) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !stopped.load(ordering: .relaxed) {
            if mine <= frozenUpTo.load(ordering: .sequentiallyConsistent) {
                // Silent: read nothing, write nothing, close nothing.
                usleep(50_000)
                continue
            }
            var fds = [pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, 50) >= 0 else { return }
            for (index, from) in [a, b].enumerated() where fds[index].revents != 0 {
                if mine <= frozenUpTo.load(ordering: .sequentiallyConsistent) { break }
                let n = read(from, &buffer, buffer.count)
                if n <= 0 { return }
                let to = from == a ? b : a
                var sent = 0
                while sent < n {
                    let w = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, n - sent) }
                    if w <= 0 { return }
                    sent += w
                }
            }
        }
    }
}
