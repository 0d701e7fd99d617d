import Foundation
import InvalidationCore
import Logging
import PostgresClient
import RedisClient

// Maintenance and reporting: the trigger check, pruning, the schema version, the periodic lag
// summary (with the safety sweep) and the cache's own figures.
extension Worker {
    /// A migration newer than this release means a DBA upgraded the schema before the worker. The
    /// worker goes on: stopping would stop every invalidation, while what it does know still works
    /// (events of kinds it does not know stay pending for a newer worker). But it may not follow
    /// what the newer migration changed (0005 moved the pending events to a queue: a worker older
    /// than it would have taken every event since for unprocessed), so it says so, once per
    /// version, and `schema_version` above `schema_version_supported` shows it in the metrics.
    func checkSchemaVersion(_ postgres: PGConnection) throws(PostgresError) {
        let version = try EventLog.schemaVersion(on: postgres)
        statistics.update { $0.schemaVersion = version ?? -1 }
        guard let version, version > HealthCheck.latestSchemaVersion, reporting.reportedNewerSchema != version else { return }
        reporting.reportedNewerSchema = version
        logger.error("the database's schema is newer than this worker knows; upgrade cache-invalidator to the release that ships that migration. Working on meanwhile: events of kinds it does not know stay pending, but it may not follow what the migration changed", metadata: [
            LogKey.version: "\(version)", "supported_version": "\(HealthCheck.latestSchemaVersion)"])
    }

    /// Verifies the triggers (a DBA who recreates or alters a table can silently drop them, and
    /// then that table's writes invalidate nothing) and prunes processed events past retention.
    func maintain() {
        session?.active?.maintenanceAt = monotonicNanoseconds() + config.maintenanceIntervalNanoseconds
        guard let eventLog = session?.connection.log else { return }
        let postgres = eventLog.connection
        do {
            try checkSchemaVersion(postgres)
        } catch {
            // Its own catch: a failure here must not be reported as the trigger check's.
            postgresFailed(error)
            return
        }
        do {
            let (problems, _) = try EventLog.triggerProblems(on: postgres)
            statistics.update { $0.missingTriggers = problems.count }
            for problem in problems {
                // Every check, until fixed: this is an outage of invalidation for that table.
                logger.error("cache invalidation trigger missing or disabled; writes to that table delete no keys. Re-apply migrations/0002_cache_invalidation.up.sql", metadata: [
                    LogKey.reason: "\(problem)"])
            }
        } catch where error.sqlState == "42501" {
            if !reporting.triggerCheckDenied {
                reporting.triggerCheckDenied = true
                logger.warning("cannot verify the triggers: the worker's role may not read cache_invalidation.expected_triggers (see deploy/postgres/roles.sql)", metadata: [LogKey.error: "\(error)"])
            }
        } catch {
            postgresFailed(error)
            return
        }
        guard config.retentionSeconds > 0, !reporting.pruneDenied else { return }
        var pruned = 0
        defer {
            if pruned > 0 {
                statistics.update { $0.eventsPruned += UInt64(pruned) }
                logger.info("pruned processed events past retention", metadata: [LogKey.events: "\(pruned)", "retention_s": "\(config.retentionSeconds)"])
            }
        }
        let started = monotonicNanoseconds()
        do {
            // A bounded amount per round so the fast path is never held up for long.
            while !stopping && monotonicNanoseconds() - started < 500_000_000 {
                let deleted = try eventLog.prune(olderThanSeconds: config.retentionSeconds, limit: 5_000)
                pruned += deleted
                if deleted < 5_000 {
                    try eventLog.pruneMarks(olderThanSeconds: config.retentionSeconds)
                    break
                }
                readNotifications()
                if canWork && active!.work.hasWork { processPending() }
                guard session != nil else { return }
            }
        } catch where error.sqlState == "42501" {
            reporting.pruneDenied = true
            logger.warning("cannot prune processed events: the worker's role may not DELETE from cache_invalidation.events (see deploy/postgres/roles.sql, or set --retention 0); pruning is off until restart", metadata: [LogKey.error: "\(error)"])
        } catch where error.sqlState == "57014" || error.sqlState == "55P03" {
            // Timed out or locked out: the connection is fine, try again next round.
            logger.warning("pruning processed events timed out; will try again", metadata: [LogKey.error: "\(error)"])
        } catch {
            postgresFailed(error)
        }
    }

    func logSummary() {
        reporting.nextSummaryAt = monotonicNanoseconds() + config.summaryIntervalNanoseconds
        // A safety sweep: nothing should be pending that no notification named, but the log,
        // not the notifications, is the source of truth.
        session?.active?.work.requestDrain()
        var metadata: Logger.Metadata = [:]
        if let eventLog = session?.connection.log {
            do {
                let backlog = try eventLog.backlog()
                postgresRoundTripSucceeded()
                if backlog.queue != eventLog.queue {
                    // 0005 applied (or rolled back) while this session runs: its statements
                    // would still work (the log keeps processed_at) but acknowledge where the
                    // schema no longer looks, and scan the log without its index.
                    reopenPostgres(reason: backlog.queue
                        ? "the pending queue (0005_pending_queue) was applied; reconnecting to acknowledge there"
                        : "the pending queue (0005_pending_queue) was rolled back; reconnecting to acknowledge in processed_at")
                }
                statistics.update {
                    $0.backlog = backlog.pending; $0.oldestPendingAgeSeconds = backlog.oldestAgeSeconds
                    $0.queueUsage = backlog.queueUsage; $0.logBytes = backlog.logBytes
                }
                metadata[LogKey.backlog] = "\(backlog.pending)"
                metadata[LogKey.oldestAgeSeconds] = "\(String(format: "%.1f", backlog.oldestAgeSeconds))"
                metadata[LogKey.queueUsage] = "\(String(format: "%.4f", backlog.queueUsage))"
                metadata[LogKey.logBytes] = "\(backlog.logBytes)"
                // Only the active worker warns, so N workers do not say it N times.
                if active != nil { warnAboutGrowth(backlog) }
                if backlog.unknownKind > 0 {
                    metadata[LogKey.unknownKinds] = "\(backlog.unknownKind)"
                    logger.error("events of a kind this worker does not know are waiting in the log; upgrade the worker to match the migrations", metadata: [LogKey.unknownKinds: "\(backlog.unknownKind)"])
                }
            } catch {
                postgresFailed(error)
                metadata[LogKey.backlog] = "unknown"
            }
        } else {
            metadata[LogKey.backlog] = "unknown"
        }
        if let target = invalidator?.target {
            // An idle connection can be dead without anyone noticing; find out now, not at the next trade.
            do { try ping(try target.anyConnection()) } catch { redisFailed(error) }
        }
        if metrics != nil { readRedisInfo() }
        let summary = reporting.interval.summary
        metadata[LogKey.events] = "\(summary.events)"
        metadata[LogKey.keys] = "\(summary.keys)"
        metadata[LogKey.p50] = "\(formatMilliseconds(summary.p50Nanoseconds))"
        metadata[LogKey.p99] = "\(formatMilliseconds(summary.p99Nanoseconds))"
        metadata[LogKey.max] = "\(formatMilliseconds(summary.maxNanoseconds))"
        if recent.isEnabled {
            metadata[LogKey.refilled] = "\(reporting.refilledThisInterval)"
            reporting.refilledThisInterval = 0
        }
        metadata[LogKey.slowEvents] = "\(reporting.slowThisInterval)"
        reporting.slowThisInterval = 0
        metadata[LogKey.role] = "\(active != nil ? "active" : (session != nil ? "standby" : "none"))"
        if let pace = active?.pace { metadata[LogKey.pace] = "\(pace.pace.rawValue)" }
        metadata[LogKey.postgres] = "\(session != nil ? "up" : "down")"
        metadata[LogKey.redis] = "\(invalidator != nil ? "up" : "down")"
        logger.info("lag summary", metadata: metadata)
        reporting.interval.reset()
    }

    /// The cache's own health figures for /metrics (hit ratio, memory, evictions).
    private func readRedisInfo() {
        guard let target = invalidator?.target, reporting.redisInfoAllowed, let redis = try? target.anyConnection() else { return }
        do {
            let reply = try redis.command([Array("INFO".utf8)])
            switch reply {
            case .bulk(let bytes):
                let info = RedisInfo.parse(String(decoding: bytes, as: UTF8.self))
                statistics.update { $0.redisInfo = info }
            case .error(let message):
                reporting.redisInfoAllowed = false
                logger.warning("Redis refused INFO; the cache's own figures (hit ratio, memory) are not exported. Allow +info for the worker's user (deploy/redis/users.acl)", metadata: [LogKey.error: "\(message)"])
            default:
                break
            }
        } catch {
            redisFailed(error)
        }
    }

    /// Growth that needs a person: the log filling while nothing drains it (worker or Redis down
    /// for long), or the server's notification queue filling (a listener that does not read;
    /// when it is full the bot's notifying commits fail).
    private func warnAboutGrowth(_ backlog: EventLog.Backlog) {
        if backlog.pending > config.backlogWarning || backlog.oldestAgeSeconds > config.oldestAgeWarningSeconds {
            logger.warning("event backlog over its threshold: invalidations are late. Is Redis reachable? See docs/operations.md#backlog-growing", metadata: [
                LogKey.backlog: "\(backlog.pending)", LogKey.oldestAgeSeconds: "\(String(format: "%.1f", backlog.oldestAgeSeconds))",
                LogKey.threshold: "\(config.backlogWarning) events or \(String(format: "%g", config.oldestAgeWarningSeconds)) s"])
        }
        if backlog.queueUsage > config.queueUsageWarning {
            logger.warning("the server's notification queue is filling; when it is full the bot's commits fail. Find the session that LISTENs without reading (pg_stat_activity). See docs/operations.md#notification-queue-filling", metadata: [
                LogKey.queueUsage: "\(String(format: "%.4f", backlog.queueUsage))",
                LogKey.threshold: "\(String(format: "%g", config.queueUsageWarning))"])
        }
    }

}
