import Foundation
import InvalidationCore
import Logging
import PostgresClient

/// A configuration problem, said in a way that tells the operator what to change.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Every setting of the worker, its flag, its environment variable and its default: the single
/// source for `--help`, the README's table and the resolution order (flag, then environment,
/// then default).
public enum Setting: String, CaseIterable, Sendable {
    case databaseURL = "database-url"
    case redisURL = "redis-url"
    case keyPrefix = "key-prefix"
    case rules = "rules"
    case deleteCommand = "delete-command"
    case batchSize = "batch-size"
    case slowThreshold = "slow-threshold"
    case summaryInterval = "summary-interval"
    case redisTimeout = "redis-timeout"
    case redisWaitReplicas = "redis-wait-replicas"
    case reconnectMax = "reconnect-max"
    case retention = "retention"
    case redeleteAfter = "redelete-after"
    case failoverReplay = "failover-replay"
    case metricsAddress = "metrics-address"
    case warnBacklog = "warn-backlog"
    case warnAge = "warn-age"
    case logLevel = "log-level"
    case logFormat = "log-format"

    /// The help text with the variable and the default, as `--help` shows it; derived here so
    /// that help can never disagree with the default actually applied.
    public var helpWithEnvironment: String {
        let defaultText = defaultValue.map { ", default: \($0)" } ?? ""
        return "\(help) [env: \(environmentName)\(defaultText)]"
    }

    /// `--key-prefix` ↔ `KEY_PREFIX`: upper case, dashes to underscores.
    public var environmentName: String { rawValue.uppercased().replacingOccurrences(of: "-", with: "_") }

    public var defaultValue: String? {
        switch self {
        case .databaseURL: return nil
        case .redisURL: return "redis://127.0.0.1:6379/0"
        case .keyPrefix: return "area51:"
        case .rules: return nil
        case .deleteCommand: return "unlink"
        case .batchSize: return "1000"
        case .slowThreshold: return "100ms"
        case .summaryInterval: return "10s"
        case .redisTimeout: return "2s"
        case .redisWaitReplicas: return "0"
        case .reconnectMax: return "2s"
        case .retention: return "24h"
        case .redeleteAfter: return "1s"
        case .failoverReplay: return "10s"
        case .metricsAddress: return "127.0.0.1:9187"
        case .warnBacklog: return "10000"
        case .warnAge: return "60s"
        case .logLevel: return "info"
        case .logFormat: return "logfmt"
        }
    }

    public var help: String {
        switch self {
        case .databaseURL: return "PostgreSQL connection URL or libpq string, e.g. postgres://worker:secret@db:5432/app?sslmode=require (required)."
        case .redisURL: return "Redis URL: redis://[user:password@]host[:port][/db], unix:///path/redis.sock?db=N, rediss://...?cacert=/ca.pem (TLS; also cert=, key=, sni=), or redis-sentinel://[user:password@]s1:26379,s2:26379/master[/db]."
        case .keyPrefix: return "Prefix of every cache key (the bot's namespace)."
        case .rules: return "JSON rules file replacing the built-in rules (see rules/default-rules.json)."
        case .deleteCommand: return "del or unlink (unlink frees memory off Redis's main thread)."
        case .batchSize: return "Most events fetched and deleted per round trip (1-100000)."
        case .slowThreshold: return "Warn for each event slower than this, commit to deletion (e.g. 100ms, 0.5ms, 1s)."
        case .summaryInterval: return "How often the lag summary line is logged (e.g. 10s)."
        case .redisTimeout: return "Timeout of one Redis connect or round trip."
        case .redisWaitReplicas: return "Before acknowledging a batch, WAIT until this many replicas of each master that deleted its keys have the deletion (within half of --redis-timeout); otherwise the batch is retried. 0 (off) trusts the master's confirmation."
        case .reconnectMax: return "Longest wait between reconnection attempts (backoff is exponential with jitter)."
        case .retention: return "How long processed events stay in the log (audit, replay) before the worker deletes them; 0 keeps them forever."
        case .redeleteAfter: return "Delete each event's keys again this long after the first deletion: removes a cache fill of a value read before the write committed that landed after the first deletion (the cache-aside race). 0 turns it off."
        case .failoverReplay: return "On reaching another PostgreSQL primary (a promoted standby: a new timeline) delete again the keys of the events acknowledged this long before the old one was lost: writes an asynchronous standby may lack, whose values a reader may have cached. Longer than your replication lag; 0 turns it off."
        case .metricsAddress: return "IP:PORT serving /metrics, /healthz and /readyz over HTTP, or off. 0.0.0.0:9187 exposes it on every interface."
        case .warnBacklog: return "Warn (each summary) while more events than this wait in the log."
        case .warnAge: return "Warn (each summary) while the oldest waiting event is older than this."
        case .logLevel: return "trace, debug (one line per event), info, notice, warning, error or critical."
        case .logFormat: return "logfmt or json."
        }
    }
}

/// Resolves settings from flags (given) and the environment, validating each.
public struct SettingsResolver {
    public var flags: [Setting: String]
    public var environment: [String: String]

    public init(flags: [Setting: String], environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.flags = flags
        self.environment = environment
    }

    public func value(_ setting: Setting) -> String? {
        if let flag = flags[setting] { return flag }
        if let env = environment[setting.environmentName] {
            // An empty variable means "unset", except for the prefix, where a bot without a
            // namespace sets KEY_PREFIX= on purpose and falling back to area51: would miss every key.
            if !env.isEmpty || setting == .keyPrefix { return env }
        }
        return setting.defaultValue
    }

    private func origin(_ setting: Setting) -> String {
        flags[setting] != nil ? "--\(setting.rawValue)" : (environment[setting.environmentName].map { _ in setting.environmentName } ?? "default of --\(setting.rawValue)")
    }

    public func databaseURL() throws(ConfigurationError) -> String {
        guard let url = value(.databaseURL), !url.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw ConfigurationError("no database given: set DATABASE_URL (or --database-url), e.g. postgres://user:password@localhost:5432/app")
        }
        return url
    }

    public func logLevel() throws(ConfigurationError) -> Logger.Level {
        let text = value(.logLevel)!.lowercased()
        guard let level = Logger.Level(rawValue: text) else {
            throw ConfigurationError("\(origin(.logLevel)) is \(text.debugDescription); expected one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return level
    }

    public func logFormat() throws(ConfigurationError) -> LogfmtLogHandler.Format {
        let text = value(.logFormat)!.lowercased()
        guard let format = LogfmtLogHandler.Format(rawValue: text) else {
            throw ConfigurationError("\(origin(.logFormat)) is \(text.debugDescription); expected logfmt or json")
        }
        return format
    }

    /// The full worker configuration; loads and validates the rules file if one is named.
    public func workerConfiguration() throws(ConfigurationError) -> WorkerConfiguration {
        let databaseURL = try databaseURL()
        do {
            _ = try ConnectionTarget.parse(databaseURL)
        } catch {
            throw ConfigurationError("\(origin(.databaseURL)): \(error)")
        }
        let redis: RedisEndpoint
        do {
            redis = try RedisEndpoint.parse(value(.redisURL)!)
        } catch {
            throw ConfigurationError("\(origin(.redisURL)): \(error)")
        }
        var config = WorkerConfiguration(databaseURL: databaseURL, redis: redis)
        config.keyPrefix = value(.keyPrefix) ?? ""
        if let path = value(.rules) {
            do {
                config.rules = try RulesLoader.load(path: path)
            } catch {
                throw ConfigurationError("rules file refused: \(error)")
            }
        }
        let command = value(.deleteCommand)!.lowercased()
        guard let deleteCommand = WorkerConfiguration.DeleteCommand(rawValue: command) else {
            throw ConfigurationError("\(origin(.deleteCommand)) is \(command.debugDescription); expected del or unlink")
        }
        config.deleteCommand = deleteCommand
        let batch = value(.batchSize)!
        guard let batchSize = Int(batch), (1...100_000).contains(batchSize) else {
            throw ConfigurationError("\(origin(.batchSize)) is \(batch.debugDescription); expected a whole number from 1 to 100000")
        }
        config.batchSize = batchSize
        config.slowThresholdNanoseconds = try duration(.slowThreshold, minimum: 1)
        config.summaryIntervalNanoseconds = try duration(.summaryInterval, minimum: 100_000_000)
        let timeout = try duration(.redisTimeout, minimum: 1_000_000)
        config.redisTimeoutMilliseconds = Int(timeout / 1_000_000)
        let replicas = value(.redisWaitReplicas)!
        guard let waitReplicas = Int(replicas), (0...100).contains(waitReplicas) else {
            throw ConfigurationError("\(origin(.redisWaitReplicas)) is \(replicas.debugDescription); expected a whole number of replicas from 0 (off) to 100")
        }
        config.redisWaitReplicas = waitReplicas
        let reconnectMax = try duration(.reconnectMax, minimum: 100_000_000)
        config.reconnectMaximumMilliseconds = reconnectMax / 1_000_000
        let retention = try duration(.retention, minimum: 0)
        guard retention == 0 || retention >= 1_000_000_000 else {
            throw ConfigurationError("\(origin(.retention)) is \(value(.retention)!.debugDescription); expected 0 (keep forever) or at least 1s, e.g. 24h or 7d")
        }
        config.retentionSeconds = retention / 1_000_000_000
        let redelete = try duration(.redeleteAfter, minimum: 0)
        guard redelete == 0 || (10_000_000...600_000_000_000).contains(redelete) else {
            throw ConfigurationError("\(origin(.redeleteAfter)) is \(value(.redeleteAfter)!.debugDescription); expected 0 (off) or from 10ms to 10m, e.g. 1s")
        }
        config.redeleteAfterNanoseconds = redelete
        // Events kept only as ids are read back from the log for their second deletion: the log
        // must still hold them then.
        guard retention == 0 || redelete == 0 || retention >= redelete + 60_000_000_000 else {
            throw ConfigurationError("\(origin(.retention)) (\(value(.retention)!)) must be at least a minute longer than \(origin(.redeleteAfter)) (\(value(.redeleteAfter)!)): processed events are read back from the log for their second deletion. Raise RETENTION, or set REDELETE_AFTER=0")
        }
        let failoverReplay = try duration(.failoverReplay, minimum: 0)
        guard failoverReplay <= 3_600_000_000_000 else {
            throw ConfigurationError("\(origin(.failoverReplay)) is \(value(.failoverReplay)!.debugDescription); expected 0 (off) or up to 1h, e.g. 10s (longer than the replication lag)")
        }
        config.failoverReplayNanoseconds = failoverReplay
        let backlog = value(.warnBacklog)!
        guard let warnBacklog = Int64(backlog), warnBacklog >= 0 else {
            throw ConfigurationError("\(origin(.warnBacklog)) is \(backlog.debugDescription); expected a whole number of events, e.g. 10000")
        }
        config.backlogWarning = warnBacklog
        config.oldestAgeWarningSeconds = Double(try duration(.warnAge, minimum: 1_000_000_000)) / 1e9
        return config
    }

    /// Where /metrics, /healthz and /readyz listen; nil when turned off.
    public func metricsAddress() throws(ConfigurationError) -> ListenAddress? {
        do {
            return try ListenAddress.parse(value(.metricsAddress)!)
        } catch {
            throw ConfigurationError("\(origin(.metricsAddress)): \(error)")
        }
    }

    func duration(_ setting: Setting, minimum: UInt64) throws(ConfigurationError) -> UInt64 {
        let text = value(setting)!
        guard let nanoseconds = DurationText.parse(text), nanoseconds >= minimum else {
            throw ConfigurationError("\(origin(setting)) is \(text.debugDescription); expected a duration such as 250us, 100ms, 1.5s or 2m (at least \(formatMilliseconds(minimum)) ms)")
        }
        return nanoseconds
    }
}

/// Durations as operators write them: `250us`, `100ms`, `1.5s`, `2m`; a bare number is milliseconds.
public enum DurationText {
    public static func parse(_ text: String) -> UInt64? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9), ("d", 86400e9)]
        var number = Substring(trimmed)
        var scale = 1e6
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            number = trimmed.dropLast(suffix.count)
            scale = factor
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              let value = Double(number), value.isFinite, value >= 0, value * scale < 1e18 else { return nil }
        return UInt64((value * scale).rounded())
    }
}
