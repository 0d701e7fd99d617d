/// A bounded record of the events whose keys the worker deleted recently, and when each is due to
/// be deleted again: the second deletion. A cache-aside reader that read a row just before a write
/// committed and fills the key just after the first deletion puts the old value back; deleting
/// the keys again `delay` after the first removes every such fill that landed in between.
/// (The replay after a failover needs the events themselves for longer, and never from the log:
/// `FailoverMemory`.)
///
/// Each entry holds the events themselves (re-rendered into keys when due, patterns included),
/// up to `eventBound` events in all. Past the bound the oldest entries keep only the ids they
/// cover, and their events are read back from the log when due: memory stays bounded whatever
/// the rate, and nothing is dropped. A worker that takes over seeds the record from the log
/// (`seed`), so the second deletion survives a crash or a takeover.
public struct RecentDeletions: Sendable {
    public enum Content: Sendable, Equatable {
        /// The events, as the first deletion rendered them.
        case events([InvalidationEvent])
        /// Only the ids, as contiguous runs: the acknowledged events in them are read back from
        /// the log, a page per round.
        case ranges([ClosedRange<Int64>])
    }

    public struct Entry: Sendable, Equatable {
        public var due: UInt64
        public var content: Content
        public init(due: UInt64, content: Content) {
            self.due = due
            self.content = content
        }
    }

    /// How long after the first deletion the second is due; 0 records nothing.
    public let delay: UInt64
    public let eventBound: Int
    private var entries: [Entry] = []
    private var head = 0
    /// Events held in `entries` (ranges count as none).
    public private(set) var heldEvents = 0

    public init(delay: UInt64, eventBound: Int = 4_096) {
        self.delay = delay
        self.eventBound = max(1, eventBound)
    }

    public var isEnabled: Bool { delay > 0 }
    public var isEmpty: Bool { head == entries.count }
    public var count: Int { entries.count - head }

    /// When the oldest entry is due (entries are due in the order they were recorded).
    public var nextDue: UInt64? { isEmpty ? nil : entries[head].due }

    /// The first deletion of these events was confirmed at `now`.
    public mutating func record(_ events: [InvalidationEvent], now: UInt64) {
        guard isEnabled, !events.isEmpty else { return }
        append(Entry(due: now &+ delay, content: .events(events)))
        heldEvents += events.count
        enforceBound()
    }

    /// A new lead: the events acknowledged in the ids `range` by whoever led before (found in the
    /// log) get their second deletion one `delay` from now, late enough for any fill that the
    /// previous leader's first deletion left open.
    public mutating func seed(_ range: ClosedRange<Int64>, now: UInt64) {
        guard isEnabled else { return }
        append(Entry(due: now &+ delay, content: .ranges([range])))
    }

    /// Takes the entries due at `now`, oldest first, until they hold at least `limit` events
    /// (ranges count as `limit`: one page of them is read from the log per round).
    public mutating func takeDue(now: UInt64, limit: Int) -> [Entry] {
        var taken: [Entry] = []
        var events = 0
        while head < entries.count, entries[head].due <= now, events < limit {
            let entry = entries[head]
            // The slot stays until compaction: it must not keep the events alive meanwhile.
            entries[head].content = .ranges([])
            head += 1
            switch entry.content {
            case .events(let list):
                events += list.count
                heldEvents -= list.count
            case .ranges:
                events += limit
            }
            taken.append(entry)
        }
        compact()
        return taken
    }

    /// Entries taken but not deleted again (Redis or Postgres failed): due again at once.
    public mutating func putBack(_ taken: [Entry]) {
        for entry in taken {
            if case .events(let list) = entry.content { heldEvents += list.count }
            append(entry)
        }
        enforceBound()
    }

    private mutating func append(_ entry: Entry) {
        // Due times only grow (a constant delay after a monotonic clock), so the queue stays in
        // due order; a seed or a clock step is put in its place.
        var index = entries.count
        while index > head && entries[index - 1].due > entry.due { index -= 1 }
        entries.insert(entry, at: index)
    }

    private mutating func enforceBound() {
        var index = head
        while heldEvents > eventBound && index < entries.count {
            if case .events(let list) = entries[index].content {
                entries[index].content = .ranges(Self.runs(list.map(\.id)))
                heldEvents -= list.count
            }
            index += 1
        }
    }

    /// Ids as contiguous runs: a batch's ids are mostly consecutive, and a stray low id (a late
    /// commit) must not widen the range to everything between.
    static func runs(_ ids: [Int64]) -> [ClosedRange<Int64>] {
        var runs: [ClosedRange<Int64>] = []
        for id in ids.sorted() {
            if let last = runs.last, id <= last.upperBound + 1 {
                runs[runs.count - 1] = last.lowerBound...max(last.upperBound, id)
            } else {
                runs.append(id...id)
            }
        }
        return runs
    }

    private mutating func compact() {
        if head > 1024 && head * 2 > entries.count {
            entries.removeFirst(head)
            head = 0
        }
    }
}
