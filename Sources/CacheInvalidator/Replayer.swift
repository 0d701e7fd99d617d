import InvalidationCore
import PostgresClient
import RedisClient

/// `cache-invalidator replay`: runs the invalidation of a range of logged events again, processed
/// or not (after Redis was restored from a snapshot older than some deletions, say). It only reads
/// the log: pending events stay pending for the worker.
///
/// `--since T` takes every event created or processed at or after T, and every pending one: a
/// deletion is lost by a restore to T if it was performed after T, whenever its event was created.
public struct Replayer {
    public struct Range: Sendable {
        public var fromID: Int64?
        public var toID: Int64?
        /// A timestamp Postgres understands (`2026-11-21 10:00+00`).
        public var since: String?
        /// Or a time this long before now, on the database's clock.
        public var sinceMillisecondsAgo: Int64?

        public init(fromID: Int64? = nil, toID: Int64? = nil, since: String? = nil, sinceMillisecondsAgo: Int64? = nil) {
            self.fromID = fromID
            self.toID = toID
            self.since = since
            self.sinceMillisecondsAgo = sinceMillisecondsAgo
        }
    }

    public struct Summary: Sendable, Equatable {
        public var events = 0
        public var firstID: Int64?
        public var lastID: Int64?
        public var keys = 0
        public var patterns = 0
        public var removed: Int64 = 0
        /// The resolved --since, as the database read it.
        public var cutoff: String?
    }

    public var configuration: WorkerConfiguration
    public var batchSize = 1000

    public init(configuration: WorkerConfiguration) {
        self.configuration = configuration
    }

    public enum Failure: Error, CustomStringConvertible {
        case postgres(PostgresError)
        case redis(RedisError)
        public var description: String {
            switch self {
            case .postgres(let error): return "\(error)"
            case .redis(let error): return "\(error) — part of the range may not have been replayed; replaying is idempotent, run the same command again"
            }
        }
    }

    /// Replays `range`. With `dryRun`, deletes nothing and hands every key and pattern to `output`.
    public func run(_ range: Range, dryRun: Bool, output: (String) -> Void) throws(Failure) -> Summary {
        let postgres: PGConnection
        do {
            postgres = try PGConnection(conninfo: configuration.databaseURL, applicationName: "cache-invalidator replay")
        } catch {
            throw .postgres(error)
        }
        var invalidator: RedisInvalidator?
        if !dryRun {
            do {
                let redis = try configuration.redis.open(timeoutMilliseconds: configuration.redisTimeoutMilliseconds)
                invalidator = RedisInvalidator(target: redis, deleteCommand: configuration.deleteCommand)
            } catch {
                throw .redis(error)
            }
        }
        var summary = Summary()
        var cursor = max(0, (range.fromID ?? 1) - 1)
        let kinds = PostgresArray.text(EventKind.allNames)
        // The cutoff is resolved once, on the database's clock (not this machine's).
        var cutoff: String? = nil
        // Events still pending are replayed whatever their age. With the pending queue (0005) a
        // processed event has no processed_at: what the worker recorded while acknowledging
        // tells which were processed after the cutoff.
        var stillPending = "e.processed_at IS NULL"
        do {
            if try EventLog.usesPendingQueue(on: postgres) {
                // Processed after the cutoff: at or above the lowest id the worker recorded
                // acknowledging from one period before it on (EventLog.markAcknowledging).
                stillPending = """
                    EXISTS (SELECT 1 FROM cache_invalidation.pending p WHERE p.id = e.id)
                    OR e.id >= (SELECT min(a.min_id) FROM cache_invalidation.acknowledged a
                                WHERE a.at >= $3::timestamptz - make_interval(secs => \(EventLog.markLookbackSeconds)))
                    """
            }
            if let ago = range.sinceMillisecondsAgo {
                cutoff = try postgres.execute("SELECT (now() - $1::int8 * interval '1 ms')::text", [String(ago)])[0, 0]
            } else if let since = range.since {
                cutoff = try postgres.execute("SELECT $1::timestamptz::text", [since])[0, 0]
            }
        } catch {
            throw .postgres(error)
        }
        summary.cutoff = cutoff
        while true {
            let fetched: FetchedEvents
            do {
                fetched = FetchedEvents(try postgres.execute("""
                    SELECT \(EventLog.columns(commitTimestamps: false))
                    FROM cache_invalidation.events e
                    WHERE e.id > $1 AND ($2::int8 IS NULL OR e.id <= $2::int8)
                      AND ($3::timestamptz IS NULL OR e.created_at >= $3::timestamptz
                           OR e.processed_at >= $3::timestamptz OR \(stillPending))
                      AND e.kind = ANY($4::text[])
                    ORDER BY e.id LIMIT $5
                    """, [String(cursor), range.toID.map(String.init), cutoff, kinds, String(batchSize)]))
            } catch {
                throw .postgres(error)
            }
            guard fetched.rowCount > 0 else { break }
            var plan = InvalidationPlan()
            for event in fetched.events { configuration.rules.apply(event, prefix: configuration.keyPrefix, to: &plan) }
            if let invalidator {
                do {
                    summary.removed += try invalidator.execute(plan).removed
                } catch {
                    throw .redis(error)
                }
            } else {
                // Quoted with escapes: a value holding a newline must not forge another line.
                for key in plan.keys { output("key \(LogfmtLogHandler.quoted(key))") }
                for pattern in plan.patterns { output("pattern \(LogfmtLogHandler.quoted(pattern))") }
            }
            summary.events += fetched.events.count
            summary.keys += plan.keyBytes.count
            summary.patterns += plan.patterns.count
            summary.firstID = summary.firstID ?? fetched.events.first?.id
            summary.lastID = fetched.events.last?.id ?? summary.lastID
            cursor = fetched.maxID
            if fetched.rowCount < batchSize { break }
        }
        return summary
    }
}
