import InvalidationCore

/// Everything the worker needs, resolved and validated: built by the command line from flags
/// and environment variables, and by tests directly.
public struct WorkerConfiguration: Sendable {
    public enum DeleteCommand: String, Sendable, CaseIterable {
        /// Frees memory in Redis's main thread: simple, fine for small values.
        case del
        /// Removes the key at once and frees the memory in the background: never stalls Redis on a large value.
        case unlink

        var argument: [UInt8] { Array(rawValue.uppercased().utf8) }
    }

    public var databaseURL: String
    public var redis: RedisEndpoint
    public var keyPrefix: String = "area51:"
    public var rules: RuleSet = .defaults()
    public var deleteCommand: DeleteCommand = .unlink
    /// Events fetched and deleted per round trip; larger batches drain a backlog faster.
    public var batchSize: Int = 1000
    /// Events slower than this (commit to deletion) are logged at warning level.
    public var slowThresholdNanoseconds: UInt64 = 100_000_000
    public var summaryIntervalNanoseconds: UInt64 = 10_000_000_000
    public var redisTimeoutMilliseconds: Int = 2000
    /// Replicas each master must have passed a batch's deletions to (`WAIT`) before it is
    /// acknowledged; 0 trusts the master's confirmation.
    public var redisWaitReplicas: Int = 0
    public var reconnectInitialMilliseconds: UInt64 = 100
    /// Short enough that the worker finds a promoted standby within seconds of the promotion.
    public var reconnectMaximumMilliseconds: UInt64 = 2_000
    /// A connection that worked at least this long and then drops is retried at once.
    public var immediateReconnectAfterUptimeNanoseconds: UInt64 = 30_000_000_000
    public var channel: String = "cache_invalidation"
    /// Processed events older than this are deleted from the log; 0 keeps them forever.
    public var retentionSeconds: UInt64 = 86_400
    /// Each event's keys are deleted again this long after the first deletion (the cache-aside
    /// race: a fill of a value read before the commit that lands after the first deletion); 0 off.
    public var redeleteAfterNanoseconds: UInt64 = 1_000_000_000
    /// Recorded events held in memory for the second deletion; past it, id ranges read back from the log.
    public var redeleteMemoryEvents: Int = 4_096
    /// How often, at most, a round of second deletions goes out: due events are batched.
    public var redeleteBatchingNanoseconds: UInt64 = 10_000_000
    /// After the worker reaches another primary (a promoted standby, another cluster), it deletes
    /// again the keys of the events it acknowledged this long before it lost the previous one:
    /// the writes an asynchronous standby may lack. 0 off.
    public var failoverReplayNanoseconds: UInt64 = 10_000_000_000
    /// Events held in memory for that replay; past it the oldest are dropped (and counted).
    public var failoverMemoryEvents: Int = 20_000
    /// A new session must hear a notification another session sent within this: the proof that
    /// LISTEN works through DATABASE_URL (a pooler in transaction mode breaks it silently).
    public var listenProbeTimeoutSeconds: Double = 1
    /// How often the worker verifies its triggers and prunes the log.
    public var maintenanceIntervalNanoseconds: UInt64 = 60_000_000_000
    /// The summary warns when more events than this are pending…
    public var backlogWarning: Int64 = 10_000
    /// …or when the oldest pending event is older than this.
    public var oldestAgeWarningSeconds: Double = 60
    /// The summary warns when the server's notification queue is fuller than this (0…1).
    public var queueUsageWarning: Double = 0.5
    /// A standby retries the leader lock this often: the longest a takeover waits once the
    /// active worker's session is gone.
    public var standbyPollNanoseconds: UInt64 = 250_000_000
    /// A Postgres connection without a round trip for this long gets a heartbeat query…
    public var heartbeatIdleNanoseconds: UInt64 = 4_000_000_000
    /// …which must answer within this, or the connection is treated as lost (half-open).
    public var heartbeatTimeoutSeconds: Double = 5
    /// The worker session's statement_timeout: below the client's 10 s query deadline, so a slow
    /// statement fails on the server and the connection stays usable. Lowered by tests.
    public var statementTimeoutMilliseconds: Int = 8000
    /// Polling pace (with migration 0003): entered when notifications bring at least this many
    /// events within `pollingWindowNanoseconds`…
    public var pollingEntryEvents: Int = 40
    public var pollingWindowNanoseconds: UInt64 = 100_000_000
    /// …left after this long without a new event, or after a window in which polls found fewer
    /// than `pollingExitEvents` (below the entry, so a stream between the two keeps its pace)…
    public var pollingExitNanoseconds: UInt64 = 50_000_000
    public var pollingExitEvents: Int = 30
    /// …polling this often while the log has nothing new…
    public var pollIntervalNanoseconds: UInt64 = 200_000
    /// …and reading the whole pending log this often (events whose transactions committed out
    /// of id order are behind the polling cursor).
    public var pollingFullScanNanoseconds: UInt64 = 100_000_000

    public init(databaseURL: String, redis: RedisEndpoint) {
        self.databaseURL = databaseURL
        self.redis = redis
    }
}
