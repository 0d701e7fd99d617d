import Foundation
import InvalidationCore
import Logging
import PostgresClient
import RedisClient

/// The invalidation loop: the driver that executes what the pure state machines decide.
///
/// Runs on its own thread (every libpq and hiredis call blocks) and waits on the Postgres socket
/// with `poll`. Each turn: (re)connect when the reconnect policies allow, take the lead if free,
/// read notifications, do the pending work (delete a batch's keys in one pipelined round trip,
/// then acknowledge it), let the pace act, and sleep until the earliest deadline (`WakeUp`).
///
/// Where the state lives:
/// - `session`: everything that belongs to one Postgres session (leadership, the pace, the
///   pending work, the batch awaiting acknowledgement). A lost session is `session = nil`.
/// - `invalidator`: the Redis connection; nil while disconnected.
/// - `postgresPolicy`, `redisPolicy`: when to reconnect and what to tell ops.
/// - `election`: whether to lead, and the abandoned session to end first.
/// - `reporting`: the interval's figures and which warnings were already given.
///
/// Nothing is lost because the log, not the notification, is the source of truth: every new
/// session LISTENs first and then drains the whole pending log, and an event is acknowledged only
/// with a `ConfirmedBatch`, which only Redis's confirmation produces.
///
/// Several workers may run against one database: the one whose session holds the leader lock (a
/// session-level advisory lock) is active; the others stand by without LISTENing and retry the
/// lock every `standbyPollNanoseconds`.
final class Worker {
    let config: WorkerConfiguration
    let paceSettings: PaceMachine.Settings
    /// Kinds whose rules delete by pattern: never taken from a notification (see handlePrivate).
    let patternKinds: Set<EventKind>
    let logger: Logger
    let debugEnabled: Bool
    let statistics: WorkerStatistics
    let metrics: WorkerMetrics?
    private let wake: WakeSignal
    private let stopRequested: StopFlag

    /// The Postgres session; nil while disconnected.
    var session: Session<PostgresSide>?
    /// The Redis side; nil while disconnected.
    var invalidator: RedisInvalidator?
    var postgresPolicy: ReconnectPolicy
    var redisPolicy: ReconnectPolicy
    /// Whether this worker leads, and what it remembers across sessions for that.
    var election: LeaderElection
    var reporting: Reporting
    /// The events deleted lately, for their second deletion (and the failover replays): kept
    /// across Postgres sessions, since the keys are in Redis; seeded from the log by a new lead.
    var recent: RecentDeletions
    /// The events acknowledged lately, to delete again on reaching another primary; and which
    /// primary that was. Kept across sessions: they are about the servers, not the session.
    var failover: FailoverMemory
    var primary = PrimaryWatch()
    var redisMaster: RedisMaster?
    /// A cluster's masters as last seen: where to start when the URL's node is the one down.
    var knownClusterNodes: [ClusterTopology.Node] = []
    /// What `publishState` last told other threads.
    private var published: PublishedState?

    init(config: WorkerConfiguration, logger: Logger, statistics: WorkerStatistics, wake: WakeSignal, stopRequested: StopFlag, metrics: WorkerMetrics? = nil) {
        self.config = config
        self.paceSettings = PaceMachine.Settings(
            entryEvents: config.pollingEntryEvents, windowNanoseconds: config.pollingWindowNanoseconds,
            exitNanoseconds: config.pollingExitNanoseconds, exitEvents: config.pollingExitEvents,
            pollIntervalNanoseconds: config.pollIntervalNanoseconds, fullScanNanoseconds: config.pollingFullScanNanoseconds)
        self.patternKinds = Set(EventKind.allCases.filter(config.rules.deletesByPattern))
        self.metrics = metrics
        self.logger = logger
        self.debugEnabled = logger.logLevel <= .debug
        self.statistics = statistics
        self.wake = wake
        self.stopRequested = stopRequested
        let backoff = Backoff(initialMilliseconds: config.reconnectInitialMilliseconds, maximumMilliseconds: config.reconnectMaximumMilliseconds)
        self.postgresPolicy = ReconnectPolicy(backoff: backoff, immediateRetryAfterUptimeNanoseconds: config.immediateReconnectAfterUptimeNanoseconds)
        self.redisPolicy = ReconnectPolicy(backoff: backoff, immediateRetryAfterUptimeNanoseconds: config.immediateReconnectAfterUptimeNanoseconds)
        self.reporting = Reporting(nextSummaryAt: monotonicNanoseconds() + config.summaryIntervalNanoseconds)
        self.recent = RecentDeletions(delay: config.redeleteAfterNanoseconds, eventBound: config.redeleteMemoryEvents)
        self.election = LeaderElection(standbyRetryNanoseconds: config.standbyPollNanoseconds)
        self.failover = FailoverMemory(window: config.failoverReplayNanoseconds, eventBound: config.failoverMemoryEvents)
    }

    var stopping: Bool { stopRequested.isSet }
    /// The active session's state, for the processing code (nil unless active).
    var active: ActiveSession? { session?.active }
    /// Both servers up and this worker active: work can be done.
    var canWork: Bool { session?.active != nil && invalidator != nil && !stopping }

    func run() {
        logger.info("worker starting", metadata: [
            LogKey.postgres: "\((try? ConnectionTarget.parse(config.databaseURL))?.description ?? "invalid")",
            LogKey.redis: "\(config.redis)",
            "key_prefix": "\(config.keyPrefix)",
            "delete_command": "\(config.deleteCommand.rawValue)",
            LogKey.batchSize: "\(config.batchSize)",
            "redelete_after_ms": "\(config.redeleteAfterNanoseconds / 1_000_000)",
        ])
        while !stopping {
            let now = monotonicNanoseconds()
            if session == nil && postgresPolicy.mayConnect(now: now) { connectPostgres() }
            if invalidator == nil && redisPolicy.mayConnect(now: now) { connectRedis() }
            if let session, !session.isActive, monotonicNanoseconds() >= session.nextLeadAttemptAt { tryToLead() }
            readNotifications()
            if canWork && active!.work.hasWork { processPending() }
            if canWork { pace() }
            if invalidator != nil && failover.replayPending > 0 && !stopping { replayAfterFailover() }
            // Second deletions yield to first ones: only when nothing else is waiting.
            if redeleteMayGo(now: monotonicNanoseconds()) { redeleteDue() }
            if monotonicNanoseconds() >= reporting.nextSummaryAt { logSummary() }
            if let due = active?.maintenanceAt, monotonicNanoseconds() >= due, !stopping { maintain() }
            if let session, monotonicNanoseconds() >= session.lastAnswerAt &+ config.heartbeatIdleNanoseconds, !stopping { heartbeat() }
            if let redis = invalidator, monotonicNanoseconds() >= redis.lastAnswerAt &+ config.heartbeatIdleNanoseconds, !stopping { redisHeartbeat() }
            publishState()
            if stopping { break }
            waitForWork()
        }
        _ = acknowledgeDeferred()
        logSummary()
        logger.info("worker stopped", metadata: [LogKey.events: "\(statistics.snapshot.eventsProcessed)"])
        session = nil
        invalidator = nil
        publishState()
    }

    /// Connection state as other threads see it (/readyz, /metrics, tests): derived from the
    /// worker's own state once per turn of the loop, so it is never kept in two places.
    func publishState() {
        let pace = active?.pace?.pace
        let state = PublishedState(postgresUp: session != nil, postgresUnfit: session == nil ? reporting.postgresUnfit?.readiness : nil,
                                   redisUp: invalidator != nil, active: active != nil,
                                   polling: pace != nil && pace != .notified, workWaiting: active?.work.hasWork ?? false)
        guard published != state else { return }
        published = state
        statistics.update {
            $0.postgresUp = state.postgresUp
            $0.postgresUnfit = state.postgresUnfit
            $0.redisUp = state.redisUp
            $0.active = state.active
            // Only the active worker LISTENs.
            $0.listening = state.active
            $0.polling = state.polling
            $0.workWaiting = state.workWaiting
        }
    }

    private func waitForWork() {
        // PQexec reads everything up to ReadyForQuery, so notifications that arrived during the
        // last query are already in libpq's queue and the socket is empty: poll would not wake.
        handleBufferedNotifications()
        let now = monotonicNanoseconds()
        let wakeUp = WakeUp(session: session, summaryAt: reporting.nextSummaryAt, heartbeatIdleNanoseconds: config.heartbeatIdleNanoseconds,
                            postgresRetryAt: postgresPolicy.retryAt, redisUp: invalidator != nil, redisRetryAt: redisPolicy.retryAt,
                            redeleteAt: redeleteDueAt, redisHeartbeatAt: invalidator.map { $0.lastAnswerAt &+ config.heartbeatIdleNanoseconds },
                            replayWaiting: failover.replayPending > 0)
        let timeout = wakeUp.timeout(now: now)
        if timeout == 0 && wakeUp.workWaiting { return }
        var descriptors: [Int32] = []
        if let socket = session?.connection.log.connection.socket, socket >= 0 { descriptors.append(socket) }
        _ = waitReadable(descriptors, wake: wake, timeoutNanoseconds: timeout)
    }
}

/// The worker's side of one Postgres session: the event log, and the polled batch whose
/// acknowledgement rides on the next statement. Lost with the session.
struct PostgresSide {
    let log: EventLog
    var deferred: ConfirmedBatch?
}

struct PublishedState: Equatable {
    var postgresUp: Bool
    /// Why the server reached is not used (a standby, LISTEN broken), for /readyz.
    var postgresUnfit: String?
    var redisUp: Bool
    var active: Bool
    /// Polling or settling (W held, or writers that skipped their NOTIFY maybe still open).
    var polling: Bool
    var workWaiting: Bool
}

/// The worker's reporting state: the interval's figures and the warnings given once.
struct Reporting {
    var nextSummaryAt: UInt64
    var interval = LagStatistics()
    /// Per-event slow warnings per summary interval; the rest are counted in the summary line.
    static let slowWarningsPerInterval = 20
    var slowThisInterval = 0
    /// Keys the second deletion removed this interval (the summary's `refilled`).
    var refilledThisInterval: Int64 = 0
    var warnedPrivateChannelNotGranted = false
    /// Why the last Postgres session was refused; nil once one is used.
    var postgresUnfit: PostgresUnfit?
    /// The replay after the last primary change: events deleted again and keys that were there.
    var replayedEvents = 0
    var replayRefilled: Int64 = 0
    var triggerCheckDenied = false
    /// The newer-than-known schema version last reported, so each is logged once, not every check.
    var reportedNewerSchema: Int64?
    var pruneDenied = false
    /// Cleared when Redis refuses INFO (an ACL without it): the cache figures are then not exported.
    var redisInfoAllowed = true

    init(nextSummaryAt: UInt64) { self.nextSummaryAt = nextSummaryAt }
}
