import InvalidationCore
import Logging
import PostgresClient
import RedisClient

// The second deletion: each event's keys are deleted again `--redelete-after` after the first,
// which removes a cache fill of a value read before the write committed that landed after the
// first deletion. `RecentDeletions` decides what is due; this executes it, one round per turn of
// the loop, after first deletions.
extension Worker {
    /// When the next round may go out: the oldest entry's due time, plus a short batching delay
    /// so that one round carries the events of many batches.
    var redeleteDueAt: UInt64? { recent.nextDue.map { $0 &+ config.redeleteBatchingNanoseconds } }

    /// A round of second deletions may go out now: one is due, and no first deletion waits. In
    /// the polling pace a poll that found events is due again at once; the round then waits for
    /// a poll that finds nothing, but never more than `redeleteMaximumDeferral` past its time.
    func redeleteMayGo(now: UInt64) -> Bool {
        guard canWork, let active, !active.work.hasWork, let due = redeleteDueAt, now >= due else { return false }
        if let pollAt = active.pace?.nextDeadline, pollAt <= now, now &- due < Self.redeleteMaximumDeferral { return false }
        return true
    }

    static let redeleteMaximumDeferral: UInt64 = 100_000_000

    /// One round: the due events held in memory in one pipeline, and at most one page of those
    /// kept as id runs (read back from the log). What is not done (a failure, the rest of a run)
    /// is put back, due at once; what is done is never redone.
    func redeleteDue() {
        let taken = recent.takeDue(now: monotonicNanoseconds(), limit: config.batchSize)
        guard !taken.isEmpty else { return }
        var events: [InvalidationEvent] = []
        var paged: RecentDeletions.Entry?
        for entry in taken {
            switch entry.content {
            case .events(let list): events += list
            case .ranges: paged = entry
            }
        }
        do {
            try redelete(events)
        } catch {
            recent.putBack(taken)
            redisFailed(error)
            return
        }
        guard let entry = paged, case .ranges(var runs) = entry.content, let run = runs.first else { return }
        do {
            guard let log = session?.connection.log else {
                recent.putBack([entry])
                return
            }
            let page = try log.acknowledgedEvents(in: run, after: run.lowerBound - 1, limit: config.batchSize)
            postgresRoundTripSucceeded()
            try redelete(page.events)
            runs.removeFirst()
            if page.rowCount >= config.batchSize && page.maxID < run.upperBound { runs.insert((page.maxID + 1)...run.upperBound, at: 0) }
            if !runs.isEmpty { recent.putBack([RecentDeletions.Entry(due: entry.due, content: .ranges(runs))]) }
        } catch let error as PostgresError {
            recent.putBack([entry])
            postgresFailed(error)
        } catch let error as RedisError {
            recent.putBack([entry])
            redisFailed(error)
        } catch {
            recent.putBack([entry])
        }
    }

    /// One pipeline of second deletions, counted as soon as Redis confirmed it.
    private func redelete(_ events: [InvalidationEvent]) throws(RedisError) {
        guard !events.isEmpty else { return }
        let removed = try deleteAgain(events)
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

    /// Another PostgreSQL primary or Redis master may lack what was acknowledged before: every
    /// event the failover memory holds is due for deletion again (`replayAfterFailover`), and
    /// ops are told why and how much.
    func startReplay(_ why: String, metadata: Logger.Metadata) {
        let (events, dropped) = failover.primaryChanged()
        reporting.replayedEvents = 0
        reporting.replayRefilled = 0
        var metadata = metadata
        metadata[LogKey.events] = "\(events)"
        metadata["replay_window_ms"] = "\(config.failoverReplayNanoseconds / 1_000_000)"
        if dropped > 0 { metadata["dropped_events"] = "\(dropped)" }
        logger.warning("\(why), so the keys of the events acknowledged before are deleted again", metadata: metadata)
    }

    /// One round of the replay after a primary change (`FailoverMemory`): a batch of the events
    /// acknowledged before it, deleted again in one pipeline. A failed round is first in line
    /// again once Redis is back.
    func replayAfterFailover() {
        let events = failover.takeReplay(limit: config.batchSize)
        let removed: [EventKind: Int64]
        do {
            removed = try deleteAgain(events)
        } catch {
            failover.putBack(events)
            redisFailed(error)
            return
        }
        let refilled = removed.values.reduce(0, +)
        reporting.replayedEvents += events.count
        reporting.replayRefilled += refilled
        statistics.update { s in
            s.failoverReplayedEvents += UInt64(events.count)
            s.failoverRefilledKeys += UInt64(max(0, refilled))
        }
        if failover.replayPending == 0 {
            logger.notice("deleted again the keys of the events acknowledged before the PostgreSQL primary or the Redis master changed", metadata: [
                LogKey.events: "\(reporting.replayedEvents)", LogKey.refilled: "\(reporting.replayRefilled)"])
        }
    }

    /// Deletes the keys of `events` (patterns included) in one pipeline; what each kind removed.
    private func deleteAgain(_ events: [InvalidationEvent]) throws(RedisError) -> [EventKind: Int64] {
        guard !events.isEmpty else { return [:] }
        guard let invalidator else { throw RedisError(code: .connectionLost, message: "not connected") }
        let removed = try invalidator.redelete(events, rules: config.rules, prefix: config.keyPrefix)
        redisRoundTripSucceeded()
        return removed
    }
}
