import ArgumentParser
import CacheInvalidator
import Foundation
import Glibc

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify connectivity, privileges, triggers, schema version, backlog and the notification queue.",
        discussion: """
            Prints one line per finding ("ok" or "FAIL") and exits 1 if anything failed, 0 otherwise (2 for bad configuration), so it can gate a deploy or run from cron. It reads the same settings as `run` (DATABASE_URL, REDIS_URL, KEY_PREFIX, DELETE_COMMAND...).
            """)

    @Option(help: ArgumentHelp("\(Setting.databaseURL.help) [env: DATABASE_URL]", valueName: "url"))
    var databaseURL: String?
    @Option(help: ArgumentHelp("\(Setting.redisURL.help) [env: REDIS_URL, default: redis://127.0.0.1:6379/0]", valueName: "url"))
    var redisURL: String?
    @Option(help: ArgumentHelp("\(Setting.keyPrefix.help) [env: KEY_PREFIX, default: area51:]", valueName: "prefix"))
    var keyPrefix: String?
    @Option(help: ArgumentHelp("\(Setting.deleteCommand.help) [env: DELETE_COMMAND, default: unlink]", valueName: "del|unlink"))
    var deleteCommand: String?
    @Option(help: "Fail when more events than this are pending.") var maxBacklog: Int64 = 10_000
    @Option(help: "Fail when the oldest pending event is older than this many seconds.") var maxAge: Double = 60

    func run() throws {
        var flags: [Setting: String] = [:]
        flags[.databaseURL] = databaseURL
        flags[.redisURL] = redisURL
        flags[.keyPrefix] = keyPrefix
        flags[.deleteCommand] = deleteCommand
        let configuration: WorkerConfiguration
        do {
            configuration = try SettingsResolver(flags: flags).workerConfiguration()
        } catch {
            fail(error)
        }
        var check = HealthCheck(configuration: configuration)
        check.maximumBacklog = maxBacklog
        check.maximumOldestAgeSeconds = maxAge
        let findings = check.run()
        for finding in findings { print(finding) }
        if findings.contains(where: { !$0.ok }) { throw ExitCode(1) }
    }
}
