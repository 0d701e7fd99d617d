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

    @OptionGroup var servers: ServerOptions
    @Option(help: "Fail when more events than this are pending.") var maxBacklog: Int64 = 10_000
    @Option(help: "Fail when the oldest pending event is older than this many seconds.") var maxAge: Double = 60

    func run() throws {
        let configuration = servers.configuration()
        var check = HealthCheck(configuration: configuration)
        check.maximumBacklog = maxBacklog
        check.maximumOldestAgeSeconds = maxAge
        let findings = check.run()
        for finding in findings { print(finding) }
        if findings.contains(where: { !$0.ok }) { throw ExitCode(1) }
    }
}
