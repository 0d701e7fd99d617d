/// Whether this worker leads, as a value: the driver reports what the leader lock said and
/// executes the step returned. Kept across Postgres sessions, since what it remembers outlives
/// them: the backend of a session this worker gave up on (its server side may still hold the
/// lock), and whether ops were already told that this worker stands by.
public struct LeaderElection: Sendable, Equatable {
    public enum Step: Sendable, Equatable {
        /// End this worker's own previous session, which the server still keeps (a half-open
        /// connection it has not noticed yet); report with `ended(_:now:)`.
        case endAbandonedSession(pid: Int32)
        /// Try the lock again after `pauseNanoseconds` (the session just ended takes its lock
        /// with it a moment after the signal); report with `lockAnswered(_:now:)`.
        case retryLock(pauseNanoseconds: UInt64)
        /// Lead: LISTEN, drain, settle. `announceTakeover`: this worker had said it stood by.
        case lead(announceTakeover: Bool)
        /// Stand by until `nextAttemptAt`. `announce`: the first time, worth an info line.
        case standBy(nextAttemptAt: UInt64, announce: Bool)
    }

    public let standbyRetryNanoseconds: UInt64
    /// Retries of the lock after ending the abandoned session, and the pause between them.
    public static let retriesAfterEnding = 50
    public static let retryPauseNanoseconds: UInt64 = 20_000_000

    /// The server-side pid of a session this worker gave up on (`sessionLost`).
    public private(set) var abandonedPID: Int32?
    public private(set) var announcedStandby = false
    private var retriesLeft = 0

    public init(standbyRetryNanoseconds: UInt64) {
        self.standbyRetryNanoseconds = standbyRetryNanoseconds
    }

    /// The connection broke under this worker (not a refused query): the server may keep its
    /// session, and the lock with it, until its own keepalives notice.
    public mutating func connectionLost(backendPID: Int32) {
        abandonedPID = backendPID
    }

    /// The answer to `pg_try_advisory_lock` on the leader key (a first try, or a retry).
    public mutating func lockAnswered(_ taken: Bool, now: UInt64) -> Step {
        if taken {
            abandonedPID = nil
            retriesLeft = 0
            let announce = announcedStandby
            announcedStandby = false
            return .lead(announceTakeover: announce)
        }
        if retriesLeft > 0 {
            retriesLeft -= 1
            return .retryLock(pauseNanoseconds: Self.retryPauseNanoseconds)
        }
        if let pid = abandonedPID {
            // Tried once per loss: a pid that was not ours, or would not end, is not tried again.
            abandonedPID = nil
            return .endAbandonedSession(pid: pid)
        }
        return standBy(now: now)
    }

    /// The answer to `.endAbandonedSession`: whether that session was ended.
    public mutating func ended(_ ended: Bool, now: UInt64) -> Step {
        guard ended else { return standBy(now: now) }
        retriesLeft = Self.retriesAfterEnding - 1
        return .retryLock(pauseNanoseconds: Self.retryPauseNanoseconds)
    }

    private mutating func standBy(now: UInt64) -> Step {
        retriesLeft = 0
        let announce = !announcedStandby
        announcedStandby = true
        return .standBy(nextAttemptAt: now &+ standbyRetryNanoseconds, announce: announce)
    }
}
