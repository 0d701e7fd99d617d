import ArgumentParser
import CacheInvalidator
import Foundation
import Glibc
import Logging

@main
struct CacheInvalidatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cache-invalidator",
        abstract: "Keeps a Redis cache consistent with PostgreSQL: triggers log each change, this worker deletes the stale keys.",
        discussion: """
            Quick start (DATABASE_URL and REDIS_URL set):
              cache-invalidator migrate   apply the SQL migrations
              cache-invalidator check     verify servers, privileges, triggers
              cache-invalidator run       delete stale keys as writes commit

            Every option can also be set by an environment variable of the same name in upper case (--key-prefix is KEY_PREFIX); a flag wins over the environment. See `cache-invalidator help run`.
            """,
        subcommands: [Run.self, Migrate.self, Check.self, Replay.self],
        defaultSubcommand: nil
    )
}

/// Where the servers are and which keys are ours: shared by run, check and replay.
struct ServerOptions: ParsableArguments {
    @Option(help: ArgumentHelp("\(Setting.databaseURL.help) [env: DATABASE_URL]", valueName: "url"))
    var databaseURL: String?
    @Option(help: ArgumentHelp("\(Setting.redisURL.help) [env: REDIS_URL, default: redis://127.0.0.1:6379/0]", valueName: "url"))
    var redisURL: String?
    @Option(help: ArgumentHelp("\(Setting.keyPrefix.help) [env: KEY_PREFIX, default: area51:]", valueName: "prefix"))
    var keyPrefix: String?
    @Option(help: ArgumentHelp("\(Setting.rules.help) [env: RULES]", valueName: "file"))
    var rules: String?
    @Option(help: ArgumentHelp("\(Setting.deleteCommand.help) [env: DELETE_COMMAND, default: unlink]", valueName: "del|unlink"))
    var deleteCommand: String?

    var flags: [Setting: String] {
        var f: [Setting: String] = [:]
        f[.databaseURL] = databaseURL
        f[.redisURL] = redisURL
        f[.keyPrefix] = keyPrefix
        f[.rules] = rules
        f[.deleteCommand] = deleteCommand
        return f
    }

    /// The resolved configuration, or exit 2 with the reason.
    func configuration(adding extra: [Setting: String] = [:]) -> WorkerConfiguration {
        do {
            return try SettingsResolver(flags: flags.merging(extra) { $1 }).workerConfiguration()
        } catch {
            fail(error)
        }
    }
}

/// Log level and format, shared by every subcommand that logs.
struct LoggingOptions: ParsableArguments {
    @Option(help: ArgumentHelp("\(Setting.logLevel.help) [env: LOG_LEVEL, default: info]"))
    var logLevel: String?

    @Option(help: ArgumentHelp("\(Setting.logFormat.help) [env: LOG_FORMAT, default: logfmt]"))
    var logFormat: String?

    var flags: [Setting: String] {
        var f: [Setting: String] = [:]
        f[.logLevel] = logLevel
        f[.logFormat] = logFormat
        return f
    }
}

/// Installs the project's log handler; called once per process, before any logging.
func bootstrapLogging(_ resolver: SettingsResolver) throws -> Logger {
    let level = try resolver.logLevel()
    let format = try resolver.logFormat()
    LoggingSystem.bootstrap { _ in
        var handler = LogfmtLogHandler(format: format)
        handler.logLevel = level
        return handler
    }
    return Logger(label: "cache-invalidator")
}

/// Prints a configuration error the way an operator needs it and exits 2 (usage error).
func fail(_ error: any Error) -> Never {
    FileHandle.standardError.write(Data("cache-invalidator: \(error)\n".utf8))
    Glibc.exit(2)
}
