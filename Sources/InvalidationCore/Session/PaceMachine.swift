/// How the active worker learns of new events once migration 0003 (quiet NOTIFY) is installed,
/// as a value that takes what happened and says what to do next. The driver executes the
/// actions (take or release W, poll the log, probe G) and reports their results back; nothing
/// here touches a socket or a clock, so every transition is tested in milliseconds.
///
/// - `notified`: writers NOTIFY; the worker waits for notifications.
/// - `polling`: the worker holds W, so writers skip their NOTIFY (which serializes commits
///   cluster-wide) and the worker reads the log itself in a loop.
/// - `settling`: W released; writers that skipped their NOTIFY may still be open. The worker
///   keeps polling until G is free (every such writer ended), then reads the whole log once and
///   trusts notifications again. See migrations/0003_quiet_notify.up.sql.
///
/// "W is held exactly while polling" holds by construction: `.takeW` is only asked for when the
/// machine holds no W and waits for the answer; `.polling` is entered only by that answer; and
/// leaving `.polling` always asks for `.releaseW`. A W that arrives unasked (the lock is
/// re-entrant, so a second take would be a second hold) is handed straight back.
public struct PaceMachine: Sendable, Equatable {
    public struct Settings: Sendable, Equatable {
        /// Enter polling when this many events arrive within one window…
        public var entryEvents: Int
        public var windowNanoseconds: UInt64
        /// …leave it after this long without a new event, or after a window with fewer events
        /// than this (below the entry, so a stream between the two keeps its pace)…
        public var exitNanoseconds: UInt64
        public var exitEvents: Int
        /// …poll this often while the log has nothing new…
        public var pollIntervalNanoseconds: UInt64
        /// …and ask for a read of the whole pending log this often (a transaction that commits
        /// out of id order lands behind the cursor).
        public var fullScanNanoseconds: UInt64
        /// Ids the cursor jumped over that are remembered and asked for by primary key.
        public var maximumSkippedIDs: Int

        public init(entryEvents: Int = 40, windowNanoseconds: UInt64 = 100_000_000, exitNanoseconds: UInt64 = 50_000_000,
                    exitEvents: Int = 30, pollIntervalNanoseconds: UInt64 = 200_000, fullScanNanoseconds: UInt64 = 100_000_000,
                    maximumSkippedIDs: Int = 10_000) {
            self.entryEvents = entryEvents
            self.windowNanoseconds = windowNanoseconds
            self.exitNanoseconds = exitNanoseconds
            self.exitEvents = exitEvents
            self.pollIntervalNanoseconds = pollIntervalNanoseconds
            self.fullScanNanoseconds = fullScanNanoseconds
            self.maximumSkippedIDs = maximumSkippedIDs
        }
    }

    public enum Pace: String, Sendable, Equatable { case notified, polling, settling }

    public enum Action: Sendable, Equatable {
        /// `pg_try_advisory_lock(W)`; report with `wTaken(_:now:)`.
        case takeW
        /// Read the log after `cursor`, and the ids in `skipped` by primary key; report with
        /// `polled(_:now:)`.
        case poll(after: Int64, skipped: [Int64])
        /// `pg_advisory_unlock(W)`; report with `wReleased(now:)`.
        case releaseW
        /// Whether G can be taken for an instant; report with `gProbed(free:now:)`.
        case probeG
    }

    /// What a poll returned, for the cursor and the skipped ids.
    public struct Poll: Sendable, Equatable {
        /// Ids of every row returned (events and undecodable rows alike).
        public var ids: [Int64]
        public init(ids: [Int64]) { self.ids = ids }
    }

    public let settings: Settings
    public private(set) var pace = Pace.notified
    /// The machine asked for W and waits for the answer.
    private var awaitingW = false
    /// Events processed in the current window, and when it began: in the notified pace, whether
    /// to start polling; in the polling pace, whether to stop.
    private var windowStart: UInt64
    private var windowEvents = 0
    /// The highest event id processed in this session: where a new polling cursor starts.
    public private(set) var highestProcessedID: Int64 = 0
    public private(set) var cursor: Int64 = 0
    /// Ids the cursor passed without seeing them, and when: a transaction that took its id early
    /// and commits late. Asked for on every poll until found or a full scan covered them.
    public private(set) var skipped: [Int64: UInt64] = [:]
    public private(set) var nextPollAt: UInt64 = 0
    private var lastNewEventAt: UInt64 = 0
    private var nextFullScanAt: UInt64 = 0
    /// Left polling because the rate fell, not because the log went quiet: settling then does
    /// not go back to polling for the next event (a steady stream would flip the pace).
    private var leftForRate = false
    /// Empty polls in a row while settling: the interval doubles with each, up to
    /// `settlingPollCeiling`, so a long transaction holding G (a DBA's bulk update) does not get
    /// the log polled thousands of times a second.
    private var emptySettlingPolls = 0
    public static let settlingPollCeiling: UInt64 = 10_000_000

    /// A worker that just took the lead starts settling: a writer may have skipped its NOTIFY
    /// for a previous holder of W (a lost session, a killed worker) and still be open, and no
    /// notification will ever announce its event. Only once G is free is every such writer
    /// known to have ended, and one read of the log finds what they committed.
    public init(settings: Settings, now: UInt64) {
        self.settings = settings
        self.windowStart = now
        self.pace = .settling
        self.leftForRate = true
        self.nextPollAt = now
        self.nextFullScanAt = now &+ settings.fullScanNanoseconds
    }

    /// Events were processed (from notifications, the drain or a poll).
    public mutating func processed(count: Int, highestID: Int64) {
        windowEvents += count
        highestProcessedID = max(highestProcessedID, highestID)
    }

    /// The next thing to do at `now`, if anything; called once per turn of the driver's loop.
    /// Further steps of the same turn come from the reports.
    public mutating func tick(now: UInt64) -> Action? {
        switch pace {
        case .notified:
            guard !awaitingW else { return nil }
            let busy = windowEvents >= settings.entryEvents
            if busy || now &- windowStart > settings.windowNanoseconds { restartWindow(now) }
            guard busy else { return nil }
            awaitingW = true
            return .takeW
        case .polling, .settling:
            guard !awaitingW, now >= nextPollAt else { return nil }
            return .poll(after: cursor, skipped: Array(skipped.keys))
        }
    }

    /// When `tick` next has something to do (nil: only a report or new events can change that).
    public var nextDeadline: UInt64? {
        switch pace {
        case .notified: return nil
        case .polling, .settling: return awaitingW ? nil : nextPollAt
        }
    }

    /// The answer to `.takeW`. Returns `.releaseW` when W came unasked.
    public mutating func wTaken(_ taken: Bool, now: UInt64) -> Action? {
        guard awaitingW else { return taken ? .releaseW : nil }
        awaitingW = false
        guard taken else { return nil }  // a notifying writer holds W shared: try again later
        switch pace {
        case .notified:
            // Every event inserted from now on has a higher id than any processed so far; those
            // inserted before W was taken were notified.
            cursor = max(cursor, highestProcessedID)
            skipped.removeAll()
            lastNewEventAt = now
            nextPollAt = now
            nextFullScanAt = now &+ settings.fullScanNanoseconds
            leftForRate = false
            restartWindow(now)
        case .settling:
            break  // busy again before it settled: the cursor and skipped ids stay
        case .polling:
            return .releaseW  // cannot happen (awaitingW is never set while polling)
        }
        pace = .polling
        return nil
    }

    /// What a poll found. Returns whether a full read of the log is due (the driver requests a
    /// drain) and what to do next in this turn.
    public mutating func polled(_ poll: Poll, now: UInt64) -> (drain: Bool, next: Action?) {
        let found = !poll.ids.isEmpty
        // At once again while polls find events. Spacing them 1 ms apart halves the CPU per
        // event at 2,000 events/s but adds ~0.4 ms of lag: lag first.
        if found || pace != .settling {
            emptySettlingPolls = 0
        } else {
            emptySettlingPolls = min(emptySettlingPolls + 1, 16)
        }
        let interval = emptySettlingPolls == 0
            ? settings.pollIntervalNanoseconds
            : min(settings.pollIntervalNanoseconds << UInt64(emptySettlingPolls - 1), max(Self.settlingPollCeiling, settings.pollIntervalNanoseconds))
        nextPollAt = found ? now : now &+ interval
        if found {
            noteSkipped(poll.ids, now: now)
            lastNewEventAt = now
        }
        var drain = false
        if now >= nextFullScanAt {
            drain = true
            nextFullScanAt = now &+ settings.fullScanNanoseconds
            // The full read about to run finds whatever is still skipped.
            skipped = skipped.filter { now &- $0.value < settings.fullScanNanoseconds }
        }
        switch pace {
        case .polling:
            // A quiet log, or a stream too slow to be worth polling for: notifications cost the
            // bot nothing then, and deliver each event sooner than a poll.
            var slow = false
            if now &- windowStart >= settings.windowNanoseconds {
                slow = windowEvents < settings.exitEvents
                restartWindow(now)
            }
            guard slow || now &- lastNewEventAt > settings.exitNanoseconds else { return (drain, nil) }
            pace = .settling
            leftForRate = slow
            return (drain, .releaseW)
        case .settling:
            if found && !leftForRate {
                awaitingW = true
                return (drain, .takeW)
            }
            return (drain, .probeG)
        case .notified:
            return (drain, nil)
        }
    }

    /// W was released (after `.releaseW`): find out at once whether the writers have settled.
    public mutating func wReleased(now: UInt64) -> Action? {
        pace == .settling ? .probeG : nil
    }

    /// The answer to `.probeG`. Returns true when the pace is notified again: the driver must
    /// then read the whole log once (what the quiet writers committed).
    public mutating func gProbed(free: Bool, now: UInt64) -> Bool {
        guard pace == .settling, free else { return false }
        pace = .notified
        skipped.removeAll()
        restartWindow(now)
        return true
    }

    private mutating func restartWindow(_ now: UInt64) {
        windowStart = now
        windowEvents = 0
    }

    /// Moves the cursor past what a poll returned and remembers the ids it jumped over.
    private mutating func noteSkipped(_ ids: [Int64], now: UInt64) {
        var seen = Set<Int64>(minimumCapacity: ids.count)
        var highest = cursor
        for id in ids {
            seen.insert(id)
            skipped.removeValue(forKey: id)
            highest = max(highest, id)
        }
        // A jump wider than the bound (a mass rollback) is left to the full scan.
        if highest > cursor && highest - cursor <= Int64(settings.maximumSkippedIDs) {
            for id in (cursor + 1)...highest where !seen.contains(id) && skipped.count < settings.maximumSkippedIDs {
                skipped[id] = now
            }
        }
        cursor = highest
    }
}
