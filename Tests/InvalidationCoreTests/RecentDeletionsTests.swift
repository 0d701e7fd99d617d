import Testing
@testable import InvalidationCore

@Suite("RecentDeletions")
struct RecentDeletionsTests {
    static func events(_ ids: ClosedRange<Int64>) -> [InvalidationEvent] {
        ids.map { InvalidationEvent(id: $0, kind: .tradeSettled, fields: ["telegram_id": "\($0)"], startMicros: 0) }
    }

    @Test func eachBatchIsDueOneDelayAfterItsFirstDeletion() {
        var recent = RecentDeletions(delay: 1_000)
        recent.record(Self.events(1...3), now: 10)
        recent.record(Self.events(4...4), now: 500)
        #expect(recent.nextDue == 1_010)
        #expect(recent.takeDue(now: 1_009, limit: 100).isEmpty, "not before its time")
        let first = recent.takeDue(now: 1_010, limit: 100)
        #expect(first == [.init(due: 1_010, content: .events(Self.events(1...3)))])
        #expect(recent.nextDue == 1_500)
        #expect(recent.heldEvents == 1)
    }

    @Test func offRecordsNothing() {
        var recent = RecentDeletions(delay: 0)
        recent.record(Self.events(1...3), now: 10)
        recent.seed(1...100, now: 10)
        #expect(recent.isEmpty && recent.nextDue == nil && !recent.isEnabled)
    }

    @Test func aRoundTakesEntriesUntilItsLimit() {
        var recent = RecentDeletions(delay: 1)
        for start in stride(from: Int64(1), through: 91, by: 10) { recent.record(Self.events(start...(start + 9)), now: 0) }
        #expect(recent.takeDue(now: 5, limit: 25).count == 3, "10 + 10 + 10 events: the third reaches the limit")
        #expect(recent.count == 7)
        #expect(recent.takeDue(now: 5, limit: 1_000).count == 7)
        #expect(recent.isEmpty && recent.heldEvents == 0)
    }

    /// Bounded memory, nothing dropped: past the bound the oldest entries keep only their range.
    @Test func pastTheBoundTheOldestBecomeRanges() {
        var recent = RecentDeletions(delay: 1, eventBound: 15)
        recent.record(Self.events(1...10), now: 0)
        recent.record(Self.events(11...20), now: 1)
        #expect(recent.heldEvents == 10)
        // Ids are paged from the log: a round ends with them.
        #expect(recent.takeDue(now: 10, limit: 1_000).map(\.content) == [.ranges([1...10])])
        #expect(recent.takeDue(now: 10, limit: 1_000).map(\.content) == [.events(Self.events(11...20))])
    }

    /// A new lead's debt from the log is due one delay later, in due order.
    @Test func seedsAreDueOneDelayLater() {
        var recent = RecentDeletions(delay: 100)
        recent.record(Self.events(1...2), now: 50)
        recent.seed(1...500, now: 0)
        #expect(recent.takeDue(now: 100, limit: 10).map(\.content) == [.ranges([1...500])], "due in order, whatever the order recorded")
        #expect(recent.takeDue(now: 150, limit: 10).map(\.content) == [.events(Self.events(1...2))])
    }

    /// A batch's ids become contiguous runs: a stray low id (a late commit) does not widen them
    /// to every id between.
    @Test func idsPastTheBoundKeepTheirRuns() {
        #expect(RecentDeletions.runs([50_003, 100, 50_001, 50_002, 50_000, 7, 8]) == [7...8, 100...100, 50_000...50_003])
        var recent = RecentDeletions(delay: 1, eventBound: 1)
        recent.record(Self.events(50_000...50_002) + Self.events(100...100), now: 0)
        recent.record(Self.events(60_000...60_000), now: 0)
        #expect(recent.takeDue(now: 5, limit: 10).map(\.content) == [.ranges([100...100, 50_000...50_002])])
    }

    @Test func whatFailedIsPutBackAndDueAtOnce() {
        var recent = RecentDeletions(delay: 10)
        recent.record(Self.events(1...4), now: 0)
        recent.record(Self.events(5...5), now: 50)
        let taken = recent.takeDue(now: 10, limit: 100)
        #expect(recent.heldEvents == 1)
        recent.putBack(taken)
        #expect(recent.heldEvents == 5)
        #expect(recent.nextDue == 10)
        #expect(recent.takeDue(now: 10, limit: 100) == taken)
    }
}
