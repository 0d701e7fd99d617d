import InvalidationCore
import Synchronization

/// Counters and gauges the worker publishes, readable from any thread (tests, `/metrics`).
public final class WorkerStatistics: Sendable {
    public struct Snapshot: Sendable, Equatable {
        public var eventsProcessed: UInt64 = 0
        public var eventsByKind: [String: UInt64] = [:]
        /// Keys sent for deletion by the events of each kind (before de-duplication in a batch).
        public var keysByKind: [String: UInt64] = [:]
        public var keysDeleted: UInt64 = 0
        public var keysRemoved: UInt64 = 0
        public var patternsScanned: UInt64 = 0
        public var batches: UInt64 = 0
        public var malformedNotifications: UInt64 = 0
        public var forgedNotifications: UInt64 = 0
        public var undecodableEvents: UInt64 = 0
        public var postgresErrors: UInt64 = 0
        public var redisErrors: UInt64 = 0
        public var postgresConnects: UInt64 = 0
        public var redisConnects: UInt64 = 0
        public var redisUp = false
        public var listening = false
        public var backlog: Int64 = 0
        public var oldestPendingAgeSeconds: Double = 0
        public var slowEvents: UInt64 = 0
        /// Expected triggers missing or disabled at the last check (-1: not checked yet).
        public var missingTriggers: Int = -1
        /// The highest migration applied, at the last check (-1: not checked yet, or the version
        /// table is not readable by the worker's role).
        public var schemaVersion: Int64 = -1
        public var eventsPruned: UInt64 = 0
        /// Set once the start-up drain finished: everything committed before start is handled.
        public var initialDrainDone = false
        /// This worker holds the leader lock and does the work; false: standby (or disconnected).
        public var active = false
        public var postgresUp = false
        /// Why the Postgres server reached is not used (a standby, LISTEN broken); nil otherwise.
        public var postgresUnfit: String?
        /// Times the worker reached another primary than before (a new timeline or cluster).
        public var primaryChanges: UInt64 = 0
        /// Times the worker reached another Redis master than before (a failover, a restart).
        public var redisMasterChanges: UInt64 = 0
        /// Redis Cluster redirections followed (MOVED: a slot moved for good; ASK: being migrated).
        public var redisRedirections: UInt64 = 0
        /// Events whose keys were deleted again after a primary change, and the keys that were
        /// there (cached again since the first deletion).
        public var failoverReplayedEvents: UInt64 = 0
        public var failoverRefilledKeys: UInt64 = 0
        public var queueUsage: Double = 0
        public var logBytes: Int64 = 0
        public var heartbeatFailures: UInt64 = 0
        /// Times this worker became the active one.
        public var takeovers: UInt64 = 0
        /// Notifications received (with 0003, fewer than events while the worker polls).
        public var notificationsReceived: UInt64 = 0
        /// Events deleted straight from the private channel's notification (0004), before being read from the log.
        public var eventsFromNotifications: UInt64 = 0
        /// Times the worker switched to polling the log (writers stop notifying meanwhile).
        public var pollingEntries: UInt64 = 0
        public var polling = false
        /// The active worker ended its last turn with work waiting (a drain due, named or
        /// carried events): false once it has caught up.
        public var workWaiting = false
        /// Events whose keys were deleted a second time (`--redelete-after`).
        public var redeletedEvents: UInt64 = 0
        /// Keys the second deletion actually removed, by event kind: fills that landed between
        /// the two deletions (the cache-aside race's footprint; a fresh fill counts too).
        public var refilledKeysByKind: [String: UInt64] = [:]
        public var refilledKeys: UInt64 = 0
        /// Events recorded for a second deletion and not yet deleted again (ranges not counted).
        public var redeletePending: Int = 0
        /// The cache's own figures from its last INFO (nil until read, or if INFO is not allowed).
        public var redisInfo: RedisInfo?
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public var snapshot: Snapshot { state.withLock { $0 } }

    func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }
}
