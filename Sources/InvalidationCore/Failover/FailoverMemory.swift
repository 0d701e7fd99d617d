/// The events acknowledged in the last `window` before the primary was last seen, kept to delete
/// their keys again when the worker finds itself on another primary (a promoted standby, another
/// Redis master). With asynchronous replication the new primary can lack the last writes the old
/// one committed; a reader may have cached a value computed from such a write after the worker
/// deleted its keys, and nothing else would ever delete that value again.
///
/// The events themselves are kept, never ids to read back: the log rows of exactly those writes
/// may be the ones the new primary lacks. Memory is bounded by `eventBound`; past it the oldest
/// are dropped (counted in `dropped`): the newest writes are the ones a failover loses.
///
/// Pruning is relative to the last `record` or `prune`, never to the time of the replay: while the
/// worker is cut off (the failover itself can take a minute) nothing ages out.
public struct FailoverMemory: Sendable {
    public let window: UInt64
    public let eventBound: Int
    private var batches: [(at: UInt64, events: [InvalidationEvent])] = []
    private var head = 0
    public private(set) var heldEvents = 0
    /// Events dropped to stay within the bound since the last replay.
    public private(set) var dropped = 0
    private var replay: [InvalidationEvent] = []

    public init(window: UInt64, eventBound: Int = 20_000) {
        self.window = window
        self.eventBound = max(1, eventBound)
    }

    public var isEnabled: Bool { window > 0 }
    /// Events whose keys are still to be deleted again after a primary change.
    public var replayPending: Int { replay.count }

    /// These events' deletions were confirmed at `now`.
    public mutating func record(_ events: [InvalidationEvent], now: UInt64) {
        guard isEnabled, !events.isEmpty else { return }
        batches.append((now, events))
        heldEvents += events.count
        prune(now: now)
        while heldEvents > eventBound {
            let excess = heldEvents - eventBound
            let oldest = batches[head].events.count
            if oldest <= excess {
                dropFirstBatch()
                dropped += oldest
            } else {
                batches[head].events.removeFirst(excess)
                heldEvents -= excess
                dropped += excess
            }
        }
    }

    /// Forgets what was acknowledged more than `window` before `now`.
    public mutating func prune(now: UInt64) {
        while head < batches.count, now &- batches[head].at > window { dropFirstBatch() }
    }

    /// The worker reached another primary (or master): every event held is due for deletion
    /// again. Returns how many, and how many the bound had dropped before (lost to the replay).
    /// The memory keeps them: a second failover within the window (Redis, then PostgreSQL) must
    /// replay them too; they age out as usual.
    public mutating func primaryChanged() -> (events: Int, dropped: Int) {
        var all: [InvalidationEvent] = []
        all.reserveCapacity(heldEvents)
        for index in head..<batches.count { all += batches[index].events }
        let counts = (all.count, dropped)
        replay = all + replay
        dropped = 0
        return counts
    }

    /// Up to `limit` events of the replay, oldest first.
    public mutating func takeReplay(limit: Int) -> [InvalidationEvent] {
        let taken = Array(replay.prefix(max(1, limit)))
        replay.removeFirst(taken.count)
        return taken
    }

    /// Events taken whose deletion failed: first in line again.
    public mutating func putBack(_ events: [InvalidationEvent]) {
        replay = events + replay
    }

    private mutating func dropFirstBatch() {
        heldEvents -= batches[head].events.count
        // The slot stays until compaction: it must not keep the events alive meanwhile.
        batches[head].events = []
        head += 1
        if head == batches.count {
            batches.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 && head * 2 >= batches.count {
            batches.removeFirst(head)
            head = 0
        }
    }
}
