import Foundation
import Glibc
import Testing

/// The executable as operators run it: configured by environment variables only, logging to
/// stderr, stopping cleanly on SIGTERM, refusing bad configuration with exit code 2.
@Suite("The cache-invalidator executable")
struct ProcessTests {
    /// The binary SwiftPM built beside this test bundle.
    static var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("cache-invalidator").path
    }

    struct Outcome {
        var status: Int32
        var output: String
    }

    /// Runs the binary to completion with exactly `environment` (plus PATH).
    static func run(_ arguments: [String], environment: [String: String]) throws -> Outcome {
        let (status, output) = try TestServers.runBounded(binary, arguments, environment: environment, what: "cache-invalidator \(arguments)")
        return Outcome(status: status, output: output)
    }

    @Test func runsWithTwoVariablesStopsOnSigtermAndNeverLogsPasswords() throws {
        let harness = try Harness()
        let redisPassword = "redis-pa55-\(UUID().uuidString.prefix(8))"
        let port = try harness.servers.startExtraRedis(extraArguments: ["--requirepass", redisPassword])
        defer { harness.servers.stopExtraRedis(port: port, password: redisPassword) }
        let postgresPassword = "pg-pa55-\(UUID().uuidString.prefix(8))"
        let databaseURL = harness.servers.postgresURL(database: harness.databaseName, password: postgresPassword)
        let redisURL = "redis://:\(redisPassword)@127.0.0.1:\(port)/0"

        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("ci-\(UUID().uuidString).log").path
        defer { unlink(outputPath) }
        let metricsPort = TestServers.freePort()
        let env = ["DATABASE_URL=\(databaseURL)", "REDIS_URL=\(redisURL)", "SUMMARY_INTERVAL=300ms", "LOG_LEVEL=debug",
                   "METRICS_ADDRESS=127.0.0.1:\(metricsPort)", "PATH=/usr/bin:/bin"]
        let pid = try TestServers.spawn(Self.binary, ["run"], outputPath: outputPath, environment: env)
        var exited = false
        defer { if !exited { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) } }

        let redis = try harness.servers.redisConnectionWithPassword(port: port, password: redisPassword)
        _ = try redis.command(["SET", "area51:tx:42:0xbin", "cached"].map { Array($0.utf8) })
        try harness.sql(DeliveryTests.settledTrade(42, "0xbin"))
        try harness.waitUntilProcessed()
        #expect(try redis.command(["EXISTS", "area51:tx:42:0xbin"].map { Array($0.utf8) }) == .integer(0))

        // Wait for a summary line that saw the event, then stop the way systemd does.
        try awaitCondition("a lag summary line that counted the event", timeout: 15, interval: 50_000) { seen in
            let log = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
            seen = "log:\n\(log.suffix(2000))"
            return log.contains("msg=\"lag summary\"") && log.contains("events=1 ")
        }
        // What a scraper and a probe see, and no password there either.
        let metrics = StatusServerTests.get("/metrics", port: metricsPort)
        #expect(metrics?.status == 200)
        #expect(StatusServerTests.sample(metrics?.body ?? "", #"cache_invalidator_events_total{kind="trade_settled"}"#) == 1)
        #expect(metrics?.body.contains(redisPassword) == false && metrics?.body.contains(postgresPassword) == false)
        #expect(StatusServerTests.get("/readyz", port: metricsPort)?.status == 200)
        #expect(kill(pid, SIGTERM) == 0)
        var status: Int32 = 0
        let started = Date()
        var reaped = waitpid(pid, &status, WNOHANG)
        while reaped == 0 && Date().timeIntervalSince(started) < 15 {
            usleep(20_000)
            reaped = waitpid(pid, &status, WNOHANG)
        }
        // Not reaped: the deferred kill cleans up, and the test fails here.
        exited = reaped == pid
        #expect(reaped == pid, "did not exit within 15 s of SIGTERM")
        #expect(TestServers.exitCode(status) == 0, "exit status \(status)")
        let log = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        #expect(log.contains("msg=\"lag summary\""))
        #expect(log.contains("msg=\"event invalidated\""), "debug level logs one line per event")
        #expect(log.contains("msg=\"signal received, finishing the batch in flight\""))
        #expect(log.contains("msg=\"worker stopped\""))
        #expect(!log.contains(redisPassword), "the Redis password leaked into the log")
        #expect(!log.contains(postgresPassword), "the Postgres password leaked into the log")
        for line in log.split(separator: "\n") {
            #expect(line.hasPrefix("ts=") && line.contains(" level="), "not a logfmt line: \(line)")
        }
    }

    @Test(arguments: [
        (["run"], [String: String](), "no database given: set DATABASE_URL"),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h:5432/db", "REDIS_URL": "rediss://h:6380?ca=/etc/ca.pem"], #"has unknown parameter "ca" (rediss:// takes cacert, cert, key, sni)"#),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h:5432/db", "REDIS_WAIT_REPLICAS": "one"], "REDIS_WAIT_REPLICAS is \"one\"; expected a whole number"),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h:5432/db", "REDIS_URL": "http://h"], "expected redis://, rediss://, unix:// or redis-sentinel://"),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h:5432/db", "REDIS_URL": "redis://h:99999"], "port"),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h:notaport/db"], "DATABASE_URL has port \"notaport\""),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h/db?sslmode=requir"], "DATABASE_URL has sslmode \"requir\""),
        (["run"], ["DATABASE_URL": "postgres://u:%zzSecret-Pw-123@h/db"], "DATABASE_URL is not a valid connection string"),
        (["run"], ["DATABASE_URL": "host=h password=Secret-Pw-123 bogus=1"], "DATABASE_URL is not a valid connection string"),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h/db", "METRICS_ADDRESS": "localhost:9187"], "METRICS_ADDRESS: \"localhost:9187\" is not a listen address"),
        (["run", "--metrics-address", "127.0.0.1:0"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h/db"], "--metrics-address: \"127.0.0.1:0\" is not a listen address"),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h/db", "WARN_BACKLOG": "lots"], "WARN_BACKLOG is \"lots\""),
        (["run"], ["DATABASE_URL": "postgres://u:Secret-Pw-123@h/db", "WARN_AGE": "10ms"], "WARN_AGE is \"10ms\""),
        (["run"], ["DATABASE_URL": "postgres://h/db", "BATCH_SIZE": "0"], "BATCH_SIZE is \"0\""),
        (["run"], ["DATABASE_URL": "postgres://h/db", "SLOW_THRESHOLD": "fast"], "SLOW_THRESHOLD is \"fast\""),
        (["run"], ["DATABASE_URL": "postgres://h/db", "DELETE_COMMAND": "flushall"], "expected del or unlink"),
        (["run"], ["DATABASE_URL": "postgres://h/db", "LOG_LEVEL": "loud"], "LOG_LEVEL is \"loud\""),
        (["run"], ["DATABASE_URL": "postgres://h/db", "RETENTION": "forever"], "RETENTION is \"forever\""),
        (["run"], ["DATABASE_URL": "postgres://h/db", "REDELETE_AFTER": "soon"], "REDELETE_AFTER is \"soon\""),
        (["run", "--redelete-after", "20m"], ["DATABASE_URL": "postgres://h/db"], "--redelete-after is \"20m\"; expected 0 (off) or from 10ms to 10m"),
        (["run"], ["DATABASE_URL": "postgres://h/db", "RETENTION": "30s"], "RETENTION (30s) must be at least a minute longer than default of --redelete-after (1s)"),
        (["run", "--rules", "/nonexistent/rules.json"], ["DATABASE_URL": "postgres://h/db"], "/nonexistent/rules.json: cannot be read"),
    ] as [([String], [String: String], String)])
    func badConfigurationIsRefusedClearly(_ arguments: [String], _ environment: [String: String], _ expected: String) throws {
        let outcome = try Self.run(arguments, environment: environment)
        #expect(outcome.status == 2, "exit status for \(environment): \(outcome.output)")
        #expect(outcome.output.contains(expected), "\(outcome.output)")
        #expect(!outcome.output.contains("Secret-Pw-123"), "password leaked: \(outcome.output)")
        #expect(!outcome.output.contains("zzSecret"), "password fragment leaked: \(outcome.output)")
    }

    @Test func badRulesFileNamesTheFileThePlaceAndTheReason() throws {
        let path = try writeRules(overriding: #""settings_changed": [ "user_settings:{telegram}" ]"#)
        let outcome = try Self.run(["run", "--rules", path], environment: ["DATABASE_URL": "postgres://h/db"])
        #expect(outcome.status == 2)
        #expect(outcome.output.contains("rules file refused: \(path): events.settings_changed[0]: placeholder \"telegram\" is not a field of settings_changed"), "\(outcome.output)")
        let broken = FileManager.default.temporaryDirectory.appendingPathComponent("broken-\(UUID().uuidString).json").path
        try "{ \"events\": { \"trade_settled\": [ ".write(toFile: broken, atomically: true, encoding: .utf8)
        let second = try Self.run(["run"], environment: ["DATABASE_URL": "postgres://h/db", "RULES": broken])
        #expect(second.status == 2)
        #expect(second.output.contains("\(broken): is not valid JSON"), "\(second.output)")
    }

    @Test func helpTeachesEveryVariable() throws {
        let outcome = try Self.run(["run", "--help"], environment: [:])
        #expect(outcome.status == 0)
        // The help text is wrapped to the terminal width; compare with whitespace folded.
        let folded = outcome.output.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        for variable in ["DATABASE_URL", "REDIS_URL", "KEY_PREFIX", "RULES", "DELETE_COMMAND", "BATCH_SIZE", "SLOW_THRESHOLD",
                         "SUMMARY_INTERVAL", "REDIS_TIMEOUT", "RECONNECT_MAX", "RETENTION", "REDELETE_AFTER", "LOG_LEVEL", "LOG_FORMAT"] {
            #expect(folded.contains("env: \(variable)"), "--help does not mention \(variable)")
        }
    }
}

import RedisClient

extension TestServers {
    func redisConnectionWithPassword(port: Int, password: String) throws -> RedisConnection {
        let connection = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port))
        try connection.handshake(username: nil, password: password, database: 0)
        return connection
    }
}
