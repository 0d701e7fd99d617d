import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import RedisClient
import Testing

/// deploy/redis/users.acl against a real redis-server: the worker's Redis user can do its job
/// (the in-process worker, `cache-invalidator check`) and nothing else.
///
/// The shipped file holds placeholders instead of password hashes, so Redis refuses it as it is
/// (tested too). Each test loads a copy with the placeholders replaced the way the file's README
/// says (`sha256sum` of a password) and with the key pattern `area51:*` narrowed to this test's
/// prefix, on a redis-server of its own.
@Suite("Redis ACL")
struct RedisACLTests {
    static let shippedFile = Harness.repositoryRoot + "/deploy/redis/users.acl"
    static let adminPlaceholder = "#REPLACE-WITH-SHA256-OF-THE-ADMIN-PASSWORD"
    static let workerPlaceholder = "#REPLACE-WITH-SHA256-OF-THE-WORKER-PASSWORD"
    static let shippedKeyPattern = "%W~area51:*"
    static let workerUser = "cache-invalidator"

    // MARK: (a) the worker, in process

    @Test func theWorkerDeletesKeysAsTheACLUser() throws {
        let harness = try Harness()
        let server = try ACLServer.start(harness)
        defer { server.stop() }
        let endpoint = try RedisEndpoint.parse(server.workerURL)
        #expect(endpoint.username == Self.workerUser && endpoint.password == server.workerPassword)
        // Short summary interval: the periodic work (sweep, PING, and INFO, which the worker reads
        // for its metrics) runs too.
        harness.startWorker(metrics: WorkerMetrics(version: "test")) { $0.redis = endpoint; $0.summaryIntervalNanoseconds = 200_000_000 }

        // Plain deletions (UNLINK) of a settled trade.
        let tradeKeys = ["wallet_balance:0xW7", "portfolio:7", "main_menu:7", "user_state:7", "tx:7:0xacl"]
        try server.seed(harness.prefix, tradeKeys + ["user:7"])
        try harness.sql(DeliveryTests.settledTrade(7, "0xacl"))
        try harness.waitUntilProcessed()
        #expect(try server.missing(harness.prefix, among: tradeKeys + ["user:7"]) == Set(tradeKeys))

        // A pattern deletion (SCAN ... MATCH, then UNLINK): a deleted wallet's temp sell data.
        try harness.sql("INSERT INTO wallets (telegram_id, address) VALUES (8, '0xA8')")
        try harness.waitUntilProcessed()
        let walletKeys = ["user:8", "temp_sell_data:8:s1", "temp_sell_data:8:s2", "portfolio:8"]
        try server.seed(harness.prefix, walletKeys + ["temp_sell_data:9:s1"])
        try harness.sql("DELETE FROM wallets WHERE telegram_id = 8")
        try harness.waitUntilProcessed()
        #expect(try server.missing(harness.prefix, among: walletKeys + ["temp_sell_data:9:s1"]) == Set(walletKeys))

        // A few more summaries, each a sweep and a PING as the ACL user, and INFO read as it.
        let summaries = harness.logs.captured.filter { $0.contains("msg=\"lag summary\"") }.count
        try harness.waitForLogLines(containing: "msg=\"lag summary\"", count: summaries + 3)
        #expect(harness.worker!.statistics.snapshot.redisInfo != nil, "INFO was read as the ACL user")
        harness.stopWorker()
        let refused = harness.logs.captured.filter { $0.contains("NOPERM") || $0.contains("level=error") }
        #expect(refused.isEmpty, "the worker hit errors as the ACL user:\n\(refused.joined(separator: "\n"))")
    }

    // MARK: (b) cache-invalidator check

    @Test func checkPassesAsTheACLUserAndFailsOutsideThePrefix() throws {
        let harness = try Harness()
        let server = try ACLServer.start(harness)
        defer { server.stop() }
        for deleteCommand in ["unlink", "del"] {
            let outcome = try ProcessTests.run(["check"], environment: [
                "DATABASE_URL": harness.databaseURL, "REDIS_URL": server.workerURL,
                "KEY_PREFIX": harness.prefix, "DELETE_COMMAND": deleteCommand,
            ])
            #expect(outcome.status == 0, "DELETE_COMMAND=\(deleteCommand):\n\(outcome.output)")
            #expect(outcome.output.contains("ok   redis:"), "\(outcome.output)")
            #expect(!outcome.output.contains(server.workerPassword), "the password leaked: \(outcome.output)")
        }
        // The control: a prefix the ACL does not grant must fail the same check.
        let outside = try ProcessTests.run(["check"], environment: [
            "DATABASE_URL": harness.databaseURL, "REDIS_URL": server.workerURL, "KEY_PREFIX": "other:",
        ])
        #expect(outside.status == 1, "\(outside.output)")
        #expect(outside.output.contains("FAIL redis:") && outside.output.contains("NOPERM"), "\(outside.output)")
    }

    // MARK: (c) what the user may and may not run

    @Test func theACLUserCanRunOnlyWhatTheWorkerSends() throws {
        let harness = try Harness()
        let server = try ACLServer.start(harness)
        defer { server.stop() }
        let prefix = harness.prefix
        let admin = try server.connect(user: nil, password: server.adminPassword)
        let worker = try server.connect(user: Self.workerUser, password: server.workerPassword)
        try server.seed(prefix, ["k1", "k2", "k3"])
        _ = try admin.command(Self.args("SET", "other:k", "cached"))

        let refused: [[String]] = [
            ["FLUSHALL"], ["FLUSHDB"],
            ["GET", prefix + "k1"], ["SET", prefix + "k9", "x"], ["EXISTS", prefix + "k1"],
            ["KEYS", "*"], ["KEYS", prefix + "*"],
            ["CONFIG", "GET", "maxmemory"], ["CONFIG", "SET", "maxmemory", "1"],
            ["UNLINK", "other:k"], ["DEL", "other:k"],
            ["UNLINK", prefix + "k1", "other:k"], // one key outside the prefix refuses the whole command
            ["EVAL", "return redis.call('FLUSHALL')", "0"],
            ["PUBLISH", "cache_invalidation", "1"], ["SUBSCRIBE", "anything"],
            ["ACL", "LIST"], ["CLIENT", "LIST"], ["SCRIPT", "FLUSH"],
            ["SHUTDOWN", "NOSAVE"],
        ]
        for command in refused {
            let reply = try worker.command(Self.args(command))
            #expect(Self.isNoPerm(reply), "\(command.joined(separator: " ")) answered \(reply), expected NOPERM")
        }
        #expect(try admin.command(Self.args("EXISTS", prefix + "k1", "other:k")) == .integer(2), "a refused command changed nothing")

        // What the worker sends.
        #expect(try worker.command(Self.args("PING")) == .status("PONG"))
        #expect(try worker.command(Self.args("SELECT", "0")) == .status("OK"))
        #expect(try worker.command(Self.args("UNLINK", prefix + "k1", prefix + "absent")) == .integer(1))
        #expect(try worker.command(Self.args("DEL", prefix + "k2")) == .integer(1))
        let scan = try worker.command(Self.args("SCAN", "0", "MATCH", prefix + "*", "COUNT", "1000"))
        if case .array(let parts) = scan, parts.count == 2, case .array(let keys) = parts[1] {
            #expect(keys == [.bulk(Array((prefix + "k3").utf8))], "\(scan)")
        } else {
            Issue.record("SCAN answered \(scan)")
        }
        for section in [[], ["memory"], ["stats"], ["clients"], ["keyspace"]] {
            let info = try worker.command(Self.args(["INFO"] + section))
            if case .bulk(let bytes) = info {
                #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("# "), "INFO \(section): \(info)")
            } else {
                Issue.record("INFO \(section) answered \(info)")
            }
        }
        #expect(try admin.command(Self.args("EXISTS", prefix + "k1", prefix + "k2", prefix + "k3")) == .integer(1))

        // The user as Redis loaded it: exactly these commands (no category, so nothing a new
        // Redis version adds to one), write-only access to the prefix, no pub/sub channel.
        let description = try Self.fields(admin.command(Self.args("ACL", "GETUSER", Self.workerUser)))
        let commands = (description["commands"] ?? "").split(separator: " ").map(String.init)
        #expect(commands.first == "-@all", "\(commands)")
        #expect(Set(commands.dropFirst()) == ["+ping", "+select", "+info", "+role", "+cluster|slots", "+asking", "+scan", "+unlink", "+del"], "\(commands)")
        #expect(description["keys"] == "%W~\(prefix)*", "\(description)")
        #expect(description["channels"] == "", "\(description)")

        // Without credentials, and with a wrong password, nothing at all.
        let anonymous = try server.connect(user: nil, password: nil)
        let anonymousPing = try anonymous.command(Self.args("PING"))
        #expect(anonymousPing.isAuthError, "PING without AUTH answered \(anonymousPing)")
        #expect(throws: RedisError.self) {
            try server.connect(user: Self.workerUser, password: server.adminPassword)
        }
    }

    // MARK: the file as shipped

    /// No usable password ships: Redis refuses the unedited file and says why.
    @Test func theShippedFileIsRefusedUntilItsPlaceholdersAreReplaced() throws {
        let servers = try TestServers.get()
        let port = TestServers.freePort()
        let log = servers.directory + "/redis-acl-shipped-\(port).log"
        let pid = try TestServers.spawn(TestServers.which("redis-server") ?? "/usr/bin/redis-server",
                                        ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                         "--dir", servers.directory, "--aclfile", Self.shippedFile],
                                        outputPath: log)
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(15)
        var exited = false
        while Date() < deadline {
            if waitpid(pid, &status, WNOHANG) == pid { exited = true; break }
            usleep(20_000)
        }
        if !exited {
            kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
        }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(exited, "redis-server started with the placeholder passwords:\n\(output)")
        #expect(exited && status != 0, "exit status \(status)")
        #expect(output.contains("Aborting Redis startup because of ACL errors") && output.contains("password hash must be exactly 64 characters"), "\(output)")
    }

    // MARK: helpers

    static func args(_ words: String...) -> [[UInt8]] { words.map { Array($0.utf8) } }
    static func args(_ words: [String]) -> [[UInt8]] { words.map { Array($0.utf8) } }

    static func isNoPerm(_ reply: RedisReply) -> Bool {
        if case .error(let message) = reply { return message.hasPrefix("NOPERM") }
        return false
    }

    /// The string-valued fields of an `ACL GETUSER` reply (RESP2: name, value, name, value...).
    static func fields(_ reply: RedisReply) -> [String: String] {
        guard case .array(let items) = reply else {
            Issue.record("ACL GETUSER answered \(reply)")
            return [:]
        }
        var result: [String: String] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if case .bulk(let name) = items[index], case .bulk(let value) = items[index + 1] {
                result[String(decoding: name, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
            }
        }
        return result
    }

    /// `printf %s PASSWORD | sha256sum`, the command deploy/redis/README.md gives operators.
    static func sha256(_ text: String) throws -> String {
        let output = try TestServers.capture("/bin/sh", ["-c", "printf '%s' \"$1\" | sha256sum", "sh", text])
        let hash = String(output.prefix(64))
        guard hash.count == 64, hash.allSatisfy({ "0123456789abcdef".contains($0) }) else {
            throw TestServers.TestServerError(description: "sha256sum printed \(output)")
        }
        return hash
    }

    /// The shipped file with the placeholders replaced and the key pattern narrowed to `prefix`.
    /// Fails if the file no longer holds what this test (and deploy/redis/render-acl) replaces.
    static func renderedACL(prefix: String, adminPassword: String, workerPassword: String) throws -> String {
        let shipped = try String(contentsOfFile: shippedFile, encoding: .utf8)
        for token in [adminPlaceholder, workerPlaceholder, shippedKeyPattern] {
            let occurrences = shipped.components(separatedBy: token).count - 1
            guard occurrences == 1 else {
                throw TestServers.TestServerError(description: "\(shippedFile) holds \(token) \(occurrences) times, expected once")
            }
        }
        return shipped
            .replacingOccurrences(of: adminPlaceholder, with: "#" + (try sha256(adminPassword)))
            .replacingOccurrences(of: workerPlaceholder, with: "#" + (try sha256(workerPassword)))
            .replacingOccurrences(of: shippedKeyPattern, with: "%W~\(prefix)*")
    }
}

/// A redis-server of its own (on a free port) that loaded the rendered ACL file.
private struct ACLServer {
    let servers: TestServers
    let port: Int
    let adminPassword: String
    let workerPassword: String

    var workerURL: String { "redis://\(RedisACLTests.workerUser):\(workerPassword)@127.0.0.1:\(port)/0" }

    static func start(_ harness: Harness) throws -> ACLServer {
        let adminPassword = "admin-\(UUID().uuidString)"
        let workerPassword = "worker-\(UUID().uuidString)"
        let text = try RedisACLTests.renderedACL(prefix: harness.prefix, adminPassword: adminPassword, workerPassword: workerPassword)
        let path = harness.servers.directory + "/users-\(harness.databaseName).acl"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let port = try harness.servers.startExtraRedis(extraArguments: ["--aclfile", path])
        return ACLServer(servers: harness.servers, port: port, adminPassword: adminPassword, workerPassword: workerPassword)
    }

    /// SHUTDOWN as the default user, with the admin password.
    func stop() { servers.stopExtraRedis(port: port, password: adminPassword) }

    func connect(user: String?, password: String?) throws -> RedisConnection {
        let connection = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        try connection.handshake(username: user, password: password, database: 0)
        return connection
    }

    /// SETs each key (relative to `prefix`) as the admin.
    func seed(_ prefix: String, _ keys: [String]) throws {
        let admin = try connect(user: nil, password: adminPassword)
        for reply in try admin.pipeline(keys.map { RedisACLTests.args("SET", prefix + $0, "cached") }) {
            #expect(reply == .status("OK"))
        }
    }

    /// The keys among `keys` (relative to `prefix`) that no longer exist.
    func missing(_ prefix: String, among keys: [String]) throws -> Set<String> {
        let admin = try connect(user: nil, password: adminPassword)
        let replies = try admin.pipeline(keys.map { RedisACLTests.args("EXISTS", prefix + $0) })
        return Set(zip(keys, replies).filter { $0.1 == .integer(0) }.map(\.0))
    }
}
