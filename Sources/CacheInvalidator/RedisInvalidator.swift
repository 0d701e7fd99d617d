import InvalidationCore
import RedisClient

/// Executes an `InvalidationPlan` against Redis: exact keys in one pipelined round trip (on a
/// cluster, one per master, all at once), patterns by `SCAN ... MATCH` (never `KEYS`, which
/// blocks Redis on a large keyspace; on a cluster, on every master).
struct RedisInvalidator {
    let target: RedisTarget
    let deleteCommand: WorkerConfiguration.DeleteCommand
    /// `WAIT` for this many replicas after a first deletion (0: off), for at most `waitMilliseconds`.
    var waitReplicas = 0
    var waitMilliseconds = 1000
    /// The last time Redis answered: an idle connection gets a heartbeat (`PING`).
    var lastAnswerAt: UInt64 = 0
    /// Keys per DEL/UNLINK command: bounds the size of one command while keeping one round trip.
    static let keysPerCommand = 512
    static let scanCount = "1000"

    struct Outcome {
        /// Keys that existed and were removed (the sum of the integer replies).
        var removed: Int64 = 0
        var scanned = 0
    }

    /// Throws unless Redis confirmed every deletion: the caller acknowledges only on success.
    func execute(_ plan: InvalidationPlan) throws(RedisError) -> Outcome {
        var outcome = Outcome()
        if !plan.keyBytes.isEmpty {
            outcome.removed += try confirm(send(commands(deleting: plan.keyBytes)))
        }
        for pattern in plan.patterns {
            outcome.removed += try deleteMatching(pattern)
            outcome.scanned += 1
        }
        try waitForReplicas()
        return outcome
    }

    /// With `waitReplicas`: every master has passed what it deleted to that many replicas, or
    /// this throws and the batch is not acknowledged (it is retried). A replica promoted after a
    /// failover then holds the deletion; without it, only the replay after a master change does.
    private func waitForReplicas() throws(RedisError) {
        guard waitReplicas > 0 else { return }
        let nodes: [RedisConnection]
        switch target {
        case .single(let connection): nodes = [connection]
        case .cluster(let cluster): nodes = try cluster.masterConnections()
        }
        let wait = ["WAIT", String(waitReplicas), String(waitMilliseconds)].map { Array($0.utf8) }
        for node in nodes { try node.send([wait]) }
        for node in nodes {
            let reply = try node.receive(1)[0]
            guard case .integer(let acknowledged) = reply else {
                throw RedisError(code: .commandFailed, message: "WAIT answered \(reply)", target: node.address.description)
            }
            guard acknowledged >= waitReplicas else {
                throw RedisError(code: .commandFailed, message: "WAIT: \(acknowledged) of \(waitReplicas) replicas have the deletions after \(waitMilliseconds) ms; the batch is retried (REDIS_WAIT_REPLICAS)", target: node.address.description)
            }
        }
    }

    /// DEL/UNLINK commands for these keys, `keysPerCommand` at most in each; on a cluster the
    /// keys of one command share a slot (a multi-key command across slots is refused), and each
    /// command carries its slot.
    private func commands(deleting keys: [[UInt8]]) -> [(command: [[UInt8]], slot: Int)] {
        var groups: [(slot: Int, keys: ArraySlice<[UInt8]>)] = []
        switch target {
        case .single:
            groups = [(0, keys[...])]
        case .cluster:
            var bySlot: [Int: [[UInt8]]] = [:]
            for key in keys { bySlot[HashSlot.of(key), default: []].append(key) }
            groups = bySlot.sorted { $0.key < $1.key }.map { ($0.key, $0.value[...]) }
        }
        var commands: [(command: [[UInt8]], slot: Int)] = []
        commands.reserveCapacity(keys.count / Self.keysPerCommand + groups.count)
        for group in groups {
            var index = group.keys.startIndex
            while index < group.keys.endIndex {
                let end = min(index + Self.keysPerCommand, group.keys.endIndex)
                var command: [[UInt8]] = [deleteCommand.argument]
                command.reserveCapacity(end - index + 1)
                command.append(contentsOf: group.keys[index..<end])
                commands.append((command, group.slot))
                index = end
            }
        }
        return commands
    }

    /// One round trip: to the server, or routed by slot to the masters.
    private func send(_ commands: [(command: [[UInt8]], slot: Int)]) throws(RedisError) -> [RedisReply] {
        switch target {
        case .single(let connection): return try connection.pipeline(commands.map(\.command))
        case .cluster(let cluster): return try cluster.pipeline(commands.map(\.command), slots: commands.map(\.slot))
        }
    }

    /// Deletes the keys of these events again (patterns included), all exact keys in one
    /// pipeline, and returns how many keys each kind's deletion removed: keys that were filled
    /// again since the first deletion. Throws unless Redis confirmed every deletion.
    func redelete(_ events: [InvalidationEvent], rules: RuleSet, prefix: String) throws(RedisError) -> [EventKind: Int64] {
        var plans: [EventKind: InvalidationPlan] = [:]
        for event in events { _ = rules.apply(event, prefix: prefix, to: &plans[event.kind, default: InvalidationPlan()]) }
        var commands: [(command: [[UInt8]], slot: Int)] = []
        var owners: [EventKind] = []
        for (kind, plan) in plans where !plan.keyBytes.isEmpty {
            let deleting = self.commands(deleting: plan.keyBytes)
            commands += deleting
            owners += Array(repeating: kind, count: deleting.count)
        }
        var removed: [EventKind: Int64] = [:]
        if !commands.isEmpty {
            for (index, reply) in try send(commands).enumerated() {
                removed[owners[index], default: 0] += try confirm([reply])
            }
        }
        for (kind, plan) in plans {
            for pattern in plan.patterns { removed[kind, default: 0] += try deleteMatching(pattern) }
        }
        return removed
    }

    private func deleteMatching(_ pattern: String) throws(RedisError) -> Int64 {
        let nodes: [RedisConnection]
        switch target {
        case .single(let connection): nodes = [connection]
        case .cluster(let cluster): nodes = try cluster.masterConnections()
        }
        var removed: Int64 = 0
        for connection in nodes {
            var cursor: [UInt8] = Array("0".utf8)
            repeat {
                let reply = try connection.command([Array("SCAN".utf8), cursor, Array("MATCH".utf8), Array(pattern.utf8), Array("COUNT".utf8), Array(Self.scanCount.utf8)])
                guard case .array(let parts) = reply, parts.count == 2, case .bulk(let next) = parts[0], case .array(let found) = parts[1] else {
                    if case .error(let message) = reply { throw RedisError(code: .commandFailed, message: "SCAN: \(message)") }
                    throw RedisError(code: .unexpectedReply, message: "SCAN answered \(reply)")
                }
                var keys: [[UInt8]] = []
                for case .bulk(let key) in found { keys.append(key) }
                if !keys.isEmpty { removed += try confirm(send(commands(deleting: keys))) }
                cursor = next
            } while cursor != Array("0".utf8)
        }
        return removed
    }

    private func confirm(_ replies: [RedisReply]) throws(RedisError) -> Int64 {
        var removed: Int64 = 0
        for reply in replies {
            switch reply {
            case .integer(let n): removed += n
            case .error(let message): throw RedisError(code: .commandFailed, message: "\(deleteCommand.rawValue.uppercased()): \(message)")
            default: throw RedisError(code: .unexpectedReply, message: "\(deleteCommand.rawValue.uppercased()) answered \(reply)")
            }
        }
        return removed
    }
}

/// A batch whose keys Redis confirmed gone: the only thing `EventLog` acknowledges. Its
/// initializer is private to this file, where the one function that gets Redis's confirmation
/// makes it, so "acknowledge only what Redis confirmed" holds by construction: no other code can
/// produce one.
struct ConfirmedBatch {
    /// Everything to acknowledge: the events, and rows that could not be decoded (acknowledged
    /// with nothing deleted; they would otherwise come back in every fetch).
    let ids: [Int64]
    /// The events, for the statistics (`record`). The private channel's path keeps only the
    /// events the log confirmed (`keepOnly`): the others are read from the log again, and would
    /// otherwise be counted twice.
    private(set) var events: [InvalidationEvent]
    /// Per-event key and pattern counts, index for index beside `events`.
    private(set) var rendered: [(keys: Int, patterns: Int)]
    /// Keys sent in the one round trip, after de-duplication within the batch.
    let keys: Int
    let outcome: RedisInvalidator.Outcome
    /// Wall-clock time of Redis's confirmation: the end of each event's lag.
    let confirmedAt: Int64
    /// Rows that could not be decoded (in `ids`, not in `events`).
    let undecodable: [Int64]
    /// Taken from the private channel's notifications (counted apart in the statistics).
    var fromNotifications = false

    fileprivate init(ids: [Int64], events: [InvalidationEvent], rendered: [(keys: Int, patterns: Int)],
                     keys: Int, outcome: RedisInvalidator.Outcome, confirmedAt: Int64, undecodable: [Int64]) {
        self.ids = ids
        self.events = events
        self.rendered = rendered
        self.keys = keys
        self.outcome = outcome
        self.confirmedAt = confirmedAt
        self.undecodable = undecodable
    }

    /// Rendered keys of the kept events, by kind.
    var keysByKind: [EventKind: Int] {
        var byKind: [EventKind: Int] = [:]
        for (event, counts) in zip(events, rendered) { byKind[event.kind, default: 0] += counts.keys }
        return byKind
    }

    /// Keeps the events `starts` names, each with its lag start from the log; returns the ids of
    /// the others. Their counts go with them, so nothing is counted before the log confirms it.
    mutating func keepOnly(_ starts: [Int64: Int64]) -> [Int64] {
        var kept: [InvalidationEvent] = [], keptCounts: [(keys: Int, patterns: Int)] = [], dropped: [Int64] = []
        kept.reserveCapacity(starts.count)
        keptCounts.reserveCapacity(starts.count)
        for (var event, counts) in zip(events, rendered) {
            guard let start = starts[event.id] else { dropped.append(event.id); continue }
            event.startMicros = start
            kept.append(event)
            keptCounts.append(counts)
        }
        events = kept
        rendered = keptCounts
        return dropped
    }
}

extension RedisInvalidator {
    /// Renders the keys of a batch of events by the rules and deletes them in one pipelined round
    /// trip. Returns the confirmation that `EventLog` needs to acknowledge them; throws (and
    /// nothing can be acknowledged) unless Redis confirmed every deletion.
    func delete(_ fetched: FetchedEvents, rules: RuleSet, prefix: String) throws(RedisError) -> ConfirmedBatch {
        var plan = InvalidationPlan()
        // Six keys per event is the most any default rule renders.
        plan.reserveCapacity(keys: fetched.events.count * 6)
        var rendered: [(keys: Int, patterns: Int)] = []
        rendered.reserveCapacity(fetched.events.count)
        for event in fetched.events { rendered.append(rules.apply(event, prefix: prefix, to: &plan)) }
        let outcome = try execute(plan)
        return ConfirmedBatch(ids: fetched.ids, events: fetched.events, rendered: rendered,
                              keys: plan.keyBytes.count, outcome: outcome, confirmedAt: wallClockNanoseconds(),
                              undecodable: fetched.undecodable.map(\.id))
    }
}
