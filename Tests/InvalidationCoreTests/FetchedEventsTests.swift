import Testing
@testable import InvalidationCore

/// The log's rows decoded, hostile ones included: nothing is skipped silently (a row skipped
/// would come back in every fetch), nothing crashes.
@Suite("FetchedEvents")
struct FetchedEventsTests {
    @Test func aGoodRowIsAnEvent() {
        let fetched = FetchedEvents(rows: [["7", "settings_changed", #"{"telegram_id": 42}"#, "1700000000000000"]])
        #expect(fetched.events == [InvalidationEvent(id: 7, kind: .settingsChanged, fields: ["telegram_id": "42"], startMicros: 1_700_000_000_000_000)])
        #expect(fetched.rowCount == 1 && fetched.maxID == 7 && fetched.ids == [7])
    }

    @Test(arguments: [
        ["8", "no_such_kind", "{}", "0"],
        ["8", nil, "{}", "0"],
        ["8", "settings_changed", "not json", "0"],
        ["8", "settings_changed", nil, "0"],
        ["8", "settings_changed", "[1, 2]", "0"],
    ] as [[String?]])
    func anUnreadableRowIsAcknowledgedWithNothingDeleted(_ row: [String?]) {
        let fetched = FetchedEvents(rows: [row])
        #expect(fetched.events.isEmpty)
        #expect(fetched.undecodable.map(\.id) == [8], "\(row)")
        #expect(fetched.ids == [8] && fetched.maxID == 8)
    }

    @Test(arguments: [[], [nil], ["x"], ["99999999999999999999999", "settings_changed"], [nil, "settings_changed", "{}", "0"]] as [[String?]])
    func aRowWithoutAnIdIsCountedButNamesNothing(_ row: [String?]) {
        let fetched = FetchedEvents(rows: [row])
        #expect(fetched.rowCount == 1 && fetched.ids.isEmpty && fetched.maxID == 0)
    }

    @Test func aMissingOrBadStartIsZeroAndAnOversizedFieldIsReported() {
        let big = String(repeating: "a", count: EventPayload.maximumFieldBytes + 1)
        let fetched = FetchedEvents(rows: [["3", "wallet_created", "{\"telegram_id\": 1, \"address\": \"\(big)\"}", "soon"]])
        #expect(fetched.events.first?.startMicros == 0)
        #expect(fetched.oversized.map(\.fields) == [["address"]])
        #expect(fetched.events.first?.fields["address"] == nil)
    }
}

@Suite("AcknowledgementMarks")
struct AcknowledgementMarksTests {
    @Test func oneRecordPerPeriodUnlessALowerIdComes() {
        var marks = AcknowledgementMarks(periodNanoseconds: 1_000)
        #expect(marks.due(acknowledging: [], now: 0) == nil, "nothing to acknowledge, nothing to record")
        #expect(marks.due(acknowledging: [12, 10, 11], now: 0) == 10, "the first acknowledgement is recorded")
        marks.recorded(10, now: 0)
        #expect(marks.due(acknowledging: [13, 14], now: 500) == nil, "bounded by the last record")
        #expect(marks.due(acknowledging: [9], now: 500) == 9, "a lower id (a late commit) is recorded at once")
        #expect(marks.due(acknowledging: [15], now: 1_000) == 15, "a period later, again")
    }

    /// A record whose statement failed was not made: the next acknowledgement records again.
    @Test func aRecordIsOnlyTakenOnceMade() {
        let marks = AcknowledgementMarks(periodNanoseconds: 1_000)
        #expect(marks.due(acknowledging: [5], now: 0) == 5)
        #expect(marks.due(acknowledging: [6], now: 1) == 6)
    }
}
