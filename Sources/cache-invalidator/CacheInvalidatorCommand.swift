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
    @Option(help: ArgumentHelp(.databaseURL, valueName: "url"))
    var databaseURL: String?
    @Option(help: ArgumentHelp(.redisURL, valueName: "url"))
    var redisURL: String?
    @Option(help: ArgumentHelp(.keyPrefix, valueName: "prefix"))
    var keyPrefix: String?
    @Option(help: ArgumentHelp(.rules, valueName: "file"))
    var rules: String?
    @Option(help: ArgumentHelp(.deleteCommand, valueName: "del|unlink"))
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
    func configuration() -> WorkerConfiguration {
        do {
            return try SettingsResolver(flags: flags).workerConfiguration()
        } catch {
            fail(error)
        }
    }
}

/// Log level and format, shared by every subcommand that logs.
struct LoggingOptions: ParsableArguments {
    @Option(help: ArgumentHelp(.logLevel))
    var logLevel: String?

    @Option(help: ArgumentHelp(.logFormat))
    var logFormat: String?

    var flags: [Setting: String] {
        var f: [Setting: String] = [:]
        f[.logLevel] = logLevel
        f[.logFormat] = logFormat
        return f
    }
}

extension ArgumentHelp {
    /// Help for a setting's flag: its text, its environment variable and its default.
    init(_ setting: Setting, valueName: String? = nil) {
        self.init(setting.helpWithEnvironment, valueName: valueName)
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
