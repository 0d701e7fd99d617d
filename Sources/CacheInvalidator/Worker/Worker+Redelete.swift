import InvalidationCore
import Logging
import PostgresClient
import RedisClient

// The second deletion: each event's keys are deleted again `--redelete-after` after the first,
// which removes a cache fill of a value read before the write committed that landed after the
// first deletion. `RecentDeletions` decides what is due; this executes it, after first
// deletions, batched into one pipeline per round.
extension Worker {
    /// When the next round may go out: the oldest entry's due time, plus a short batching delay
    /// so that one round carries the events of many batches.
    var redeleteDueAt: UInt64? { recent.nextDue.map { $0 &+ config.redeleteBatchingNanoseconds } }

    /// Deletes the keys of the due events again. Entries reduced to id ranges are read back from
    /// the log page by page, with first deletions done between pages. If a server fails, what was
    /// taken is put back and is due at once when both are back.
    func redeleteDue() {
        let taken = recent.takeDue(now: monotonicNanoseconds(), limit: config.batchSize)
        guard !taken.isEmpty else { return }
        var events: [InvalidationEvent] = []
        var ranges: [ClosedRange<Int64>] = []
        for entry in taken {
            switch entry.content {
            case .events(let list): events += list
            case .range(let range): ranges.append(range)
            }
        }
        do {
            if !events.isEmpty { try redelete(events) }
            for range in ranges {
                var after = range.lowerBound - 1
                while true {
                    guard let log = session?.connection.log else { throw PostgresError(code: .connectionLost, message: "not connected") }
                    let page = try log.acknowledgedEvents(in: range, after: after, limit: config.batchSize)
                    postgresRoundTripSucceeded()
                    try redelete(page.events)
                    guard page.rowCount >= config.batchSize else { break }
                    after = page.maxID
                    // A long range must not hold first deletions back.
                    readNotifications()
                    if canWork && active!.work.hasWork { processPending() }
                }
            }
        } catch let error as RedisError {
            recent.putBack(taken)
            redisFailed(error)
        } catch let error as PostgresError {
            recent.putBack(taken)
            postgresFailed(error)
        } catch {
            recent.putBack(taken)
        }
    }

    /// One pipeline of second deletions, counted as soon as Redis confirmed it (so a long range
    /// shows its progress).
    private func redelete(_ events: [InvalidationEvent]) throws(RedisError) {
        guard !events.isEmpty else { return }
        guard let invalidator else { throw RedisError(code: .connectionLost, message: "not connected") }
        let removed = try invalidator.redelete(events, rules: config.rules, prefix: config.keyPrefix)
        redisRoundTripSucceeded()
        let refilled = removed.values.reduce(0, +)
        reporting.refilledThisInterval += refilled
        let pending = recent.heldEvents
        statistics.update { s in
            s.redeletedEvents += UInt64(events.count)
            s.refilledKeys += UInt64(max(0, refilled))
            for (kind, count) in removed where count > 0 { s.refilledKeysByKind[kind.rawValue, default: 0] += UInt64(count) }
            s.redeletePending = pending
        }
        if debugEnabled {
            logger.debug("deleted again", metadata: [LogKey.events: "\(events.count)", LogKey.refilled: "\(refilled)"])
        }
    }
}
