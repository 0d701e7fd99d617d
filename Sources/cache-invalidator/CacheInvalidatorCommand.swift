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
            Quick start:
              cache-invalidator migrate up      apply the SQL migrations (event log, triggers)
              cache-invalidator run             delete stale keys as the bot's writes commit

            Every option can also be set by an environment variable of the same name in upper case (--key-prefix is KEY_PREFIX); a flag wins over the environment. See `cache-invalidator help run`.
            """,
        subcommands: [Run.self, Migrate.self, Check.self, Replay.self],
        defaultSubcommand: nil
    )
}

/// Options every subcommand that talks to Postgres shares.
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
