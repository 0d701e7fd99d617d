/// What the active worker still has to do in this Postgres session: read the whole log (a
/// drain), fetch events that notifications named, delete events the private channel carried.
/// A value in the session, so a lost session forgets all of it in one assignment; the drain
/// after reconnecting finds every event again (the log, not the notifications, is the truth).
public struct PendingWork: Sendable, CustomStringConvertible {
    /// A drain pass over the whole pending log, as generations: a request raised while a pass
    /// runs (a notification flood, Redis coming back, the periodic sweep) has a higher generation
    /// than the pass, so the pass's end cannot erase it.
    public struct DrainTicket: Sendable, Equatable {
        public let generation: UInt64
    }

    /// A new session drains first: generation 1 requested, none done.
    private var drainRequested: UInt64 = 1
    private var drainCompleted: UInt64 = 0
    /// Event ids named by notifications and not yet processed: fetched by primary key. Those the
    /// log never held are forged notifications.
    public private(set) var named: Set<Int64> = []
    /// Events the private channel carried, with their payload as sent, in arrival order;
    /// `notifiedIDs` are their ids.
    public private(set) var notified: [CarriedEvent] = []
    private var notifiedIDs: Set<Int64> = []
    /// Recently processed ids, so a notification that arrives after its event was handled costs
    /// no query.
    private var recent: RecentIDs
    /// More named or notified events than this and they are dropped for a drain: bounded memory
    /// whatever floods the channel.
    public let bound: Int

    public init(bound: Int, recentCapacity: Int = 8192) {
        self.bound = bound
        self.recent = RecentIDs(capacity: recentCapacity)
    }

    public var needsDrain: Bool { drainRequested > drainCompleted }

    public var description: String {
        "PendingWork(drain requested \(drainRequested), completed \(drainCompleted); \(named.count) named, \(notified.count) carried)"
    }
    public var hasWork: Bool { needsDrain || !named.isEmpty || !notified.isEmpty }

    public mutating func requestDrain() { drainRequested &+= 1 }

    /// A drain pass starts; it covers every request made until now.
    public func beginDrain() -> DrainTicket { DrainTicket(generation: drainRequested) }

    /// A drain pass went through the whole log.
    public mutating func drainFinished(_ ticket: DrainTicket) {
        drainCompleted = max(drainCompleted, ticket.generation)
    }

    /// Processed recently, or already brought by the private channel: nothing to fetch.
    public func isKnown(_ id: Int64) -> Bool { recent.contains(id) || notifiedIDs.contains(id) }

    /// What a notification asks for, after the bound.
    public enum Admission: Sendable, Equatable {
        case accepted
        /// Already handled or already waiting: nothing to do.
        case known
        /// Past the bound: everything waiting was dropped and a drain requested instead.
        case overflowed
    }

    /// A public notification named this id.
    public mutating func name(_ id: Int64) -> Admission {
        guard !isKnown(id) else { return .known }
        named.insert(id)
        return enforceBound()
    }

    /// The private channel carried this event.
    public mutating func notify(_ event: CarriedEvent) -> Admission {
        guard !isKnown(event.event.id) else { return .known }
        notified.append(event)
        notifiedIDs.insert(event.event.id)
        return enforceBound()
    }

    private mutating func enforceBound() -> Admission {
        guard named.count + notified.count > bound else { return .accepted }
        named.removeAll(keepingCapacity: false)
        notified.removeAll(keepingCapacity: false)
        notifiedIDs.removeAll(keepingCapacity: false)
        requestDrain()
        return .overflowed
    }

    /// Up to `limit` carried events, oldest first, handed over for deletion.
    public mutating func takeNotified(limit: Int) -> [CarriedEvent] {
        let slice = Array(notified.prefix(limit))
        notified.removeFirst(slice.count)
        for item in slice { notifiedIDs.remove(item.event.id) }
        return slice
    }

    /// Up to `limit` named ids, lowest first, to fetch from the log. They stay named until
    /// `processed` or `settled` says what became of them.
    public func nextNamed(limit: Int) -> [Int64] {
        Array(named.sorted().prefix(limit))
    }

    /// These events were invalidated and acknowledged (or acknowledged as undecodable).
    public mutating func processed<S: Sequence>(_ ids: S) where S.Element == Int64 {
        for id in ids {
            named.remove(id)
            recent.insert(id)
        }
    }

    /// A fetch by id is over: the ids it asked for that were not processed are not pending
    /// (processed already, or never in the log: forged). Returns those.
    public mutating func settled(_ asked: [Int64]) -> [Int64] {
        var notFound: [Int64] = []
        for id in asked where named.remove(id) != nil && !recent.contains(id) { notFound.append(id) }
        return notFound
    }

    /// A carried event the log did not confirm: read it from the log like a public notification's.
    public mutating func unconfirmed(_ id: Int64) {
        named.insert(id)
    }
}

/// An event as the private channel carried it, with the payload text as sent (acknowledged only
/// if the log holds exactly that).
public struct CarriedEvent: Sendable, Equatable {
    public var event: InvalidationEvent
    public var payload: String
    public init(event: InvalidationEvent, payload: String) {
        self.event = event
        self.payload = payload
    }
}

/// A bounded set of recently processed event ids (oldest forgotten first).
public struct RecentIDs: Sendable {
    private var ring: [Int64]
    private var set: Set<Int64> = []
    private var next = 0

    public init(capacity: Int) {
        ring = Array(repeating: 0, count: max(1, capacity))
        set.reserveCapacity(capacity)
    }

    public func contains(_ id: Int64) -> Bool { set.contains(id) }

    public mutating func insert(_ id: Int64) {
        guard !set.contains(id) else { return }
        let evicted = ring[next]
        if evicted != 0 { set.remove(evicted) }
        ring[next] = id
        set.insert(id)
        next = (next + 1) % ring.count
    }
}
