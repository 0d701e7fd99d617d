/// Which connections the status endpoint keeps open, and whom it lets go when it has too many:
/// a value type the server consults on every accept, answer and close, tested without sockets.
///
/// The policy, at `capacity` open connections, when another one arrives:
/// - the oldest connection already answered (lingering until its client closes) is dropped;
///   failing that, the oldest one still waiting for its request head is dropped, unanswered. A
///   probe sends its head at once and is answered within milliseconds, so the oldest waiting
///   connection is the likeliest to be a port scanner, a stuck client or a slow-loris; refusing
///   the newcomer instead would let anyone holding `capacity` idle sockets fail every
///   Kubernetes probe until the head deadline frees them.
/// - if every open connection is in the middle of receiving its answer, the newcomer is refused:
///   the server sends `503 too many connections` and closes. Answers are short and have their own
///   deadline, so slots free up within it.
public struct HTTPConnectionTable: Sendable, Equatable {
    /// Issued by the table, increasing: a lower id is an older connection.
    public typealias ID = UInt64

    public enum Stage: Sendable, Equatable {
        /// Accepted; the request head is not complete yet.
        case awaitingHead
        /// The head is in (or was refused); the answer is being sent.
        case answering
        /// The answer is sent; the connection lingers until the client closes its end.
        case answered
    }

    public enum Admission: Sendable, Equatable {
        case admitted(ID)
        /// Admitted, after dropping `evicted` (see the policy above).
        case admittedEvicting(ID, evicted: ID)
        /// Full of connections receiving their answers; the newcomer is turned away.
        case refused
    }

    public let capacity: Int
    private var stages: [ID: Stage] = [:]
    private var nextID: ID = 0

    public init(capacity: Int) {
        precondition(capacity > 0, "the status endpoint needs room for at least one connection")
        self.capacity = capacity
    }

    public var count: Int { stages.count }

    public func stage(of id: ID) -> Stage? { stages[id] }

    /// A connection was accepted.
    public mutating func admit() -> Admission {
        var evicted: ID? = nil
        if stages.count >= capacity {
            guard let oldest = oldest(in: .answered) ?? oldest(in: .awaitingHead) else { return .refused }
            stages[oldest] = nil
            evicted = oldest
        }
        let id = nextID
        nextID += 1
        stages[id] = .awaitingHead
        return evicted.map { .admittedEvicting(id, evicted: $0) } ?? .admitted(id)
    }

    /// The connection's head is in: it is being answered, and is no longer a candidate to drop.
    public mutating func answering(_ id: ID) {
        if stages[id] != nil { stages[id] = .answering }
    }

    /// The connection's answer is sent: the first candidate to drop.
    public mutating func answered(_ id: ID) {
        if stages[id] != nil { stages[id] = .answered }
    }

    /// The connection is closed, for whatever reason (a no-op for one already dropped).
    public mutating func closed(_ id: ID) {
        stages[id] = nil
    }

    private func oldest(in stage: Stage) -> ID? {
        stages.lazy.filter { $0.value == stage }.map(\.key).min()
    }
}
