import InvalidationCore
import Prometheus
import Synchronization

/// The worker's Prometheus metrics. One prefix, base units, `_total` on counters, help on
/// every metric; labels only for the event kind (eight values), never a key or a user.
///
/// Lag and batch sizes are observed as they happen (histograms need every observation); all
/// other figures come from `WorkerStatistics`, the single source of truth also read by tests and
/// logs, and are brought up to date when Prometheus scrapes.
public final class WorkerMetrics: Sendable {
    public static let prefix = "cache_invalidator_"
    /// Sub-millisecond resolution where the lag lives, then up to minutes for a drained backlog.
    static let lagBuckets: [Double] = [0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                                       0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
    static let batchBuckets: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]

    public let registry = PrometheusCollectorRegistry()
    private let lag: ValueHistogram
    private let batchEvents: ValueHistogram
    private let events: [String: Counter]
    private let keys: [String: Counter]
    private let refilled: [String: Counter]
    private let counters: [(Counter, @Sendable (WorkerStatistics.Snapshot) -> UInt64)]
    private let gauges: [(Gauge, @Sendable (WorkerStatistics.Snapshot) -> Double)]
    private let redisCounters: [(Counter, @Sendable (RedisInfo) -> Double?)]
    private let redisGauges: [(Gauge, @Sendable (RedisInfo) -> Double?)]
    /// What the counters showed at the last scrape, to add only the difference.
    private let exported = Mutex<(snapshot: WorkerStatistics.Snapshot, redis: [Double?])>((WorkerStatistics.Snapshot(), []))

    public init(version: String) {
        let p = Self.prefix
        let registry = self.registry
        lag = registry.makeValueHistogram(descriptor: Self.describe(p + "lag_seconds", "Commit (or trigger write, without track_commit_timestamp) to Redis confirming the deletion, per event"), buckets: Self.lagBuckets)
        batchEvents = registry.makeValueHistogram(descriptor: Self.describe(p + "batch_events", "Events per batch (one pipelined deletion round trip)"), buckets: Self.batchBuckets)
        var events: [String: Counter] = [:], keys: [String: Counter] = [:], refilled: [String: Counter] = [:]
        for kind in EventKind.allNames {
            refilled[kind] = registry.makeCounter(descriptor: Self.describe(p + "refilled_keys_total", "Keys the second deletion (--redelete-after) removed, by event kind: cache fills that landed between the two deletions (stale ones, and fresh ones that cost a miss)"), labels: [("kind", kind)])
            events[kind] = registry.makeCounter(descriptor: Self.describe(p + "events_total", "Events invalidated and acknowledged, by event kind"), labels: [("kind", kind)])
            keys[kind] = registry.makeCounter(descriptor: Self.describe(p + "keys_total", "Keys sent to Redis for deletion, by event kind (before de-duplication within a batch)"), labels: [("kind", kind)])
        }
        self.events = events
        self.keys = keys
        self.refilled = refilled
        func counter(_ name: String, _ help: String, _ read: @escaping @Sendable (WorkerStatistics.Snapshot) -> UInt64) -> (Counter, @Sendable (WorkerStatistics.Snapshot) -> UInt64) {
            (registry.makeCounter(descriptor: Self.describe(p + name, help)), read)
        }
        counters = [
            counter("batches_total", "Batches deleted and acknowledged") { $0.batches },
            counter("redis_errors_total", "Failed Redis connects and round trips") { $0.redisErrors },
            counter("postgres_errors_total", "Failed Postgres connects and queries (heartbeats included)") { $0.postgresErrors },
            counter("redis_reconnects_total", "Redis connections opened after the first") { $0.redisConnects > 0 ? $0.redisConnects - 1 : 0 },
            counter("postgres_reconnects_total", "Postgres connections opened after the first") { $0.postgresConnects > 0 ? $0.postgresConnects - 1 : 0 },
            counter("heartbeat_failures_total", "Postgres connections given up because a heartbeat went unanswered (half-open)") { $0.heartbeatFailures },
            counter("malformed_notifications_total", "Notifications whose payload is not an event id (public channel) or an event (private channel); ignored") { $0.malformedNotifications },
            counter("events_from_notifications_total", "Events deleted straight from the private channel's notification, without reading the log first (0004)") { $0.eventsFromNotifications },
            counter("unknown_event_notifications_total", "Notifications naming an event the log never held (forged; nothing deleted)") { $0.forgedNotifications },
            counter("undecodable_events_total", "Events whose payload could not be decoded (acknowledged, nothing deleted, logged)") { $0.undecodableEvents },
            counter("slow_events_total", "Events slower than --slow-threshold, commit to deletion") { $0.slowEvents },
            counter("events_pruned_total", "Processed events deleted from the log past --retention") { $0.eventsPruned },
            counter("takeovers_total", "Times this worker became the active one") { $0.takeovers },
            counter("redeleted_events_total", "Events whose keys were deleted a second time (--redelete-after)") { $0.redeletedEvents },
            counter("postgres_primary_changes_total", "Times the worker reached another primary than before (a promoted standby: a new timeline; or another cluster)") { $0.primaryChanges },
            counter("redis_redirections_total", "Redis Cluster redirections followed: MOVED (a slot moved for good; the map learns it) and ASK (a slot being migrated)") { $0.redisRedirections },
            counter("redis_master_changes_total", "Times the worker reached another Redis master than before (a Sentinel failover; or a restart: another run_id)") { $0.redisMasterChanges },
            counter("failover_replayed_events_total", "Events whose keys were deleted again after a PostgreSQL primary or Redis master change (--failover-replay)") { $0.failoverReplayedEvents },
            counter("failover_refilled_keys_total", "Keys the replay after a primary change removed: cached again since their first deletion, maybe from a write the new primary lacks") { $0.failoverRefilledKeys },
        ]
        func gauge(_ name: String, _ help: String, _ read: @escaping @Sendable (WorkerStatistics.Snapshot) -> Double) -> (Gauge, @Sendable (WorkerStatistics.Snapshot) -> Double) {
            (registry.makeGauge(descriptor: Self.describe(p + name, help)), read)
        }
        @Sendable func flag(_ value: Bool) -> Double { value ? 1 : 0 }
        gauges = [
            gauge("backlog_events", "Unprocessed events in the log (updated every --summary-interval)") { Double($0.backlog) },
            gauge("oldest_unprocessed_age_seconds", "Age of the oldest unprocessed event (updated every --summary-interval)") { $0.oldestPendingAgeSeconds },
            gauge("event_log_bytes", "Size of cache_invalidation.events with its indexes (updated every --summary-interval)") { Double($0.logBytes) },
            gauge("redelete_pending_events", "Events recorded for their second deletion and not yet deleted again (--redelete-after); past its memory bound the oldest are kept as id ranges, not counted here") { Double($0.redeletePending) },
            gauge("notification_queue_usage_ratio", "pg_notification_queue_usage(), 0 to 1; when full, notifying commits fail") { $0.queueUsage },
            gauge("missing_triggers", "Expected triggers missing or disabled at the last check (-1: not checked, e.g. on a standby)") { Double($0.missingTriggers) },
            gauge("schema_version", "Highest migration applied to the database at the last check (-1: not checked, or the version table is not readable by the worker's role)") { Double($0.schemaVersion) },
            gauge("schema_version_supported", "Highest migration this worker release knows; a schema_version above it means the worker needs upgrading") { _ in Double(HealthCheck.latestSchemaVersion) },
            gauge("postgres_up", "1 while the worker's Postgres connection works") { flag($0.postgresUp) },
            gauge("postgres_unfit", "1 while the server DATABASE_URL reaches is refused: a standby, or LISTEN does not work through it (a pooler in transaction mode)") { flag($0.postgresUnfit != nil) },
            gauge("redis_up", "1 while the worker's Redis connection works") { flag($0.redisUp) },
            gauge("listening", "1 while LISTEN is active (the active worker only)") { flag($0.listening) },
            gauge("active", "1 if this worker holds the leader lock and does the work, 0 on a standby") { flag($0.active) },
        ]
        func redisCounter(_ name: String, _ help: String, _ read: @escaping @Sendable (RedisInfo) -> Double?) -> (Counter, @Sendable (RedisInfo) -> Double?) {
            (registry.makeCounter(descriptor: Self.describe(p + "redis_" + name, help + " (Redis INFO)")), read)
        }
        func redisGauge(_ name: String, _ help: String, _ read: @escaping @Sendable (RedisInfo) -> Double?) -> (Gauge, @Sendable (RedisInfo) -> Double?) {
            (registry.makeGauge(descriptor: Self.describe(p + "redis_" + name, help + " (Redis INFO)")), read)
        }
        redisCounters = [
            redisCounter("keyspace_hits_total", "Successful key lookups in the cache") { $0.keyspaceHits },
            redisCounter("keyspace_misses_total", "Failed key lookups in the cache") { $0.keyspaceMisses },
            redisCounter("evicted_keys_total", "Keys evicted because of maxmemory") { $0.evictedKeys },
            redisCounter("expired_keys_total", "Keys removed by their TTL") { $0.expiredKeys },
        ]
        redisGauges = [
            redisGauge("used_memory_bytes", "Memory used by the cache") { $0.usedMemoryBytes },
            redisGauge("maxmemory_bytes", "The cache's maxmemory setting, 0 for none") { $0.maxmemoryBytes },
            redisGauge("connected_clients", "Clients connected to the cache") { $0.connectedClients },
        ]
        registry.makeGauge(descriptor: Self.describe(p + "build_info", "Always 1; the version label tells which build runs"), labels: [("version", version)]).set(to: 1.0)
    }

    /// The full name (our prefix included) as the descriptor's metric name: no unit part is
    /// appended, so the exposed names are exactly the ones the README and the alerts use.
    private static func describe(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    func observe(lagNanoseconds: Int64) {
        lag.record(Double(max(0, lagNanoseconds)) / 1e9)
    }

    func observe(batchEvents count: Int) {
        batchEvents.record(Double(count))
    }

    /// The text exposition, brought up to date with `snapshot` first.
    public func exposition(_ snapshot: WorkerStatistics.Snapshot) -> [UInt8] {
        exported.withLock { last in
            for (counter, read) in counters {
                let now = read(snapshot), before = read(last.snapshot)
                if now > before { counter.increment(by: Int64(now - before)) }
            }
            for kind in EventKind.allNames {
                let newEvents = snapshot.eventsByKind[kind, default: 0], oldEvents = last.snapshot.eventsByKind[kind, default: 0]
                if newEvents > oldEvents { events[kind]?.increment(by: Int64(newEvents - oldEvents)) }
                let newKeys = snapshot.keysByKind[kind, default: 0], oldKeys = last.snapshot.keysByKind[kind, default: 0]
                if newKeys > oldKeys { keys[kind]?.increment(by: Int64(newKeys - oldKeys)) }
                let newRefilled = snapshot.refilledKeysByKind[kind, default: 0], oldRefilled = last.snapshot.refilledKeysByKind[kind, default: 0]
                if newRefilled > oldRefilled { refilled[kind]?.increment(by: Int64(newRefilled - oldRefilled)) }
            }
            for (gauge, read) in gauges { gauge.set(to: read(snapshot)) }
            if let info = snapshot.redisInfo {
                let previous = last.redis.count == redisCounters.count ? last.redis : Array(repeating: nil, count: redisCounters.count)
                var current: [Double?] = []
                for (index, (counter, read)) in redisCounters.enumerated() {
                    let value = read(info)
                    current.append(value ?? previous[index])
                    guard let value else { continue }
                    // Redis restarted (its counters started over): count what it has seen since.
                    let delta = previous[index].map { value >= $0 ? value - $0 : value } ?? value
                    if delta > 0 { counter.increment(by: delta) }
                }
                last.redis = current
                for (gauge, read) in redisGauges { if let value = read(info) { gauge.set(to: value) } }
            }
            last.snapshot = snapshot
        }
        return registry.emitToBuffer()
    }
}
