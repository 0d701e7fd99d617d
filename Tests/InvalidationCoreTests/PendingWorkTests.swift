import Testing
@testable import InvalidationCore

@Suite("PendingWork and Session")
struct PendingWorkTests {
    static func carried(_ id: Int64) -> CarriedEvent {
        CarriedEvent(event: InvalidationEvent(id: id, kind: .settingsChanged, fields: ["telegram_id": "1"], startMicros: 0), payload: "{}")
    }

    @Test func aNewSessionDrainsFirst() {
        var work = PendingWork(bound: 10)
        #expect(work.needsDrain && work.hasWork)
        let ticket = work.beginDrain()
        work.drainFinished(ticket)
        #expect(!work.needsDrain && !work.hasWork)
    }

    /// A drain requested while a pass runs (a flood, Redis back, the sweep) is not erased by
    /// the pass's end: it is a later generation than the pass covers.
    @Test func aDrainRequestedDuringAPassSurvivesItsEnd() {
        var work = PendingWork(bound: 10)
        let pass = work.beginDrain()
        work.requestDrain()
        work.drainFinished(pass)
        #expect(work.needsDrain, "the request made during the pass was erased")
        let next = work.beginDrain()
        work.drainFinished(next)
        #expect(!work.needsDrain)
        // An older ticket finishing late never takes the completion backwards.
        work.requestDrain()
        let third = work.beginDrain()
        work.drainFinished(third)
        work.drainFinished(pass)
        #expect(!work.needsDrain)
    }

    @Test func namedIDsAreFetchedLowestFirstAndSettled() {
        var work = PendingWork(bound: 10)
        #expect(work.name(5) == .accepted)
        #expect(work.name(3) == .accepted)
        #expect(work.name(5) == .accepted, "a set: naming twice is one fetch")
        #expect(work.nextNamed(limit: 1) == [3])
        work.processed([3])
        #expect(work.settled([3, 5]) == [5], "5 was asked for and not processed: not pending")
        #expect(work.named.isEmpty)
        #expect(work.name(3) == .known, "processed recently: nothing to fetch")
    }

    @Test func carriedEventsAreKnownUntilTakenAndUnconfirmedOnesAreNamed() {
        var work = PendingWork(bound: 10)
        #expect(work.notify(Self.carried(7)) == .accepted)
        #expect(work.name(7) == .known, "the private channel already brought it")
        #expect(work.takeNotified(limit: 5).map(\.event.id) == [7])
        #expect(work.notified.isEmpty)
        work.unconfirmed(7)
        #expect(work.nextNamed(limit: 5) == [7], "the log did not confirm it: read it from the log")
    }

    /// Bounded memory: past the bound everything waiting is dropped for one drain.
    @Test func aFloodOverflowsIntoADrain() {
        var work = PendingWork(bound: 3)
        let ticket = work.beginDrain()
        work.drainFinished(ticket)
        for id in 1...3 { #expect(work.name(Int64(id)) == .accepted) }
        #expect(work.notify(Self.carried(4)) == .overflowed)
        #expect(work.named.isEmpty && work.notified.isEmpty)
        #expect(work.needsDrain)
        #expect(work.name(4) == .accepted, "dropped, not remembered as known")
    }

    @Test func recentIDsForgetTheOldestFirst() {
        var recent = RecentIDs(capacity: 2)
        recent.insert(1); recent.insert(2); recent.insert(2); recent.insert(3)
        #expect(!recent.contains(1) && recent.contains(2) && recent.contains(3))
    }

    // MARK: Session

    /// What a new session starts with, whatever the last one held: standing by until it leads;
    /// once active, a drain due, nothing named, maintenance due at once (and no pace without 0003).
    @Test func aNewSessionStartsWithADrainDueAndNothingElse() {
        var session: Session<Int>? = Session(connection: 1, now: 0)
        session?.active = ActiveSession(privateChannel: "p", quietNotify: .init(), workBound: 10, now: 0)
        let ticket = session!.active!.work.beginDrain()
        session?.active?.work.drainFinished(ticket)
        _ = session?.active?.work.name(9)
        session?.active?.processed(ids: [1, 2])
        session = nil
        session = Session(connection: 2, now: 5)
        #expect(session?.isActive == false)
        session?.active = ActiveSession(privateChannel: nil, quietNotify: nil, workBound: 10, now: 5)
        let active = session!.active!
        #expect(active.work.needsDrain && active.work.named.isEmpty)
        #expect(active.pace == nil, "no 0003: always notified")
        #expect(active.maintenanceAt == 5)
    }

    @Test func processedEventsReachThePaceAndTheWork() {
        var active = ActiveSession(privateChannel: nil, quietNotify: .init(entryEvents: 2), workBound: 10, now: 0)
        _ = active.work.name(4)
        active.processed(ids: [4, 3])
        #expect(active.work.named.isEmpty)
        #expect(active.pace?.highestProcessedID == 4)
    }

    // MARK: Wake-up

    @Test func theWakeUpIsTheEarliestDeadlineOfTheState() {
        let disconnected = WakeUp(session: Session<Int>?.none, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 40, redisUp: false, redisRetryAt: 30)
        #expect(disconnected.deadline == 30)
        #expect(disconnected.timeout(now: 10) == 20)
        #expect(disconnected.timeout(now: 50) == 0, "past: at once")

        var standby = Session(connection: 1, now: 0)
        standby.nextLeadAttemptAt = 25
        standby.lastAnswerAt = 50
        let waiting = WakeUp(session: standby, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 1, redisUp: true, redisRetryAt: 2)
        #expect(waiting.deadline == 25, "the retry times of connected servers do not apply")
        #expect(waiting.heartbeatAt == 60)

        var leading = Session(connection: 1, now: 0)
        leading.lastAnswerAt = 90
        leading.active = ActiveSession(privateChannel: nil, quietNotify: .init(), workBound: 10, now: 70)
        let active = WakeUp(session: leading, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 1, redisUp: true, redisRetryAt: 2)
        #expect(active.workWaiting, "a new session's drain is due")
        #expect(active.timeout(now: 0) == 0)
        let ticket = leading.active!.work.beginDrain()
        leading.active?.work.drainFinished(ticket)
        let idle = WakeUp(session: leading, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 1, redisUp: true, redisRetryAt: 2)
        #expect(!idle.workWaiting)
        #expect(idle.pollAt == 70, "settling after the takeover: the first poll is due")
        #expect(idle.deadline == 70)
        let redisDown = WakeUp(session: leading, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 1, redisUp: false, redisRetryAt: 85)
        #expect(redisDown.pollAt == nil && !redisDown.workWaiting, "no polling and no work without Redis")
        #expect(redisDown.deadline == 70, "maintenance")
    }

    /// Redis's own deadlines: a heartbeat while it is up, and a failover's replay, which needs
    /// Redis only (no session, no lead).
    @Test func redisHeartbeatAndReplayWakeTheLoop() {
        let idle = WakeUp(session: Session<Int>?.none, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 90, redisUp: true, redisRetryAt: 5,
                          redisHeartbeatAt: 40)
        #expect(idle.deadline == 40 && idle.redisRetryAt == nil)
        let down = WakeUp(session: Session<Int>?.none, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 90, redisUp: false, redisRetryAt: 50,
                          redisHeartbeatAt: 40, replayWaiting: true)
        #expect(down.redisHeartbeatAt == nil && !down.workWaiting && down.deadline == 50, "no heartbeat and no replay without Redis")
        let replay = WakeUp(session: Session<Int>?.none, summaryAt: 100, heartbeatIdleNanoseconds: 10, postgresRetryAt: 90, redisUp: true, redisRetryAt: 5,
                            replayWaiting: true)
        #expect(replay.workWaiting && replay.timeout(now: 0) == 0)
    }
}
