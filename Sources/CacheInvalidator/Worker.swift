import Foundation
import InvalidationCore
import Logging
import PostgresClient
import RedisClient
import Synchronization

/// The invalidation loop. Runs on its own thread (every libpq and hiredis call blocks), waits on
/// the Postgres socket with `poll`, and for each wake-up: fetch pending events from the log,
/// delete their keys in one pipelined round trip, then acknowledge them.
///
/// Nothing is lost because the log, not the notification, is the source of truth: after every
/// (re)connect the worker LISTENs first and then drains the whole pending log, and an event is
/// acknowledged only after Redis confirmed its deletions.
///
/// Several workers may run against one database: the one whose session holds the leader lock (a
/// session-level advisory lock) is active and does all the work; the others stand by without
/// LISTENing and retry the lock every `standbyPollNanoseconds`. The lock dies with the active
/// worker's session, so a standby takes over as soon as Postgres notices it is gone.
final class Worker {
    private let config: WorkerConfiguration
    /// Kinds whose rules delete by pattern: never taken from a notification (see handlePrivate).
    private let patternKinds: Set<EventKind>
    private let logger: Logger
    private let statistics: WorkerStatistics
    private let wake: WakeSignal
    private let stopRequested: StopFlag
    private let metrics: WorkerMetrics?
    /// Cleared when Redis refuses INFO (an ACL without it): the cache figures are then not exported.
    private var redisInfoAllowed = true

    /// The Postgres side (its connection is `postgres`); nil while disconnected.
    private var eventLog: EventLog?
    /// The Redis side (its connection is `redis`); nil while disconnected.
    private var invalidator: RedisInvalidator?
    // Derived, so "connected" has one source of truth per server.
    private var postgres: PGConnection? { eventLog?.connection }
    private var redis: RedisConnection? { invalidator?.connection }

    /// Holds the leader lock on the current Postgres session: LISTENs and processes.
    private var active = false
    private var nextLeadAttemptAt: UInt64 = 0
    private var announcedStandby = false
    private var lastPostgresAnswerAt: UInt64 = 0
    /// The server-side pid of a connection this worker gave up on; the server may still keep
    /// that session (and its leader lock) alive until its own keepalives notice.
    private var abandonedBackendPID: Int32?

    /// How the active worker learns of new events (with migration 0003): `notified` waits for
    /// NOTIFY; `polling` holds the W lock and reads the log in a loop while writers skip their
    /// NOTIFY (which serializes commits cluster-wide); `settling` has released W and waits until
    /// no writer that skipped its NOTIFY is still open, then reads the whole pending log once and
    /// is notified again. See migrations/0003_quiet_notify.up.sql for why nothing slips between.
    private enum Pace: String { case notified, polling, settling }
    private var quietNotify = false
    static let maximumSkippedIDs = 10_000
    private var highestProcessedID: Int64 = 0

    /// The polling pace's state. It belongs to one Postgres session (W goes with the session),
    /// so a lost session starts over from a fresh value: notified, nothing unacknowledged.
    private struct PollingState {
        var pace = Pace.notified
        var cursor: Int64 = 0
        /// Ids the cursor passed without seeing them, and when: a transaction that took its id
        /// early and commits late (several writers commit out of id order). Asked for by primary
        /// key on every poll, so they wait one poll interval, not until the next full scan (which
        /// still covers them, and after which they are forgotten).
        var skippedIDs: [Int64: UInt64] = [:]
        /// When the polling pace reads the log next.
        var nextPollAt: UInt64 = 0
        /// The last poll's events: deleted in Redis, acknowledged with the next poll.
        var unacknowledged: Deleted? = nil
        var lastNewEventAt: UInt64 = 0
        var nextFullScanAt: UInt64 = 0
        /// Left because the rate fell below `pollingExitEvents`: settling then does not go back to
        /// polling for the next event that comes (a steady stream would flip the pace every window).
        var leftForRate = false
    }
    private var polling = PollingState()
    /// Events processed in the current window (`pollingWindowNanoseconds`), and when it began:
    /// in the notified pace, whether to start polling; in the polling pace, whether to stop.
    private var windowStart: UInt64 = 0
    private var windowEvents = 0

    /// What `publishState` last told other threads.
    private var published: (postgres: Bool, redis: Bool, active: Bool, polling: Bool)?

    private var postgresPolicy: ReconnectPolicy
    private var redisPolicy: ReconnectPolicy

    /// A drain pass over the whole pending log is due: after every (re)connect, and periodically
    /// as a safety sweep.
    private var needsDrain = true
    /// Event ids named by notifications and not yet processed: fetched by primary key. Those the
    /// log never held are forged notifications.
    private var namedIDs: Set<Int64> = []
    /// Recently processed ids, so a notification that arrives after its event was already handled
    /// (several events in one fetch) costs no query.
    private var recentIDs = RecentIDs(capacity: 8192)
    /// The private channel's name (0004) while this session LISTENs to it.
    private var privateChannel: String?
    private var warnedPrivateChannelNotGranted = false
    /// Events the private channel carried, to delete without reading them from the log first,
    /// with their payload as sent (acknowledged only if the log holds exactly that event). In
    /// arrival order; `notifiedIDs` are their ids.
    private var notifiedEvents: [(event: InvalidationEvent, payload: String)] = []
    private var notifiedIDs: Set<Int64> = []

    private var interval = LagStatistics()
    /// Trigger check and pruning: right after connecting, then every maintenance interval.
    private var nextMaintenanceAt: UInt64 = 0
    private var triggerCheckDenied = false
    /// The newer-than-known schema version last reported, so each is logged once, not every check.
    private var reportedNewerSchema: Int64?
    private var pruneDenied = false
    /// Per-event slow warnings per summary interval; the rest are counted in the summary line.
    static let slowWarningsPerInterval = 20
    private var slowThisInterval = 0
    private let debugEnabled: Bool
    private var nextSummaryAt: UInt64

    init(config: WorkerConfiguration, logger: Logger, statistics: WorkerStatistics, wake: WakeSignal, stopRequested: StopFlag, metrics: WorkerMetrics? = nil) {
        self.config = config
        self.patternKinds = Set(EventKind.allCases.filter(config.rules.deletesByPattern))
        self.metrics = metrics
        self.logger = logger
        self.statistics = statistics
        self.wake = wake
        self.stopRequested = stopRequested
        let backoff = Backoff(initialMilliseconds: config.reconnectInitialMilliseconds, maximumMilliseconds: config.reconnectMaximumMilliseconds)
        self.postgresPolicy = ReconnectPolicy(backoff: backoff, immediateRetryAfterUptimeNanoseconds: config.immediateReconnectAfterUptimeNanoseconds)
        self.redisPolicy = ReconnectPolicy(backoff: backoff, immediateRetryAfterUptimeNanoseconds: config.immediateReconnectAfterUptimeNanoseconds)
        self.nextSummaryAt = monotonicNanoseconds() + config.summaryIntervalNanoseconds
        self.debugEnabled = logger.logLevel <= .debug
    }

    private var stopping: Bool { stopRequested.isSet }

    func run() {
        logger.info("worker starting", metadata: [
            LogKey.postgres: "\((try? ConnectionTarget.parse(config.databaseURL))?.description ?? "invalid")",
            LogKey.redis: "\(config.redis)",
            "key_prefix": "\(config.keyPrefix)",
            "delete_command": "\(config.deleteCommand.rawValue)",
            LogKey.batchSize: "\(config.batchSize)",
        ])
        while !stopping {
            let now = monotonicNanoseconds()
            if postgres == nil && postgresPolicy.mayConnect(now: now) { connectPostgres() }
            if redis == nil && redisPolicy.mayConnect(now: now) { connectRedis() }
            if postgres != nil && !active && monotonicNanoseconds() >= nextLeadAttemptAt { tryToLead() }
            readNotifications()
            if active && hasWork && postgres != nil && redis != nil && !stopping {
                processPending()
            }
            if active && quietNotify && postgres != nil && redis != nil && !stopping { pacing() }
            if monotonicNanoseconds() >= nextSummaryAt { logSummary() }
            if active && monotonicNanoseconds() >= nextMaintenanceAt && !stopping { maintain() }
            if postgres != nil && monotonicNanoseconds() >= heartbeatDueAt && !stopping { heartbeat() }
            publishState()
            if stopping { break }
            waitForWork()
        }
        if eventLog != nil { _ = acknowledgePolled() }
        logSummary()
        logger.info("worker stopped", metadata: [LogKey.events: "\(statistics.snapshot.eventsProcessed)"])
        eventLog = nil
        invalidator = nil
        active = false
        polling = PollingState()
        publishState()
    }

    /// Connection state as other threads see it (/readyz, /metrics, tests): derived from the
    /// worker's own state once per turn of the loop, so it is never kept in two places.
    private func publishState() {
        let state = (postgres: postgres != nil, redis: redis != nil, active: active, polling: polling.pace != .notified)
        if let published, published == state { return }
        published = state
        statistics.update {
            $0.postgresUp = state.postgres
            $0.redisUp = state.redis
            $0.active = state.active
            // Only the active worker LISTENs.
            $0.listening = state.active
            $0.polling = state.polling
        }
    }

    // MARK: Connections
    //
    // ReconnectPolicy decides when to retry and what is worth a log line; these functions only
    // open connections and log what it says.

    private func connectPostgres() {
        do {
            let connection = try PGConnection(conninfo: config.databaseURL)
            let log = try EventLog(connection: connection, channel: config.channel, statementTimeoutMilliseconds: config.statementTimeoutMilliseconds)
            eventLog = log
            postgresPolicy.opened()
            lastPostgresAnswerAt = monotonicNanoseconds()
            statistics.update { $0.postgresConnects += 1 }
            logger.debug("postgres connection opened", metadata: [LogKey.target: "\(connection.target)"])
        } catch {
            postgresFailed(error)
            return
        }
        tryToLead()
    }

    /// Takes the leader lock if no other worker holds it, then LISTENs and drains. A standby
    /// does not LISTEN: a listener that does not read would hold back the server's notification
    /// queue, and a full queue fails the bot's commits.
    private func tryToLead() {
        guard let eventLog, !active else { return }
        do {
            var leading = try eventLog.tryLead()
            if !leading, let pid = abandonedBackendPID {
                abandonedBackendPID = nil
                if try eventLog.terminateAbandonedSession(pid: pid) {
                    logger.warning("ended this worker's previous Postgres session, which the server still kept (half-open connection); taking the lead back", metadata: [LogKey.backendPID: "\(pid)"])
                    // The lock goes with the session, a moment after the signal.
                    for _ in 0..<50 where !leading {
                        usleep(20_000)
                        leading = try eventLog.tryLead()
                    }
                }
            }
            guard leading else {
                nextLeadAttemptAt = monotonicNanoseconds() + config.standbyPollNanoseconds
                postgresRoundTripSucceeded()
                if !announcedStandby {
                    announcedStandby = true
                    logger.info("standing by: another worker is active (it holds the leader lock); taking over when its session ends", metadata: [
                        LogKey.retryMilliseconds: "\(config.standbyPollNanoseconds / 1_000_000)"])
                }
                return
            }
            // LISTEN before draining: an event committed between the two is then either in the
            // drain or announced by a notification, never in neither.
            try eventLog.listen()
            quietNotify = try eventLog.hasQuietNotify()
            privateChannel = nil
            do {
                switch try eventLog.listenPrivately() {
                case .listening(let name):
                    privateChannel = name
                case .notInstalled:
                    break
                case .notGranted:
                    if !warnedPrivateChannelNotGranted {
                        warnedPrivateChannelNotGranted = true
                        logger.warning("cannot listen on the private channel: every event is read from the log after its notification, one more round trip of lag; GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO this role (deploy/postgres/roles.sql)")
                    }
                }
            } catch where error.code == .queryFailed {
                // A fast path lost, nothing else: the public channel still names every event.
                logger.error("cannot listen on the private channel; every event is read from the log after its notification (one more round trip of lag)", metadata: [LogKey.error: "\(error)"])
            }
        } catch {
            postgresFailed(error)
            return
        }
        if quietNotify {
            do {
                let ended = try eventLog.endStalePollingHolders()
                if ended > 0 {
                    logger.warning("ended a previous worker's session that still held the polling lock (writers were skipping their NOTIFY for it)", metadata: [LogKey.events: "\(ended)"])
                }
            } catch where error.sqlState == "42501" {
                logger.warning("a session of another role holds the polling lock and cannot be ended by this one; writers skip their NOTIFY until it goes (the sweep every SUMMARY_INTERVAL still finds every event)", metadata: [LogKey.error: "\(error)"])
            } catch {
                postgresFailed(error)
                return
            }
        }
        active = true
        abandonedBackendPID = nil
        needsDrain = true
        nextMaintenanceAt = 0
        statistics.update { $0.takeovers += 1 }
        postgresRoundTripSucceeded()
        if announcedStandby {
            announcedStandby = false
            logger.notice("took over as the active worker: listening and draining the log")
        }
    }

    private var heartbeatDueAt: UInt64 { lastPostgresAnswerAt &+ config.heartbeatIdleNanoseconds }

    /// A connection can stop delivering without any error (a half-open TCP connection, a frozen
    /// middlebox): LISTEN then simply hears nothing. A query that must answer within a deadline
    /// is the only proof of life, so an idle connection gets one.
    private func heartbeat() {
        guard let eventLog else { return }
        do {
            try eventLog.heartbeat(timeoutSeconds: config.heartbeatTimeoutSeconds)
            postgresRoundTripSucceeded()
        } catch {
            statistics.update { $0.heartbeatFailures += 1 }
            postgresFailed(error)
        }
    }

    private func postgresRoundTripSucceeded() {
        lastPostgresAnswerAt = monotonicNanoseconds()
        guard !postgresPolicy.verified, let postgres, let eventLog else { return }
        if case .cameUp(let failures, let downFor)? = postgresPolicy.roundTripSucceeded(now: lastPostgresAnswerAt) {
            var metadata: Logger.Metadata = [LogKey.target: "\(postgres.target)", LogKey.role: "\(active ? "active" : "standby")",
                                             LogKey.lagStart: "\(eventLog.commitTimestamps ? "commit_timestamp" : "trigger_write_time")"]
            addOutage(&metadata, failures: failures, downFor: downFor)
            logger.info(active ? "postgres connected, listening" : "postgres connected, standing by", metadata: metadata)
        }
    }

    private func postgresFailed(_ error: PostgresError) {
        if let postgres, error.code == .connectionLost { abandonedBackendPID = postgres.backendPID }
        dropPostgresSession()
        statistics.update { $0.postgresErrors += 1 }
        let what = error.code == .queryFailed ? "postgres rejected the worker's query" : "postgres unavailable"
        report(postgresPolicy.failed(now: monotonicNanoseconds(), connectionDropped: error.code == .connectionLost),
               server: "postgres", what: what, consequence: "events wait in the log", error: "\(error)")
    }

    /// Forgets everything that belonged to the Postgres session; the next turn of the loop
    /// connects again. W went with the session; the last poll's unacknowledged events, and what
    /// notifications brought, are found by the drain after reconnecting (deletions are idempotent).
    private func dropPostgresSession() {
        eventLog = nil
        active = false
        polling = PollingState()
        privateChannel = nil
        notifiedEvents.removeAll(keepingCapacity: false)
        notifiedIDs.removeAll(keepingCapacity: false)
        needsDrain = true
    }

    /// Drops the Postgres session on purpose and opens a new one at once (not a failure: no
    /// backoff, no error count).
    private func reopenPostgres(reason: String) {
        logger.notice("\(reason)")
        dropPostgresSession()
    }

    private func connectRedis() {
        do {
            let connection = try config.redis.connect(timeoutMilliseconds: config.redisTimeoutMilliseconds)
            try ping(connection)
            invalidator = RedisInvalidator(connection: connection, deleteCommand: config.deleteCommand)
            redisPolicy.opened()
            needsDrain = true
            statistics.update { $0.redisConnects += 1 }
            logger.debug("redis connection opened", metadata: [LogKey.target: "\(config.redis)"])
        } catch {
            redisFailed(error)
        }
    }

    private func ping(_ connection: RedisConnection) throws(RedisError) {
        let reply = try connection.command([Array("PING".utf8)])
        guard reply == .status("PONG") else {
            if case .error(let message) = reply { throw RedisError(code: .commandFailed, message: "PING: \(message)", target: "\(config.redis)") }
            throw RedisError(code: .unexpectedReply, message: "PING answered \(reply)", target: "\(config.redis)")
        }
    }

    private func redisRoundTripSucceeded() {
        guard !redisPolicy.verified, redis != nil else { return }
        if case .cameUp(let failures, let downFor)? = redisPolicy.roundTripSucceeded(now: monotonicNanoseconds()) {
            var metadata: Logger.Metadata = [LogKey.target: "\(config.redis)"]
            addOutage(&metadata, failures: failures, downFor: downFor)
            logger.info("redis connected", metadata: metadata)
        }
    }

    private func redisFailed(_ error: RedisError) {
        invalidator = nil
        needsDrain = true
        statistics.update { $0.redisErrors += 1 }
        let what = error.code == .commandFailed ? "redis rejected the deletions" : "redis unavailable"
        report(redisPolicy.failed(now: monotonicNanoseconds(), connectionDropped: error.code == .connectionLost),
               server: "redis", what: what, consequence: "events wait in the log and are drained when it returns", error: "\(error)")
    }

    private func report(_ action: ReconnectPolicy.FailureAction, server: String, what: String, consequence: String, error: String) {
        switch action {
        case .retryNow:
            logger.info("\(server) connection dropped, reconnecting", metadata: [LogKey.error: "\(error)"])
        case .backOff(let delay, true):
            logger.error("\(what), retrying with backoff; \(consequence)", metadata: [
                LogKey.error: "\(error)", LogKey.delayMilliseconds: "\(delay / 1_000_000)"])
        case .backOff(let delay, false):
            logger.debug("\(server) still failing", metadata: [LogKey.error: "\(error)", LogKey.delayMilliseconds: "\(delay / 1_000_000)"])
        }
    }

    private func addOutage(_ metadata: inout Logger.Metadata, failures: Int, downFor: UInt64?) {
        if failures > 0 { metadata[LogKey.attempts] = "\(failures + 1)" }
        if let downFor { metadata[LogKey.downSeconds] = "\(formatSeconds(downFor))" }
    }

    // MARK: Notifications

    /// Reads every notification received so far. Runs even while Redis is down, so that the
    /// server's notification queue never backs up behind this listener.
    private func readNotifications() {
        guard let postgres else { return }
        do {
            try postgres.consumeInput()
        } catch {
            postgresFailed(error)
            return
        }
        handleBufferedNotifications()
    }

    /// Notifications libpq has already parsed; no socket read.
    private func handleBufferedNotifications() {
        guard let postgres else { return }
        let received = postgres.notifications()
        guard !received.isEmpty else { return }
        statistics.update { $0.notificationsReceived += UInt64(received.count) }
        for notification in received { handle(notification) }
    }

    private func handle(_ notification: PGNotification) {
        if let privateChannel, notification.channel == privateChannel {
            handlePrivate(notification)
            return
        }
        do {
            let id = try NotificationPayload.parseEventID(notification.payload)
            // While Redis is away nothing is fetched, and reconnecting drains the whole log:
            // remembering ids meanwhile would only let a flood of notifications grow memory.
            guard redis != nil else { needsDrain = true; return }
            // Already handled (it came in an earlier batch), or the private channel brought it:
            // nothing to fetch.
            if !alreadyKnown(id) { namedIDs.insert(id) }
            boundNotifiedWork()
        } catch {
            statistics.update { $0.malformedNotifications += 1 }
            logger.warning("ignored malformed notification", metadata: [
                LogKey.reason: "\(error.reasonCode)",
                LogKey.error: "\(error)",
                LogKey.senderPID: "\(notification.senderPID)",
            ])
        }
    }

    /// Processed recently, or already brought by the private channel: nothing to fetch.
    private func alreadyKnown(_ id: Int64) -> Bool {
        recentIDs.contains(id) || notifiedIDs.contains(id)
    }

    /// A flood (forged ids, or notifications faster than Redis for long): stop remembering what
    /// notifications named and drain the log instead, which finds every real event. Bounded
    /// memory, whichever channel the flood comes on.
    private func boundNotifiedWork() {
        guard namedIDs.count + notifiedEvents.count > max(4 * config.batchSize, 10_000) else { return }
        namedIDs.removeAll(keepingCapacity: false)
        notifiedEvents.removeAll(keepingCapacity: false)
        notifiedIDs.removeAll(keepingCapacity: false)
        needsDrain = true
        logger.warning("too many notified events waiting; draining the log instead of fetching them by id")
    }

    /// A whole event from the private channel, which only emit() can send on (its name is a
    /// secret). Deleted straight from the notification when that is safe; anything unusual (a
    /// pattern or whole-family rule, a kind this worker does not know, a payload the log path
    /// would log about) is read from the log instead, by id, as on the public channel. Nothing
    /// here can keep an event from being read from the log: its id stays named until the log
    /// confirms that it holds this very event (`invalidateNotified`).
    private func handlePrivate(_ notification: PGNotification) {
        do {
            let notified = try NotificationPayload.parseEvent(notification.payload)
            guard redis != nil else { needsDrain = true; return }
            guard !alreadyKnown(notified.id) else { return }
            if let kind = EventKind(rawValue: notified.kind), !patternKinds.contains(kind),
               let decoded = try? EventPayload.decodeReportingOversized(notified.payload), decoded.oversized.isEmpty {
                // The start point comes from the log with the acknowledgement.
                notifiedEvents.append((InvalidationEvent(id: notified.id, kind: kind, fields: decoded.fields, startMicros: 0), notified.payload))
                notifiedIDs.insert(notified.id)
            } else {
                namedIDs.insert(notified.id)
            }
            boundNotifiedWork()
        } catch {
            // Only emit() knows the channel, so this is a bug or a leaked name, not noise. The
            // payload is not logged: on this channel it may be a user's data.
            statistics.update { $0.malformedNotifications += 1 }
            logger.error("ignored a malformed notification on the private channel", metadata: [
                LogKey.reason: "\(error.reasonCode)",
                LogKey.error: "payload of \(notification.payload.utf8.count) bytes",
                LogKey.senderPID: "\(notification.senderPID)",
            ])
        }
    }

    // MARK: Processing

    private var hasWork: Bool { needsDrain || !namedIDs.isEmpty || !notifiedEvents.isEmpty }

    /// Drains the log if due, then fetches what notifications named.
    private func processPending() {
        // Those would be fetched again: acknowledge them first.
        guard acknowledgePolled() else { return }
        // First: these need no round trip to Postgres before their deletion.
        while !notifiedEvents.isEmpty && !stopping {
            let slice = Array(notifiedEvents.prefix(config.batchSize))
            notifiedEvents.removeFirst(slice.count)
            for item in slice { notifiedIDs.remove(item.event.id) }
            guard invalidateNotified(slice) else { return }
        }
        if needsDrain {
            guard drainPass() else { return }
        }
        while !namedIDs.isEmpty && !stopping {
            guard let eventLog else { return }
            // Bounded, so a burst of ids is handled in slices, not one giant query.
            let ids = Array(namedIDs.sorted().prefix(config.batchSize))
            let fetched: EventLog.Fetched
            do {
                fetched = try eventLog.fetchPending(ids: ids)
            } catch {
                postgresFailed(error)
                return
            }
            postgresRoundTripSucceeded()
            if fetched.rowCount > 0 {
                guard invalidate(fetched) else { return }
            } else {
                redisRoundTripSucceeded()
            }
            // Named but not pending: processed already (by an earlier batch or another worker),
            // of a kind this worker does not know, or never in the log at all (forged).
            var notFound: [Int64] = []
            for id in ids where namedIDs.remove(id) != nil && !recentIDs.contains(id) { notFound.append(id) }
            reportForged(among: notFound)
        }
    }

    /// One pass over the pending log in id order, batch by batch. Returns false if a connection failed.
    ///
    /// One forward pass is complete: LISTEN came first, so every event committed after the pass
    /// began is also announced by a notification and fetched by id.
    ///
    /// Postgres and Redis work at the same time: as soon as a full batch arrives, the statement
    /// that acknowledges the batch before it (Redis confirmed its deletions in the previous turn)
    /// and reads the next one is sent, and only then is this batch decoded and deleted. So
    /// Postgres's half of a batch (an UPDATE of the acknowledged rows and an index scan) overlaps
    /// the worker's and Redis's half. The rows of the statement in flight are received on a
    /// helper thread meanwhile: Postgres never waits for the worker to read them, so a slow batch
    /// (a SCAN over a large keyspace, a stalled Redis) cannot get the statement cancelled by
    /// statement_timeout and the drain redo the same batches forever. An event is still
    /// acknowledged only after Redis confirmed it, and only one statement is ever in flight.
    private func drainPass() -> Bool {
        guard let eventLog else { return false }
        /// Sends the statement that acknowledges `batches` and reads the batch after `after`.
        func fetch(after: Int64, acknowledging batches: [Deleted]) -> PendingRows? {
            do {
                return try eventLog.fetchPending(after: after, limit: config.batchSize, acknowledging: batches.flatMap(\.ids))
            } catch {
                postgresFailed(error)
                return nil
            }
        }
        func received(_ pending: PendingRows) -> PGRows? {
            do {
                let rows = try pending.wait()
                postgresRoundTripSucceeded()
                return rows
            } catch {
                postgresFailed(error)
                return nil
            }
        }
        guard let first = fetch(after: 0, acknowledging: []), var rows = received(first) else { return false }
        // Deleted in Redis, not yet acknowledged: goes out with the next statement.
        var confirmed: Deleted? = nil
        defer {
            // Stopping (or a failure) in the middle: acknowledge what Redis already confirmed.
            if let last = confirmed, acknowledge(last.ids) { record(last) }
        }
        while !stopping {
            let after = rows.rows.last?[0].flatMap { Int64($0) } ?? 0
            if rows.rows.count >= config.batchSize {
                // In flight: the acknowledgement of the batch before this one, and the next batch.
                let acknowledging = confirmed.map { [$0] } ?? []
                confirmed = nil
                guard let next = fetch(after: after, acknowledging: acknowledging) else { return false }
                let deleted = delete(EventLog.decode(rows))
                // Waited for even if Redis failed: the connection is needed again on the way out.
                guard let nextRows = received(next) else { return false }
                acknowledging.forEach(record)
                guard let deleted else { return false }
                confirmed = deleted
                rows = nextRows
                continue
            }
            // The last, partial batch: acknowledged in one statement with the one before it.
            let fetched = EventLog.decode(rows)
            let deleted = fetched.rowCount > 0 ? delete(fetched) : nil
            if fetched.rowCount == 0 { redisRoundTripSucceeded() }
            if fetched.rowCount > 0 && deleted == nil { return false }
            let last = [confirmed, deleted].compactMap { $0 }
            confirmed = nil
            if !last.isEmpty {
                guard acknowledge(last.flatMap(\.ids)) else { return false }
                last.forEach(record)
            }
            needsDrain = false
            statistics.update { $0.initialDrainDone = true }
            return true
        }
        return false
    }

    /// Acknowledges the last poll's events, which Redis confirmed but the next poll has not
    /// acknowledged yet. Returns false if Postgres failed (they are redone after reconnecting).
    private func acknowledgePolled() -> Bool {
        guard let deleted = polling.unacknowledged else { return true }
        polling.unacknowledged = nil
        guard acknowledge(deleted.ids) else { return false }
        record(deleted)
        return true
    }

    /// Deletes the keys of a batch in one round trip and then acknowledges it.
    /// Returns false if Redis or Postgres failed (the batch stays pending and is redone).
    private func invalidate(_ fetched: EventLog.Fetched) -> Bool {
        guard let deleted = delete(fetched), acknowledge(deleted.ids) else { return false }
        record(deleted)
        return true
    }

    /// Deletes the keys of events the private channel carried, then acknowledges those the log
    /// holds exactly as notified (id, kind and payload), in one statement that also returns their
    /// lag start. Any other id (a forgery, should the channel's name have leaked, or an event
    /// processed meanwhile) is not acknowledged but named, so it is read from the log like a
    /// public notification's: a notification can never stand in for its event in the log.
    private func invalidateNotified(_ notified: [(event: InvalidationEvent, payload: String)]) -> Bool {
        guard let eventLog else { return false }
        var fetched = EventLog.Fetched()
        fetched.events = notified.map(\.event)
        guard var deleted = delete(fetched) else { return false }
        let starts: [Int64: Int64]
        do {
            starts = try eventLog.acknowledgeNotified(notified.map { ($0.event.id, $0.event.kind.rawValue, $0.payload) })
        } catch {
            // Deleted, not acknowledged: redone after reconnecting (at-least-once).
            postgresFailed(error)
            return false
        }
        postgresRoundTripSucceeded()
        var confirmed: [InvalidationEvent] = []
        var rendered: [(keys: Int, patterns: Int)] = []
        confirmed.reserveCapacity(starts.count)
        for (index, var event) in fetched.events.enumerated() {
            if let start = starts[event.id] {
                event.startMicros = start
                confirmed.append(event)
                // Per-event counts exist only at debug level; they must stay beside their events.
                if index < deleted.rendered.count { rendered.append(deleted.rendered[index]) }
            } else {
                namedIDs.insert(event.id)
            }
        }
        deleted.rendered = rendered
        deleted.fetched.events = confirmed
        deleted.fromNotifications = true
        record(deleted)
        return true
    }

    /// A batch whose keys Redis confirmed gone, waiting to be acknowledged and recorded.
    private struct Deleted {
        var fetched: EventLog.Fetched
        var plan: InvalidationPlan
        var rendered: [(keys: Int, patterns: Int)]
        var keysByKind: [EventKind: Int]
        var outcome: RedisInvalidator.Outcome
        var confirmedAt: Int64
        /// Everything to acknowledge: the events, and rows that could not be decoded.
        var ids: [Int64]
        /// Taken from the private channel's notifications (counted apart in the statistics).
        var fromNotifications = false
    }

    /// Deletes the keys of a batch in one pipelined round trip. nil if Redis failed (nothing is
    /// acknowledged then: the events stay pending and are retried after reconnecting).
    private func delete(_ fetched: EventLog.Fetched) -> Deleted? {
        guard let invalidator else { return nil }
        var plan = InvalidationPlan()
        // Six keys per event is the most any default rule renders.
        plan.reserveCapacity(keys: fetched.events.count * 6)
        // Per-event key counts only feed the debug line; the plan is built once either way.
        var rendered: [(keys: Int, patterns: Int)] = []
        if debugEnabled { rendered.reserveCapacity(fetched.events.count) }
        var keysByKind: [EventKind: Int] = [:]
        for event in fetched.events {
            let counts = config.rules.apply(event, prefix: config.keyPrefix, to: &plan)
            keysByKind[event.kind, default: 0] += counts.keys
            if debugEnabled { rendered.append(counts) }
        }
        let outcome: RedisInvalidator.Outcome
        do {
            outcome = try invalidator.execute(plan)
        } catch {
            redisFailed(error)
            return nil
        }
        let confirmedAt = wallClockNanoseconds()
        redisRoundTripSucceeded()
        var ids = fetched.events.map(\.id)
        for big in fetched.oversized {
            logger.error("event field too large to be a cache key; its other keys were deleted", metadata: [
                LogKey.event: "\(big.id)", LogKey.kind: "\(big.kind)", LogKey.reason: "\(big.fields.joined(separator: ","))",
                LogKey.error: "over \(EventPayload.maximumFieldBytes) bytes"])
        }
        for bad in fetched.undecodable {
            logger.error("event payload cannot be decoded; acknowledged without deleting anything", metadata: [
                LogKey.event: "\(bad.id)", LogKey.kind: "\(bad.kind)", LogKey.error: "\(bad.error)"])
            ids.append(bad.id)
            namedIDs.remove(bad.id)
            recentIDs.insert(bad.id)
        }
        return Deleted(fetched: fetched, plan: plan, rendered: rendered, keysByKind: keysByKind, outcome: outcome, confirmedAt: confirmedAt, ids: ids)
    }

    private func acknowledge(_ ids: [Int64]) -> Bool {
        guard let eventLog else { return false }
        do {
            try eventLog.acknowledge(ids)
            return true
        } catch {
            // Deleted but not acknowledged: the events come back after reconnecting and are
            // deleted again, which is harmless (at-least-once, deletions are idempotent).
            postgresFailed(error)
            return false
        }
    }

    private func record(_ deleted: Deleted) {
        let fetched = deleted.fetched, plan = deleted.plan, rendered = deleted.rendered
        let keysByKind = deleted.keysByKind, outcome = deleted.outcome, confirmedAt = deleted.confirmedAt
        var byKind: [EventKind: UInt64] = [:]
        var slow = 0
        if let last = fetched.events.last { highestProcessedID = max(highestProcessedID, last.id) }
        windowEvents += fetched.events.count
        for (index, event) in fetched.events.enumerated() {
            // Overflow-safe: a start point is data from the log or a notification.
            let (startNanoseconds, overflow) = event.startMicros.multipliedReportingOverflow(by: 1000)
            let lag = overflow ? 0 : confirmedAt.subtractingReportingOverflow(startNanoseconds).partialValue
            interval.record(lagNanoseconds: lag)
            metrics?.observe(lagNanoseconds: lag)
            byKind[event.kind, default: 0] += 1
            namedIDs.remove(event.id)
            recentIDs.insert(event.id)
            if lag > Int64(config.slowThresholdNanoseconds) {
                slow += 1
                slowThisInterval += 1
                // One line per slow event, but a drained backlog of 100,000 old events must not
                // become 100,000 warnings: past the first few per interval, the summary counts them.
                if slowThisInterval == Self.slowWarningsPerInterval + 1 {
                    logger.warning("more slow invalidations this interval; the lag summary counts them (slow_events)")
                }
                guard slowThisInterval <= Self.slowWarningsPerInterval else { continue }
                logger.warning("slow invalidation", metadata: [
                    LogKey.event: "\(event.id)", LogKey.kind: "\(event.kind.rawValue)",
                    LogKey.lagMilliseconds: "\(formatMilliseconds(UInt64(lag)))",
                    LogKey.thresholdMilliseconds: "\(formatMilliseconds(config.slowThresholdNanoseconds))"])
            }
            if debugEnabled {
                logger.debug("event invalidated", metadata: [
                    LogKey.event: "\(event.id)", LogKey.kind: "\(event.kind.rawValue)",
                    LogKey.keys: "\(rendered[index].keys)", LogKey.patterns: "\(rendered[index].patterns)",
                    LogKey.lagMilliseconds: "\(formatMilliseconds(UInt64(max(0, lag))))"])
            }
        }
        interval.add(keys: plan.keyBytes.count)
        metrics?.observe(batchEvents: fetched.events.count)
        statistics.update { s in
            s.eventsProcessed += UInt64(fetched.events.count)
            for (kind, count) in byKind { s.eventsByKind[kind.rawValue, default: 0] += count }
            for (kind, count) in keysByKind { s.keysByKind[kind.rawValue, default: 0] += UInt64(count) }
            s.keysDeleted += UInt64(plan.keyBytes.count)
            s.keysRemoved += UInt64(max(0, outcome.removed))
            s.patternsScanned += UInt64(outcome.scanned)
            s.undecodableEvents += UInt64(fetched.undecodable.count)
            s.batches += 1
            s.slowEvents += UInt64(slow)
            if deleted.fromNotifications { s.eventsFromNotifications += UInt64(fetched.events.count) }
        }
    }

    /// Of ids named by notifications but not pending, those the log never held are forged
    /// (NOTIFY is unauthenticated) and deleted nothing: logged and counted.
    private func reportForged(among ids: [Int64]) {
        guard !ids.isEmpty, let eventLog else { return }
        do {
            let missing = try eventLog.missing(ids)
            guard !missing.isEmpty else { return }
            statistics.update { $0.forgedNotifications += UInt64(missing.count) }
            logger.warning("notification named an event the log does not hold; nothing deleted", metadata: [
                LogKey.event: "\(missing.prefix(10).map(String.init).joined(separator: ","))\(missing.count > 10 ? ",…" : "")",
                LogKey.events: "\(missing.count)"])
        } catch {
            postgresFailed(error)
        }
    }

    // MARK: Pace

    private func pacing() {
        guard let eventLog else { return }
        let now = monotonicNanoseconds()
        do {
            switch polling.pace {
            case .notified:
                // Busy: enough events within one window. Either way a full window starts over.
                let busy = windowEvents >= config.pollingEntryEvents
                if busy || now &- windowStart > config.pollingWindowNanoseconds {
                    windowStart = now
                    windowEvents = 0
                }
                if busy { try startPolling(eventLog, now: now) }
            case .polling, .settling:
                guard now >= polling.nextPollAt else { return }
                let acknowledged = polling.unacknowledged
                polling.unacknowledged = nil
                let fetched = try eventLog.poll(after: polling.cursor, skipped: Array(polling.skippedIDs.keys), limit: config.batchSize,
                                                acknowledging: acknowledged?.ids ?? [])
                postgresRoundTripSucceeded()
                if let acknowledged { record(acknowledged) }
                // At once again while polls find events. Spacing them 1 ms apart halves the CPU
                // the worker and its backend spend per event at 2,000 events/s (each poll is a
                // round trip: mostly system calls and context switches), but adds ~0.4 ms of lag
                // and left the bot's throughput under saturating load unchanged (0.5, 1 and 2 ms
                // tried): lag first.
                let found = fetched.rowCount > 0
                polling.nextPollAt = found ? now : now &+ config.pollIntervalNanoseconds
                if found {
                    // Acknowledged by the next poll's statement (or before anything else reads
                    // the log: acknowledgePolled).
                    guard let deleted = delete(fetched) else { return }
                    polling.unacknowledged = deleted
                    noteSkipped(fetched, now: now)
                    polling.lastNewEventAt = now
                }
                if now >= polling.nextFullScanAt {
                    needsDrain = true
                    polling.nextFullScanAt = now &+ config.pollingFullScanNanoseconds
                    // The full scan about to run finds whatever is still skipped.
                    polling.skippedIDs = polling.skippedIDs.filter { now &- $0.value < config.pollingFullScanNanoseconds }
                }
                if polling.pace == .polling {
                    // A quiet log, or a stream too slow to be worth polling for: notifications
                    // cost the bot nothing then, and deliver each event sooner than a poll (with
                    // 0004 the event itself). Without the rate test, a steady 200/s after a burst
                    // never leaves the 50 ms gap, and the worker polled on at 4x the CPU per event.
                    var slow = false
                    if now &- windowStart >= config.pollingWindowNanoseconds {
                        slow = windowEvents < config.pollingExitEvents
                        windowStart = now
                        windowEvents = 0
                    }
                    if slow || now &- polling.lastNewEventAt > config.pollingExitNanoseconds {
                        try eventLog.stopPolling()
                        polling.pace = .settling
                        polling.leftForRate = slow
                    }
                }
                if polling.pace == .settling {
                    if found && !polling.leftForRate {
                        // Busy again before it settled.
                        if try eventLog.startPolling() { polling.pace = .polling }
                    } else if try eventLog.noQuietWriterInFlight() {
                        // Every writer that skipped its NOTIFY has ended: one full read finds
                        // what they committed, and from now on writers notify.
                        polling.pace = .notified
                        needsDrain = true
                        windowStart = now
                        windowEvents = 0
                        if debugEnabled { logger.debug("notified again: writers NOTIFY") }
                    }
                }
            }
        } catch {
            postgresFailed(error)
        }
    }

    /// Moves the cursor past what a poll returned and remembers the ids it jumped over.
    private func noteSkipped(_ fetched: EventLog.Fetched, now: UInt64) {
        var seen = Set<Int64>(minimumCapacity: fetched.rowCount)
        for event in fetched.events { seen.insert(event.id); polling.skippedIDs.removeValue(forKey: event.id) }
        for bad in fetched.undecodable { seen.insert(bad.id); polling.skippedIDs.removeValue(forKey: bad.id) }
        let newCursor = max(polling.cursor, fetched.maxID)
        // A jump wider than the bound (a mass rollback) is left to the full scan.
        if newCursor > polling.cursor && newCursor - polling.cursor <= Int64(Self.maximumSkippedIDs) {
            for id in (polling.cursor + 1)...newCursor where !seen.contains(id) && polling.skippedIDs.count < Self.maximumSkippedIDs {
                polling.skippedIDs[id] = now
            }
        }
        polling.cursor = newCursor
    }

    private func startPolling(_ eventLog: EventLog, now: UInt64) throws(PostgresError) {
        // Fails while a notifying writer still holds W shared: stay notified, try again later.
        guard try eventLog.startPolling() else { return }
        polling.pace = .polling
        // Every event inserted from now on has a higher id than any already processed; those
        // inserted before W was taken were notified.
        polling.cursor = max(polling.cursor, highestProcessedID)
        polling.skippedIDs.removeAll()
        polling.lastNewEventAt = now
        polling.nextFullScanAt = now &+ config.pollingFullScanNanoseconds
        windowStart = now
        windowEvents = 0
        polling.leftForRate = false
        statistics.update { $0.pollingEntries += 1 }
        if debugEnabled { logger.debug("polling the log: writers skip their NOTIFY") }
    }

    // MARK: Maintenance

    /// A migration newer than this release means a DBA upgraded the schema before the worker. The
    /// worker goes on: stopping would stop every invalidation, while what it does know still works
    /// (events of kinds it does not know stay pending for a newer worker). But it may not follow
    /// what the newer migration changed (0005 moved the pending events to a queue: a worker older
    /// than it would have taken every event since for unprocessed), so it says so, once per
    /// version, and `schema_version` above `schema_version_supported` shows it in the metrics.
    private func checkSchemaVersion(_ postgres: PGConnection) throws(PostgresError) {
        let version = try EventLog.schemaVersion(on: postgres)
        statistics.update { $0.schemaVersion = version ?? -1 }
        guard let version, version > HealthCheck.latestSchemaVersion, reportedNewerSchema != version else { return }
        reportedNewerSchema = version
        logger.error("the database's schema is newer than this worker knows; upgrade cache-invalidator to the release that ships that migration. Working on meanwhile: events of kinds it does not know stay pending, but it may not follow what the migration changed", metadata: [
            LogKey.version: "\(version)", "supported_version": "\(HealthCheck.latestSchemaVersion)"])
    }

    /// Verifies the triggers (a DBA who recreates or alters a table can silently drop them, and
    /// then that table's writes invalidate nothing) and prunes processed events past retention.
    private func maintain() {
        nextMaintenanceAt = monotonicNanoseconds() + config.maintenanceIntervalNanoseconds
        guard let postgres, let eventLog else { return }
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
            if !triggerCheckDenied {
                triggerCheckDenied = true
                logger.warning("cannot verify the triggers: the worker's role may not read cache_invalidation.expected_triggers (see deploy/postgres/roles.sql)", metadata: [LogKey.error: "\(error)"])
            }
        } catch {
            postgresFailed(error)
            return
        }
        guard config.retentionSeconds > 0, !pruneDenied else { return }
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
                if hasWork && redis != nil { processPending() }
                guard self.eventLog != nil else { return }
            }
        } catch where error.sqlState == "42501" {
            pruneDenied = true
            logger.warning("cannot prune processed events: the worker's role may not DELETE from cache_invalidation.events (see deploy/postgres/roles.sql, or set --retention 0); pruning is off until restart", metadata: [LogKey.error: "\(error)"])
        } catch where error.sqlState == "57014" || error.sqlState == "55P03" {
            // Timed out or locked out: the connection is fine, try again next round.
            logger.warning("pruning processed events timed out; will try again", metadata: [LogKey.error: "\(error)"])
        } catch {
            postgresFailed(error)
        }
    }

    // MARK: Waiting and reporting

    private func waitForWork() {
        // PQexec reads everything up to ReadyForQuery, so notifications that arrived during the
        // last query are already in libpq's queue and the socket is empty: poll would not wake.
        handleBufferedNotifications()
        // Work still pending (a full batch, or Redis just returned): do not sleep.
        if active && hasWork && postgres != nil && redis != nil { return }
        let now = monotonicNanoseconds()
        var deadline = nextSummaryAt
        if postgres != nil {
            deadline = min(deadline, heartbeatDueAt, active ? nextMaintenanceAt : nextLeadAttemptAt)
            if active && polling.pace != .notified && redis != nil { deadline = min(deadline, polling.nextPollAt) }
        } else {
            deadline = min(deadline, postgresPolicy.retryAt)
        }
        if redis == nil { deadline = min(deadline, redisPolicy.retryAt) }
        var descriptors: [Int32] = []
        if let postgres, postgres.socket >= 0 { descriptors.append(postgres.socket) }
        _ = waitReadable(descriptors, wake: wake, timeoutNanoseconds: deadline > now ? deadline - now : 0)
    }

    private func logSummary() {
        nextSummaryAt = monotonicNanoseconds() + config.summaryIntervalNanoseconds
        // A safety sweep: nothing should be pending that no notification named, but the log,
        // not the notifications, is the source of truth.
        needsDrain = true
        var metadata: Logger.Metadata = [:]
        if let eventLog {
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
                if active { warnAboutGrowth(backlog) }
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
        if let redis {
            // An idle connection can be dead without anyone noticing; find out now, not at the next trade.
            do { try ping(redis) } catch { redisFailed(error) }
        }
        if metrics != nil { readRedisInfo() }
        let summary = interval.summary
        metadata[LogKey.events] = "\(summary.events)"
        metadata[LogKey.keys] = "\(summary.keys)"
        metadata[LogKey.p50] = "\(formatMilliseconds(summary.p50Nanoseconds))"
        metadata[LogKey.p99] = "\(formatMilliseconds(summary.p99Nanoseconds))"
        metadata[LogKey.max] = "\(formatMilliseconds(summary.maxNanoseconds))"
        metadata[LogKey.slowEvents] = "\(slowThisInterval)"
        slowThisInterval = 0
        metadata[LogKey.role] = "\(active ? "active" : (postgres != nil ? "standby" : "none"))"
        if active && quietNotify { metadata[LogKey.pace] = "\(polling.pace.rawValue)" }
        metadata[LogKey.postgres] = "\(postgres != nil ? "up" : "down")"
        metadata[LogKey.redis] = "\(redis != nil ? "up" : "down")"
        logger.info("lag summary", metadata: metadata)
        interval.reset()
    }

    /// The cache's own health figures for /metrics (hit ratio, memory, evictions).
    private func readRedisInfo() {
        guard let redis, redisInfoAllowed else { return }
        do {
            let reply = try redis.command([Array("INFO".utf8)])
            switch reply {
            case .bulk(let bytes):
                let info = RedisInfo.parse(String(decoding: bytes, as: UTF8.self))
                statistics.update { $0.redisInfo = info }
            case .error(let message):
                redisInfoAllowed = false
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
            logger.warning("event backlog over its threshold: invalidations are late. Is Redis reachable? See README, runbook: Backlog growing", metadata: [
                LogKey.backlog: "\(backlog.pending)", LogKey.oldestAgeSeconds: "\(String(format: "%.1f", backlog.oldestAgeSeconds))",
                LogKey.threshold: "\(config.backlogWarning) events or \(String(format: "%g", config.oldestAgeWarningSeconds)) s"])
        }
        if backlog.queueUsage > config.queueUsageWarning {
            logger.warning("the server's notification queue is filling; when it is full the bot's commits fail. Find the session that LISTENs without reading (pg_stat_activity). See README, runbook: Notification queue filling", metadata: [
                LogKey.queueUsage: "\(String(format: "%.4f", backlog.queueUsage))",
                LogKey.threshold: "\(String(format: "%g", config.queueUsageWarning))"])
        }
    }

    private func formatSeconds(_ nanoseconds: UInt64) -> String {
        String(format: "%.1f", Double(nanoseconds) / 1e9)
    }
}

/// A bounded set of recently processed event ids (oldest forgotten first).
struct RecentIDs {
    private var ring: [Int64]
    private var set: Set<Int64> = []
    private var next = 0

    init(capacity: Int) {
        ring = Array(repeating: 0, count: capacity)
        set.reserveCapacity(capacity)
    }

    func contains(_ id: Int64) -> Bool { set.contains(id) }

    mutating func insert(_ id: Int64) {
        guard !set.contains(id) else { return }
        let evicted = ring[next]
        if evicted != 0 { set.remove(evicted) }
        ring[next] = id
        set.insert(id)
        next = (next + 1) % ring.count
    }
}
