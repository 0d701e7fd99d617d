import Foundation
import InvalidationCore
import Logging
import PostgresClient
import RedisClient

// Connections and leadership. ReconnectPolicy decides when to retry and what is worth a log
// line; these functions only open connections, execute what the session needs, and log.
extension Worker {
    /// Opens a session and verifies it before using it: a primary (a standby cannot LISTEN or
    /// acknowledge), and one that hears notifications (a pooler in transaction mode passes
    /// none). A refused session is closed and looked for again with backoff.
    func connectPostgres() {
        let identity: PrimaryIdentity?
        do {
            let connection = try PGConnection(conninfo: config.databaseURL)
            let server = try PostgresFitness.identify(connection)
            if server.inRecovery { throw PostgresUnfit.standby(server: PostgresFitness.reached(connection)) }
            _ = try PostgresFitness.proveListen(on: connection, conninfo: config.databaseURL, timeoutSeconds: config.listenProbeTimeoutSeconds)
            let log = try EventLog(connection: connection, channel: config.channel, statementTimeoutMilliseconds: config.statementTimeoutMilliseconds)
            session = Session(connection: PostgresSide(log: log), now: monotonicNanoseconds())
            identity = server.identity
            reporting.postgresUnfit = nil
            postgresPolicy.opened()
            statistics.update { $0.postgresConnects += 1 }
            logger.debug("postgres connection opened", metadata: [LogKey.target: "\(connection.target)"])
        } catch let error as PostgresError {
            postgresFailed(error)
            return
        } catch let unfit as PostgresUnfit {
            postgresRefused(unfit)
            return
        } catch {
            postgresFailed(PostgresError(code: .connectionFailed, message: "\(error)"))
            return
        }
        if let identity { primaryReached(identity) }
        tryToLead()
    }

    /// Another primary than the last one (a promoted standby, another cluster) may lack the last
    /// writes this worker saw committed: their keys are deleted again (`FailoverMemory`).
    private func primaryReached(_ identity: PrimaryIdentity) {
        let change = primary.connected(to: identity)
        guard change.mayHaveLostWrites else { return }
        let what: String
        switch change {
        case .newTimeline(let from, let to): what = "postgres is on a new timeline (\(from) to \(to)): a standby was promoted"
        case .otherSystem: what = "postgres is another cluster than before (its system identifier changed)"
        case .first, .same: return
        }
        statistics.update { $0.primaryChanges += 1 }
        startReplay("\(what); it may lack the last writes the previous primary committed", metadata: ["primary": "\(identity)"])
    }

    /// The session reached a server the worker cannot use: said once per outage, then looked for
    /// again with backoff (a failover in progress ends this by itself).
    private func postgresRefused(_ unfit: PostgresUnfit) {
        reporting.postgresUnfit = unfit
        statistics.update { $0.postgresErrors += 1 }
        report(postgresPolicy.failed(now: monotonicNanoseconds(), connectionDropped: false),
               server: "postgres", what: "cannot use this postgres session", consequence: "events wait in the log", error: "\(unfit)")
    }

    /// Takes the leader lock if no other worker holds it, then LISTENs; the new active session
    /// drains the log and settles (see `PaceMachine.init`). A standby does not LISTEN: a
    /// listener that does not read would hold back the server's notification queue, and a full
    /// queue fails the bot's commits.
    func tryToLead() {
        guard let log = session?.connection.log, session?.isActive == false else { return }
        let active: ActiveSession
        do {
            guard try takeLeaderLock(log) else {
                postgresRoundTripSucceeded()
                return
            }
            // LISTEN before draining: an event committed between the two is then either in the
            // drain or announced by a notification, never in neither.
            try log.listen()
            let quietNotify = try log.hasQuietNotify()
            let privateChannel = try listenPrivately(log)
            if quietNotify { try endStalePollingHolders(log) }
            try seedOwedSecondDeletions(log)
            active = ActiveSession(privateChannel: privateChannel, quietNotify: quietNotify ? paceSettings : nil,
                                   workBound: max(4 * config.batchSize, 10_000), now: monotonicNanoseconds())
        } catch {
            postgresFailed(error)
            return
        }
        session?.active = active
        statistics.update { $0.takeovers += 1 }
        postgresRoundTripSucceeded()
    }

    /// Runs the election (`LeaderElection`) against the leader lock: true when this session
    /// leads; otherwise the session stands by until the time the election set.
    private func takeLeaderLock(_ log: EventLog) throws(PostgresError) -> Bool {
        var step = election.lockAnswered(try log.tryLead(), now: monotonicNanoseconds())
        while true {
            switch step {
            case .lead(let announceTakeover):
                if announceTakeover { logger.notice("took over as the active worker: listening and draining the log") }
                return true
            case .standBy(let nextAttemptAt, let announce):
                session?.nextLeadAttemptAt = nextAttemptAt
                if announce {
                    logger.info("standing by: another worker is active (it holds the leader lock); taking over when its session ends", metadata: [
                        LogKey.retryMilliseconds: "\(config.standbyPollNanoseconds / 1_000_000)"])
                }
                return false
            case .endAbandonedSession(let pid):
                let ended = try log.terminateAbandonedSession(pid: pid)
                if ended {
                    logger.warning("ended this worker's previous Postgres session, which the server still kept (half-open connection); taking the lead back", metadata: [LogKey.backendPID: "\(pid)"])
                }
                step = election.ended(ended, now: monotonicNanoseconds())
            case .retryLock(let pause):
                usleep(useconds_t(pause / 1_000))
                step = election.lockAnswered(try log.tryLead(), now: monotonicNanoseconds())
            }
        }
    }

    /// The private channel's name (0004), when this session may LISTEN to it.
    private func listenPrivately(_ log: EventLog) throws(PostgresError) -> String? {
        do {
            switch try log.listenPrivately() {
            case .listening(let name):
                return name
            case .notInstalled:
                return nil
            case .notGranted:
                if !reporting.warnedPrivateChannelNotGranted {
                    reporting.warnedPrivateChannelNotGranted = true
                    logger.warning("cannot listen on the private channel: every event is read from the log after its notification, one more round trip of lag; GRANT EXECUTE ON FUNCTION cache_invalidation.listen_privately() TO this role (deploy/postgres/roles.sql)")
                }
                return nil
            }
        } catch where error.code == .queryFailed {
            // A fast path lost, nothing else: the public channel still names every event.
            logger.error("cannot listen on the private channel; every event is read from the log after its notification (one more round trip of lag)", metadata: [LogKey.error: "\(error)"])
            return nil
        }
    }

    static let maximumSeededIDs = 100_000

    /// Whoever led before may have deleted keys whose second deletion is still owed: read from
    /// the log what it acknowledged within the window before it stopped.
    private func seedOwedSecondDeletions(_ log: EventLog) throws(PostgresError) {
        guard recent.isEnabled else { return }
        do {
            guard var range = try log.recentlyAcknowledged(withinSeconds: Double(recent.delay) / 1e9 + 1) else { return }
            // A late commit's low id, or a drained backlog, can widen the range to far more than
            // a window's worth: the newest ids are the ones a racing fill can follow.
            if range.count > Self.maximumSeededIDs {
                logger.warning("the second deletions owed by the previous leader span more ids than one takeover deletes again; only the newest are", metadata: [
                    LogKey.events: "\(range.count)", "limit": "\(Self.maximumSeededIDs)"])
                range = (range.upperBound - Int64(Self.maximumSeededIDs) + 1)...range.upperBound
            }
            recent.seed(range, now: monotonicNanoseconds())
        } catch where error.code == .queryFailed {
            // Not a reason to stop invalidating: only the previous leader's owed second
            // deletions are lost (this worker's own are kept in memory).
            logger.warning("cannot read what the previous leader acknowledged; second deletions it still owed are skipped (a role without SELECT on cache_invalidation.acknowledged: re-apply deploy/postgres/roles.sql)", metadata: [LogKey.error: "\(error)"])
        }
    }

    /// A previous leader that vanished while polling may still hold W: writers skip their NOTIFY
    /// for it until it goes.
    private func endStalePollingHolders(_ log: EventLog) throws(PostgresError) {
        do {
            let ended = try log.endStalePollingHolders()
            if ended > 0 {
                logger.warning("ended a previous worker's session that still held the polling lock (writers were skipping their NOTIFY for it)", metadata: [LogKey.events: "\(ended)"])
            }
        } catch where error.sqlState == "42501" {
            logger.warning("a session of another role holds the polling lock and cannot be ended by this one; writers skip their NOTIFY until it goes (the sweep every SUMMARY_INTERVAL still finds every event)", metadata: [LogKey.error: "\(error)"])
        }
    }

    /// A connection can stop delivering without any error (a half-open TCP connection, a frozen
    /// middlebox): LISTEN then simply hears nothing. A query that must answer within a deadline
    /// is the only proof of life, so an idle connection gets one.
    func heartbeat() {
        guard let log = session?.connection.log else { return }
        do {
            try log.heartbeat(timeoutSeconds: config.heartbeatTimeoutSeconds)
            postgresRoundTripSucceeded()
        } catch {
            statistics.update { $0.heartbeatFailures += 1 }
            postgresFailed(error)
        }
    }

    func postgresRoundTripSucceeded() {
        let now = monotonicNanoseconds()
        session?.lastAnswerAt = now
        guard !postgresPolicy.verified, let session else { return }
        if case .cameUp(let failures, let downFor)? = postgresPolicy.roundTripSucceeded(now: now) {
            var metadata: Logger.Metadata = [LogKey.target: "\(session.connection.log.connection.target)", LogKey.role: "\(session.isActive ? "active" : "standby")",
                                             LogKey.lagStart: "\(session.connection.log.commitTimestamps ? "commit_timestamp" : "trigger_write_time")"]
            addOutage(&metadata, failures: failures, downFor: downFor)
            logger.info(session.isActive ? "postgres connected, listening" : "postgres connected, standing by", metadata: metadata)
        }
    }

    /// Forgets the session (one assignment: the leader lock, W, the pace and the pending work
    /// went with it on the server too); the next turn of the loop connects again. The drain after
    /// reconnecting finds everything that was waiting (deletions are idempotent).
    func postgresFailed(_ error: PostgresError) {
        if let session, error.code == .connectionLost { election.connectionLost(backendPID: session.connection.log.connection.backendPID) }
        // The replay window after a failover ends when the primary was lost, never at a later
        // failed attempt: a failover that takes a minute must not age out what it may have lost.
        if session != nil { failover.prune(now: monotonicNanoseconds()) }
        session = nil
        statistics.update { $0.postgresErrors += 1 }
        let what = error.code == .queryFailed ? "postgres rejected the worker's query" : "postgres unavailable"
        report(postgresPolicy.failed(now: monotonicNanoseconds(), connectionDropped: error.code == .connectionLost),
               server: "postgres", what: what, consequence: "events wait in the log", error: "\(error)")
    }

    /// Drops the Postgres session on purpose and opens a new one at once (not a failure: no
    /// backoff, no error count).
    func reopenPostgres(reason: String) {
        logger.notice("\(reason)")
        session = nil
    }

    func report(_ action: ReconnectPolicy.FailureAction, server: String, what: String, consequence: String, error: String) {
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

    func addOutage(_ metadata: inout Logger.Metadata, failures: Int, downFor: UInt64?) {
        if failures > 0 { metadata[LogKey.attempts] = "\(failures + 1)" }
        if let downFor { metadata[LogKey.downSeconds] = "\(String(format: "%.1f", Double(downFor) / 1e9))" }
    }
}
