import Testing
@testable import InvalidationCore

/// Every transition of the pace, with an injected clock (plain numbers), no servers.
@Suite("PaceMachine")
struct PaceMachineTests {
    static let ms: UInt64 = 1_000_000
    static let settings = PaceMachine.Settings(entryEvents: 40, windowNanoseconds: 100 * ms, exitNanoseconds: 50 * ms,
                                               exitEvents: 30, pollIntervalNanoseconds: ms / 5, fullScanNanoseconds: 100 * ms,
                                               maximumSkippedIDs: 100)

    /// A machine past its takeover settle: notified, window starting at `now`.
    static func notified(at now: UInt64 = 0) -> PaceMachine {
        var pace = PaceMachine(settings: settings, now: now)
        #expect(pace.tick(now: now) == .poll(after: 0, skipped: []))
        #expect(pace.polled(.init(ids: []), now: now) == (drain: false, next: .probeG))
        let settled1 = pace.gProbed(free: true, now: now)
        #expect(settled1)
        #expect(pace.pace == .notified)
        return pace
    }

    /// A machine that took W at `now` with `highest` processed.
    static func polling(at now: UInt64 = 0, highest: Int64 = 100) -> PaceMachine {
        var pace = notified(at: now)
        pace.processed(count: 40, highestID: highest)
        #expect(pace.tick(now: now) == .takeW)
        #expect(pace.wTaken(true, now: now) == nil)
        #expect(pace.pace == .polling)
        return pace
    }

    // MARK: Taking the lead

    /// A new lead cannot trust notifications: a writer that skipped its NOTIFY for the previous
    /// holder of W may still be open. It polls and waits for G before being notified.
    @Test func aNewLeadSettlesBeforeTrustingNotifications() {
        var pace = PaceMachine(settings: Self.settings, now: 0)
        #expect(pace.pace == .settling)
        #expect(pace.tick(now: 0) == .poll(after: 0, skipped: []))
        // Events found while settling after a takeover do not send it polling (no W to take).
        #expect(pace.polled(.init(ids: [1, 2, 3]), now: 0) == (drain: false, next: .probeG))
        let settled2 = pace.gProbed(free: false, now: 0)
        #expect(!settled2, "a quiet writer is still open")
        #expect(pace.pace == .settling)
        // Found ids move the cursor; the next poll is at once while polls find events.
        #expect(pace.tick(now: 0) == .poll(after: 3, skipped: []))
        #expect(pace.polled(.init(ids: []), now: 1) == (drain: false, next: .probeG))
        #expect(pace.tick(now: 1) == nil, "an empty poll waits the poll interval")
        #expect(pace.nextDeadline == 1 + Self.settings.pollIntervalNanoseconds)
        #expect(pace.tick(now: 1 + Self.ms) == .poll(after: 3, skipped: []))
        _ = pace.polled(.init(ids: []), now: 1 + Self.ms)
        let settled3 = pace.gProbed(free: true, now: 1 + Self.ms)
        #expect(settled3, "G free: read the log once, then notified")
        #expect(pace.pace == .notified)
        #expect(pace.nextDeadline == nil, "notified: nothing to do until events come")
    }

    /// A long transaction holding G keeps the worker settling: its empty polls back off to a
    /// ceiling instead of hammering the log, and an event found starts over at the fast interval.
    @Test func emptyPollsWhileSettlingBackOff() {
        var pace = PaceMachine(settings: Self.settings, now: 0)
        var now: UInt64 = 0
        var intervals: [UInt64] = []
        for _ in 0..<12 {
            #expect(pace.tick(now: now) != nil)
            _ = pace.polled(.init(ids: []), now: now)
            let settled = pace.gProbed(free: false, now: now)
            #expect(!settled)
            intervals.append(pace.nextPollAt - now)
            now = pace.nextPollAt
        }
        let fast: UInt64 = 200_000
        let expected: [UInt64] = [fast, 2 * fast, 4 * fast, 8 * fast]
        #expect(Array(intervals.prefix(4)) == expected)
        #expect(intervals.last == PaceMachine.settlingPollCeiling)
        _ = pace.tick(now: now)
        _ = pace.polled(.init(ids: [1]), now: now)
        _ = pace.tick(now: now)
        _ = pace.polled(.init(ids: []), now: now)
        #expect(pace.nextPollAt - now == Self.ms / 5, "found: fast again")
    }

    // MARK: Notified

    @Test func enoughEventsInOneWindowAskForW() {
        var pace = Self.notified()
        pace.processed(count: 39, highestID: 50)
        #expect(pace.tick(now: 10 * Self.ms) == nil)
        pace.processed(count: 1, highestID: 51)
        #expect(pace.tick(now: 20 * Self.ms) == .takeW)
        #expect(pace.tick(now: 21 * Self.ms) == nil, "no second take while the first is unanswered")
    }

    @Test func aWindowThatEndsBelowTheEntryStartsOver() {
        var pace = Self.notified()
        pace.processed(count: 39, highestID: 50)
        #expect(pace.tick(now: 101 * Self.ms) == nil)
        pace.processed(count: 1, highestID: 51)
        #expect(pace.tick(now: 102 * Self.ms) == nil, "the 39 belonged to the window that ended")
    }

    @Test func wRefusedStaysNotifiedAndTriesInALaterWindow() {
        var pace = Self.notified()
        pace.processed(count: 40, highestID: 50)
        #expect(pace.tick(now: 0) == .takeW)
        #expect(pace.wTaken(false, now: 0) == nil)
        #expect(pace.pace == .notified)
        #expect(pace.tick(now: 1) == nil, "the window started over")
        pace.processed(count: 40, highestID: 90)
        #expect(pace.tick(now: 2) == .takeW)
    }

    /// The lock is re-entrant: a W the machine did not ask for is handed back at once, so
    /// writers never skip their NOTIFY for a worker that believes it is notified.
    @Test func aWThatComesUnaskedIsReleased() {
        var pace = Self.notified()
        #expect(pace.wTaken(true, now: 0) == .releaseW)
        #expect(pace.pace == .notified)
        var polling = Self.polling()
        #expect(polling.wTaken(true, now: 0) == .releaseW)
        #expect(polling.pace == .polling)
    }

    // MARK: Polling

    @Test func pollingStartsAtTheHighestProcessedID() {
        var pace = Self.polling(highest: 100)
        #expect(pace.tick(now: 0) == .poll(after: 100, skipped: []))
        #expect(pace.polled(.init(ids: [101, 103]), now: 0) == (drain: false, next: nil))
        #expect(pace.tick(now: 0) == .poll(after: 103, skipped: [102]), "the id jumped over is asked for by key")
        _ = pace.polled(.init(ids: [102]), now: 0)
        #expect(pace.tick(now: 0) == .poll(after: 103, skipped: []), "found: forgotten")
    }

    @Test func aJumpWiderThanTheBoundIsLeftToTheFullScan() {
        var pace = Self.polling(highest: 0)
        _ = pace.tick(now: 0)
        _ = pace.polled(.init(ids: [1_000]), now: 0)
        #expect(pace.skipped.isEmpty)
        #expect(pace.cursor == 1_000)
    }

    @Test func aFullScanIsAskedForPeriodicallyAndForgetsOldSkippedIDs() {
        var pace = Self.polling(highest: 0)
        _ = pace.tick(now: 0)
        _ = pace.polled(.init(ids: [2]), now: 0)
        #expect(pace.skipped.keys.sorted() == [1])
        var now: UInt64 = 0
        var drains = 0
        while now < 100 * Self.ms {
            now += 5 * Self.ms
            pace.processed(count: 5, highestID: 2)
            _ = pace.tick(now: now)
            if pace.polled(.init(ids: [Int64(now / Self.ms) + 2]), now: now).drain { drains += 1 }
            pace.processed(count: 40, highestID: 0)
        }
        #expect(drains == 1)
        #expect(pace.skipped[1] == nil, "a skipped id older than a full scan is the scan's")
    }

    @Test func silenceLeavesPollingAndReleasesW() {
        var pace = Self.polling()
        _ = pace.tick(now: 0)
        #expect(pace.polled(.init(ids: []), now: 0) == (drain: false, next: nil))
        _ = pace.tick(now: 51 * Self.ms)
        #expect(pace.polled(.init(ids: []), now: 51 * Self.ms) == (drain: false, next: .releaseW))
        #expect(pace.pace == .settling)
        #expect(pace.wReleased(now: 51 * Self.ms) == .probeG)
        let settled4 = pace.gProbed(free: true, now: 51 * Self.ms)
        #expect(settled4)
        #expect(pace.pace == .notified)
    }

    /// A steady stream below the exit rate after a burst: leaves polling, and events found while
    /// settling do not send it back (it would flip every window).
    @Test func aSlowWindowLeavesPollingForGood() {
        var pace = Self.polling()
        var now: UInt64 = 0
        var id: Int64 = 100
        var released = false
        while !released && now < 200 * Self.ms {
            now += 10 * Self.ms
            id += 1
            _ = pace.tick(now: now)
            let step = pace.polled(.init(ids: [id]), now: now)
            pace.processed(count: 1, highestID: id)
            released = step.next == .releaseW
        }
        #expect(released && now <= 110 * Self.ms)
        #expect(pace.wReleased(now: now) == .probeG)
        let settled5 = pace.gProbed(free: false, now: now)
        #expect(!settled5)
        now += 1
        _ = pace.tick(now: now)
        #expect(pace.polled(.init(ids: [id + 1]), now: now).next == .probeG, "left for rate: no W for the next event")
    }

    /// Busy again while settling after silence: W is taken back with the cursor kept.
    @Test func busyAgainBeforeSettlingTakesWBack() {
        var pace = Self.polling()
        _ = pace.tick(now: 0)
        _ = pace.polled(.init(ids: []), now: 0)
        _ = pace.tick(now: 60 * Self.ms)
        #expect(pace.polled(.init(ids: []), now: 60 * Self.ms).next == .releaseW)
        #expect(pace.wReleased(now: 60 * Self.ms) == .probeG)
        let settled6 = pace.gProbed(free: false, now: 60 * Self.ms)
        #expect(!settled6)
        _ = pace.tick(now: 61 * Self.ms)
        #expect(pace.polled(.init(ids: [101]), now: 61 * Self.ms).next == .takeW)
        #expect(pace.wTaken(true, now: 61 * Self.ms) == nil)
        #expect(pace.pace == .polling)
        #expect(pace.cursor == 101)
    }

    /// W is held exactly while polling, over any sequence of events: a model of the lock beside
    /// the machine, driven by a seeded random walk through bursts and quiet spells.
    @Test func wIsHeldExactlyWhilePolling() {
        var pace = PaceMachine(settings: Self.settings, now: 0)
        var held = 0  // how many times this session holds W (the lock is re-entrant)
        var generator = SeededGenerator(seed: 7)
        var now: UInt64 = 0
        var id: Int64 = 0
        var busy = false
        var visits: [PaceMachine.Pace: Int] = [:]
        var settlingTakes = 0
        for step in 0..<40_000 {
            if step % 400 == 0 { busy.toggle() }
            now += generator.next() % (busy ? 2 * Self.ms : 20 * Self.ms)
            if busy && generator.next() % 2 == 0 { pace.processed(count: Int(generator.next() % 30), highestID: id) }
            var next = pace.tick(now: now)
            while let action = next {
                switch action {
                case .takeW:
                    if pace.pace == .settling { settlingTakes += 1 }
                    let taken = generator.next() % 4 != 0
                    if taken { held += 1 }
                    next = pace.wTaken(taken, now: now)
                case .releaseW:
                    held -= 1
                    next = pace.wReleased(now: now)
                case .poll:
                    let found = generator.next() % (busy ? 2 : 12) == 0
                    if found { id += 1 }
                    let result = pace.polled(.init(ids: found ? [id] : []), now: now)
                    if found { pace.processed(count: 1, highestID: id) }
                    next = result.next
                case .probeG:
                    _ = pace.gProbed(free: generator.next() % 16 == 0, now: now)
                    next = nil
                }
            }
            visits[pace.pace, default: 0] += 1
            guard held == (pace.pace == .polling ? 1 : 0) else {
                Issue.record("W held \(held) times while \(pace.pace), at step \(step)")
                return
            }
        }
        #expect(visits.count == 3 && visits.values.allSatisfy { $0 > 300 }, "the walk visits every pace: \(visits)")
        #expect(settlingTakes > 10, "W taken back while settling \(settlingTakes) times")
    }
}
