/// Everything that belongs to one Postgres session of the worker, from the moment it opened
/// until it is lost. The worker holds it as an optional: a lost session is `session = nil`, one
/// assignment, and with it go the leader lock, W, the pace, the named and notified events and
/// the drain bookkeeping, exactly as the server forgets them. Generic over the connection so the
/// pure core holds no socket and the transitions are tested with a stand-in.
public struct Session<Connection> {
    /// The I/O side (the worker: its event log, and a batch awaiting acknowledgement).
    public var connection: Connection
    /// The last time Postgres answered on this session: an idle one gets a heartbeat query.
    public var lastAnswerAt: UInt64
    /// While standing by: when to try the leader lock again.
    public var nextLeadAttemptAt: UInt64
    /// Holding the leader lock: LISTENing and processing. nil: standing by.
    public var active: ActiveSession?

    public init(connection: Connection, now: UInt64) {
        self.connection = connection
        self.lastAnswerAt = now
        self.nextLeadAttemptAt = now
    }

    public var isActive: Bool { active != nil }
}

/// The active worker's part of a session: what the schema gave it, its pace and its work.
public struct ActiveSession: Sendable {
    /// The private channel's name (0004) while this session LISTENs to it.
    public let privateChannel: String?
    /// The pace, with migration 0003 (quiet NOTIFY); nil without it: always notified.
    public var pace: PaceMachine?
    public var work: PendingWork
    /// When the triggers are next verified and the log pruned: at once, then periodically.
    public var maintenanceAt: UInt64

    public init(privateChannel: String?, quietNotify: PaceMachine.Settings?, workBound: Int, now: UInt64) {
        self.privateChannel = privateChannel
        self.pace = quietNotify.map { PaceMachine(settings: $0, now: now) }
        self.work = PendingWork(bound: workBound)
        self.maintenanceAt = now
    }

    /// Events were processed (any path): the pace counts them, the work forgets their ids.
    public mutating func processed(ids: [Int64]) {
        guard !ids.isEmpty else { return }
        work.processed(ids)
        pace?.processed(count: ids.count, highestID: ids.max() ?? 0)
    }
}

/// The one place that decides how long the worker may sleep: the earliest of every deadline
/// that applies in its current state, or none at all while work is waiting.
public struct WakeUp: Sendable, Equatable {
    public var summaryAt: UInt64
    /// Disconnected from Postgres: when the reconnect policy allows the next attempt.
    public var postgresRetryAt: UInt64?
    /// Connected: when an idle session gets its heartbeat.
    public var heartbeatAt: UInt64?
    /// Standing by: when to try the leader lock again.
    public var leadAttemptAt: UInt64?
    /// Active: when maintenance is due.
    public var maintenanceAt: UInt64?
    /// Active, polling or settling, Redis up: when the next poll is due.
    public var pollAt: UInt64?
    /// Disconnected from Redis: when the next attempt is allowed.
    public var redisRetryAt: UInt64?
    /// Active, Redis up: when the next round of second deletions is due.
    public var redeleteAt: UInt64?
    /// Redis up: when an idle connection gets its heartbeat (a dead master is found before the
    /// next event needs it).
    public var redisHeartbeatAt: UInt64?
    /// Work is waiting that can be done now: do not sleep.
    public var workWaiting = false

    /// The state's deadlines: what applies follows from the session alone.
    public init<C>(session: Session<C>?, summaryAt: UInt64, heartbeatIdleNanoseconds: UInt64, postgresRetryAt: UInt64, redisUp: Bool, redisRetryAt: UInt64,
                   redeleteAt: UInt64? = nil, redisHeartbeatAt: UInt64? = nil, replayWaiting: Bool = false) {
        self.summaryAt = summaryAt
        if let session {
            heartbeatAt = session.lastAnswerAt &+ heartbeatIdleNanoseconds
            if let active = session.active {
                maintenanceAt = active.maintenanceAt
                if redisUp {
                    pollAt = active.pace?.nextDeadline
                    self.redeleteAt = redeleteAt
                }
                workWaiting = redisUp && active.work.hasWork
            } else {
                leadAttemptAt = session.nextLeadAttemptAt
            }
        } else {
            self.postgresRetryAt = postgresRetryAt
        }
        if redisUp {
            self.redisHeartbeatAt = redisHeartbeatAt
            // The replay after a failover needs Redis only, whoever leads.
            if replayWaiting { workWaiting = true }
        } else {
            self.redisRetryAt = redisRetryAt
        }
    }

    /// The earliest deadline.
    public var deadline: UInt64 {
        // Computed every turn of the loop: a chain of mins, no array.
        min(summaryAt, postgresRetryAt ?? .max, heartbeatAt ?? .max, leadAttemptAt ?? .max,
            maintenanceAt ?? .max, pollAt ?? .max, min(redisRetryAt ?? .max, redeleteAt ?? .max, redisHeartbeatAt ?? .max))
    }

    /// How long to sleep from `now`: zero when work is waiting or a deadline has passed.
    public func timeout(now: UInt64) -> UInt64 {
        guard !workWaiting else { return 0 }
        let deadline = self.deadline
        return deadline > now ? deadline - now : 0
    }
}
