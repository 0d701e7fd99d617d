import Foundation
import Glibc
import Testing

/// The executable killed with SIGKILL in the middle of draining a batch, with a standby
/// process ready: the standby takes over, redoes the batch that was never acknowledged, and
/// the killed worker, restarted, stands by. Every committed write's key is deleted.
@Suite("Faults: the process killed")
struct KillTests {
    final class Worker {
        let pid: pid_t
        let log: String
        private var reaped = false

        init(environment: [String]) throws {
            log = FileManager.default.temporaryDirectory.appendingPathComponent("ci-kill-\(UUID().uuidString).log").path
            pid = try TestServers.spawn(ProcessTests.binary, ["run"], outputPath: log, environment: environment)
        }

        deinit {
            if !reaped { kill(pid, SIGKILL); var status: Int32 = 0; waitpid(pid, &status, 0) }
            unlink(log)
        }

        var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        func waitForLine(containing text: String, timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if output.contains(text) { return true }
                usleep(5_000)
            }
            Issue.record("no line containing \(text.debugDescription) within \(timeout) s; log:\n\(output.suffix(2000))", sourceLocation: sourceLocation)
            return false
        }

        func signal(_ number: Int32) { kill(pid, number) }

        /// Waits for exit; the exit code, or 128 + the signal. nil, and the test fails, if the
        /// process is still running after `timeout`.
        func exitCode(timeout: Double = 20, sourceLocation: SourceLocation = #_sourceLocation) -> Int32? {
            var status: Int32 = 0
            let deadline = Date().addingTimeInterval(timeout)
            while waitpid(pid, &status, WNOHANG) == 0 {
                if Date() > deadline {
                    Issue.record("the worker (pid \(pid)) did not exit within \(timeout) s; log:\n\(output.suffix(2000))", sourceLocation: sourceLocation)
                    return nil
                }
                usleep(10_000)
            }
            reaped = true
            return TestServers.exitCode(status)
        }
    }

    @Test func killedMidBatchStandbyTakesOverAndTheRestartedOneStandsBy() throws {
        let harness = try Harness()
        let environment = ["DATABASE_URL=\(harness.databaseURL)", "REDIS_URL=\(harness.servers.redisURL)", "KEY_PREFIX=\(harness.prefix)",
                           "BATCH_SIZE=20", "SUMMARY_INTERVAL=1s", "METRICS_ADDRESS=off", "PATH=/usr/bin:/bin"]
        let first = try Worker(environment: environment)
        #expect(first.waitForLine(containing: "postgres connected, listening"))
        let standby = try Worker(environment: environment)
        #expect(standby.waitForLine(containing: "standing by"))

        let bot = BotStream(databaseURL: harness.databaseURL, redisPort: harness.servers.redisPort, prefix: harness.prefix, tag: "kill")
        bot.start()
        try bot.waitForCommits(50)

        // A burst committed in one transaction, every key cached: the active worker drains it
        // 20 events per batch, and is killed part-way.
        let burst = 20_000
        let keys = try harness.cachedTradeBurst(burst, telegramBase: 600_000, users: 1000, hashPrefix: "0xbulk")
        try harness.waitForAcknowledged(200, hashPrefix: "0xbulk")
        first.signal(SIGKILL)
        let killedAt = Date()
        #expect(first.exitCode() == 128 + SIGKILL)
        let processedAtKill = try harness.acknowledgedCount(hashPrefix: "0xbulk")
        #expect(processedAtKill > 0 && processedAtKill < burst, "the kill landed during the drain (\(processedAtKill) of \(burst) done)")

        #expect(standby.waitForLine(containing: "took over as the active worker"))
        let takeover = Date().timeIntervalSince(killedAt)
        #expect(takeover < 3, "the standby took \(takeover) s to take over")
        let restarted = try Worker(environment: environment)
        #expect(restarted.waitForLine(containing: "standing by"))

        try bot.waitForCommits(100)
        bot.stop()
        try harness.waitUntilProcessed(timeout: 60)
        #expect(try harness.keysNeverDeleted(bot.writes) == [])
        let bulkLeft = try harness.deleted(among: keys).count
        #expect(bulkLeft == burst, "\(burst - bulkLeft) burst keys never deleted")

        standby.signal(SIGTERM)
        restarted.signal(SIGTERM)
        #expect(standby.exitCode() == 0)
        #expect(restarted.exitCode() == 0)
    }
}
