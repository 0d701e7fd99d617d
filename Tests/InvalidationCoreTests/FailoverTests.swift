import Testing
@testable import InvalidationCore

@Suite("PrimaryIdentity and PrimaryWatch")
struct PrimaryIdentityTests {
    @Test func parsesTheSystemAndTheTimelineOfTheWALFileBeingWritten() {
        let identity = PrimaryIdentity.parse(systemIdentifier: "7715163294786991027", walFileName: "0000000A0000000000000001")
        #expect(identity == PrimaryIdentity(systemIdentifier: 7_715_163_294_786_991_027, timeline: 10))
    }

    @Test(arguments: [
        (String?.none, String?.some("000000010000000000000001")),
        ("7715163294786991027", nil),
        ("", "000000010000000000000001"),
        ("0", "000000010000000000000001"),
        ("-1", "000000010000000000000001"),
        ("18446744073709551616", "000000010000000000000001"),
        ("77151632947869910x7", "000000010000000000000001"),
        ("7715163294786991027", "00000001000000000000001"),
        ("7715163294786991027", "0000000100000000000000011"),
        ("7715163294786991027", "000000000000000000000001"),
        ("7715163294786991027", "0000000g0000000000000001"),
        ("7715163294786991027", "0000000a0000000000000001"),
        ("7715163294786991027", "+00000010000000000000001"),
        ("7715163294786991027", "00000001000000000000000\u{0}"),
        ("7715163294786991027", "00000001000000000000000é"),
    ] as [(String?, String?)])
    func refusesAnythingElse(system: String?, walFile: String?) {
        #expect(PrimaryIdentity.parse(systemIdentifier: system, walFileName: walFile) == nil)
    }

    @Test func aPromotionAndAnotherClusterAreChangesAReconnectIsNot() {
        var watch = PrimaryWatch()
        let one = PrimaryIdentity(systemIdentifier: 7, timeline: 1)
        #expect(watch.connected(to: one) == .first)
        #expect(watch.connected(to: one) == .same)
        #expect(watch.connected(to: PrimaryIdentity(systemIdentifier: 7, timeline: 2)) == .newTimeline(from: 1, to: 2))
        // A demoted old primary that comes back under the same URL is a change too.
        #expect(watch.connected(to: one) == .newTimeline(from: 2, to: 1))
        #expect(watch.connected(to: PrimaryIdentity(systemIdentifier: 8, timeline: 1)) == .otherSystem(from: 7, to: 8))
        #expect(!PrimaryWatch.Change.first.mayHaveLostWrites && !PrimaryWatch.Change.same.mayHaveLostWrites)
        #expect(PrimaryWatch.Change.newTimeline(from: 1, to: 2).mayHaveLostWrites && PrimaryWatch.Change.otherSystem(from: 1, to: 2).mayHaveLostWrites)
    }
}

@Suite("FailoverMemory")
struct FailoverMemoryTests {
    static let events = RecentDeletionsTests.events

    @Test func aChangeMakesEverythingOfTheWindowDueOldestFirst() {
        var memory = FailoverMemory(window: 1_000)
        memory.record(Self.events(1...3), now: 100)
        memory.record(Self.events(4...5), now: 900)
        #expect(memory.replayPending == 0, "nothing is deleted again without a change")
        #expect(memory.primaryChanged() == (events: 5, dropped: 0))
        #expect(memory.replayPending == 5 && memory.heldEvents == 5, "kept for a second failover")
        #expect(memory.takeReplay(limit: 2) == Self.events(1...2))
        let rest = memory.takeReplay(limit: 10)
        #expect(rest == Self.events(3...5))
        memory.putBack(rest)
        #expect(memory.takeReplay(limit: 10) == Self.events(3...5), "a failed round is first in line again")
        #expect(memory.replayPending == 0)
    }

    @Test func theWindowIsCountedBackFromTheLastRecordNotFromTheReplay() {
        var memory = FailoverMemory(window: 1_000)
        memory.record(Self.events(1...1), now: 0)
        memory.record(Self.events(2...2), now: 1_500)
        #expect(memory.heldEvents == 1, "more than a window before the newest: forgotten")
        // Cut off for a long failover: nothing recorded, nothing ages out.
        #expect(memory.primaryChanged().events == 1)
        #expect(memory.takeReplay(limit: 10) == Self.events(2...2))
    }

    @Test func losingTheSessionPrunesFromThatMoment() {
        var memory = FailoverMemory(window: 1_000)
        memory.record(Self.events(1...1), now: 0)
        memory.prune(now: 5_000)
        #expect(memory.primaryChanged().events == 0, "idle for longer than the window before the loss")
    }

    @Test func pastTheBoundTheOldestGoAndAreCounted() {
        var memory = FailoverMemory(window: 1_000_000, eventBound: 4)
        memory.record(Self.events(1...3), now: 1)
        memory.record(Self.events(4...6), now: 2)
        #expect(memory.heldEvents == 4)
        let counts = memory.primaryChanged()
        #expect(counts == (events: 4, dropped: 2))
        #expect(memory.takeReplay(limit: 10) == Self.events(3...6), "the newest writes are the ones a failover loses")
        _ = memory.takeReplay(limit: 10)
        memory.record(Self.events(7...7), now: 3)
        #expect(memory.primaryChanged() == (events: 4, dropped: 1), "drops counted since the last replay")
        #expect(memory.takeReplay(limit: 10) == Self.events(4...7))
    }

    /// A Redis failover, then a PostgreSQL promotion within the window: the second replays
    /// what the first did, and what came between.
    @Test func aSecondChangeWithinTheWindowReplaysAgain() {
        var memory = FailoverMemory(window: 1_000)
        memory.record(Self.events(1...2), now: 100)
        #expect(memory.primaryChanged().events == 2)
        _ = memory.takeReplay(limit: 10)
        memory.record(Self.events(3...3), now: 600)
        #expect(memory.primaryChanged().events == 3)
        #expect(memory.takeReplay(limit: 10) == Self.events(1...3))
    }

    @Test func offKeepsNothing() {
        var memory = FailoverMemory(window: 0)
        memory.record(Self.events(1...3), now: 1)
        #expect(!memory.isEnabled && memory.heldEvents == 0 && memory.primaryChanged().events == 0)
    }

    @Test func aLongStreamStaysWithinTheWindowAndTheBound() {
        var memory = FailoverMemory(window: 100, eventBound: 50)
        var model: [(at: UInt64, id: Int64)] = []
        var id: Int64 = 0
        var generator = SeededGenerator(seed: 7)
        for now in stride(from: UInt64(0), to: 10_000, by: 7) {
            let count = Int(generator.next() % 9)
            guard count > 0 else { memory.prune(now: now); model.removeAll { now - $0.at > 100 }; continue }
            memory.record(Self.events((id + 1)...(id + Int64(count))), now: now)
            for offset in 1...count { model.append((now, id + Int64(offset))) }
            id += Int64(count)
            model.removeAll { now - $0.at > 100 }
            if model.count > 50 { model.removeFirst(model.count - 50) }
            #expect(memory.heldEvents == model.count)
        }
        _ = memory.primaryChanged()
        #expect(memory.takeReplay(limit: 1_000).map(\.id) == model.map(\.id))
    }
}

@Suite("RedisMaster")
struct RedisMasterTests {
    static let one = String(repeating: "a", count: 40), two = String(repeating: "b", count: 40)

    @Test func anotherAddressOrAnotherProcessReplacesTheMaster() {
        let master = RedisMaster(address: "10.0.0.1:6379", runID: Self.one)
        #expect(!master.replaces(master))
        #expect(RedisMaster(address: "10.0.0.2:6379", runID: Self.one).replaces(master), "a Sentinel failover")
        #expect(RedisMaster(address: "10.0.0.1:6379", runID: Self.two).replaces(master), "a restart behind the same address")
        #expect(!RedisMaster(address: "10.0.0.1:6379", runID: nil).replaces(master), "INFO not allowed: the address alone")
        #expect(RedisMaster(address: "10.0.0.2:6379", runID: nil).replaces(RedisMaster(address: "10.0.0.1:6379", runID: nil)))
    }

    @Test(arguments: ["", "abc", String(repeating: "g", count: 40), String(repeating: "a", count: 41), String(repeating: "a", count: 39) + "\r"])
    func aRunIDIsFortyHexDigitsOrNothing(_ value: String) {
        #expect(RedisInfo.parse("# Server\r\nrun_id:\(value)\r\n").runID == nil)
        #expect(RedisInfo.parse("run_id:\(Self.one)\r\n").runID == Self.one)
    }
}
