import Testing
@testable import InvalidationCore

@Suite("LeaderElection")
struct LeaderElectionTests {
    static let ms: UInt64 = 1_000_000

    @Test func theLockTakenLeads() {
        var election = LeaderElection(standbyRetryNanoseconds: 250 * Self.ms)
        #expect(election.lockAnswered(true, now: 0) == .lead(announceTakeover: false))
    }

    /// Standing by is said once, however many attempts; the takeover that ends it is said too.
    @Test func standingByIsAnnouncedOnceAndTheTakeoverAfterIt() {
        var election = LeaderElection(standbyRetryNanoseconds: 250 * Self.ms)
        #expect(election.lockAnswered(false, now: 0) == .standBy(nextAttemptAt: 250 * Self.ms, announce: true))
        #expect(election.lockAnswered(false, now: 250 * Self.ms) == .standBy(nextAttemptAt: 500 * Self.ms, announce: false))
        #expect(election.lockAnswered(true, now: 500 * Self.ms) == .lead(announceTakeover: true))
        #expect(election.lockAnswered(false, now: 600 * Self.ms) == .standBy(nextAttemptAt: 850 * Self.ms, announce: true), "a new stint of standing by is said again")
    }

    /// After a half-open connection the server may still keep this worker's session and its
    /// lock: that session is ended once, then the lock is retried while it goes.
    @Test func itsOwnAbandonedSessionIsEndedOnceThenTheLockRetried() {
        var election = LeaderElection(standbyRetryNanoseconds: 250 * Self.ms)
        election.connectionLost(backendPID: 4242)
        #expect(election.lockAnswered(false, now: 0) == .endAbandonedSession(pid: 4242))
        #expect(election.ended(true, now: 0) == .retryLock(pauseNanoseconds: LeaderElection.retryPauseNanoseconds))
        var retries = 1
        var step = election.lockAnswered(false, now: 1)
        while case .retryLock = step {
            retries += 1
            step = election.lockAnswered(false, now: 1)
        }
        #expect(retries == LeaderElection.retriesAfterEnding, "tried \(retries) times after ending it")
        #expect(step == .standBy(nextAttemptAt: 1 + 250 * Self.ms, announce: true))
        #expect(election.abandonedPID == nil)
        #expect(election.lockAnswered(false, now: 2) == .standBy(nextAttemptAt: 2 + 250 * Self.ms, announce: false), "not ended twice")
    }

    @Test func anAbandonedSessionThatWouldNotEndMeansStandingBy() {
        var election = LeaderElection(standbyRetryNanoseconds: 250 * Self.ms)
        election.connectionLost(backendPID: 7)
        #expect(election.lockAnswered(false, now: 0) == .endAbandonedSession(pid: 7))
        #expect(election.ended(false, now: 5) == .standBy(nextAttemptAt: 5 + 250 * Self.ms, announce: true))
    }

    @Test func theLockTakenForgetsTheAbandonedSession() {
        var election = LeaderElection(standbyRetryNanoseconds: 250 * Self.ms)
        election.connectionLost(backendPID: 9)
        #expect(election.lockAnswered(true, now: 0) == .lead(announceTakeover: false))
        #expect(election.abandonedPID == nil)
        #expect(election.lockAnswered(false, now: 1) == .standBy(nextAttemptAt: 1 + 250 * Self.ms, announce: true))
    }
}
