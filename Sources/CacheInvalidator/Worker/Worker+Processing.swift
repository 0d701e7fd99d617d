import InvalidationCore
import Logging
import PostgresClient
import RedisClient

// Processing: read events, delete their keys in Redis, acknowledge them with the
// `ConfirmedBatch` that Redis's confirmation hands out, and record the lag.
extension Worker {
    /// The carried events first (no round trip to Postgres before their deletion), then the
    /// drain if one is due, then what notifications named.
    func processPending() {
        // Those would be fetched again: acknowledge them first.
        guard acknowledgeDeferred() else { return }
        while !stopping, let carried = session?.active?.work.takeNotified(limit: config.batchSize), !carried.isEmpty {
            guard invalidateNotified(carried) else { return }
        }
        if session?.active?.work.needsDrain == true {
            guard drainPass() else { return }
        }
        while let ids = session?.active?.work.nextNamed(limit: config.batchSize), !ids.isEmpty, !stopping {
            guard let log = session?.connection.log else { return }
            let fetched: FetchedEvents
            do {
                fetched = try log.fetchPending(ids: ids)
            } catch {
                postgresFailed(error)
                return
            }
            postgresRoundTripSucceeded()
            if fetched.rowCount > 0 {
                guard invalidate(fetched) else { return }
            } else {
                redisRoundTripSucceeded()
            }
            // Named but not pending: processed already (by an earlier batch or another worker),
            // of a kind this worker does not know, or never in the log at all (forged).
            guard let notFound = session?.active?.work.settled(ids) else { return }
            reportForged(among: notFound)
        }
    }

    /// One pass over the pending log in id order, batch by batch. Returns false if a connection
    /// failed. The pass covers every drain requested before it began (`DrainTicket`); one
    /// requested meanwhile stays due.
    ///
    /// One forward pass is complete: LISTEN came first, so every event committed after the pass
    /// began is also announced by a notification and fetched by id.
    ///
    /// Postgres and Redis work at the same time: as soon as a full batch arrives, the statement
    /// that acknowledges the batch before it (Redis confirmed its deletions in the previous turn)
    /// and reads the next one is sent, and only then is this batch decoded and deleted. The rows
    /// of the statement in flight are received on a helper thread meanwhile: Postgres never waits
    /// for the worker to read them, so a slow batch (a SCAN over a large keyspace, a stalled
    /// Redis) cannot get the statement cancelled by statement_timeout and the drain redo the same
    /// batches forever. Only one statement is ever in flight.
    func drainPass() -> Bool {
        guard let log = session?.connection.log, let ticket = session?.active?.work.beginDrain() else { return false }
        /// Sends the statement that acknowledges `batches` and reads the batch after `after`.
        func fetch(after: Int64, acknowledging batches: [ConfirmedBatch]) -> PendingRows? {
            do {
                return try log.fetchPending(after: after, limit: config.batchSize, acknowledging: batches)
            } catch {
                postgresFailed(error)
                return nil
            }
        }
        func received(_ pending: PendingRows) -> PGRows? {
            do {
                let rows = try pending.wait()
                postgresRoundTripSucceeded()
                return rows
            } catch {
                postgresFailed(error)
                return nil
            }
        }
        guard let first = fetch(after: 0, acknowledging: []), var rows = received(first) else { return false }
        // Deleted in Redis, not yet acknowledged: goes out with the next statement.
        var confirmed: ConfirmedBatch? = nil
        defer {
            // Stopping (or a failure) in the middle: acknowledge what Redis already confirmed.
            if let last = confirmed, acknowledge([last]) { record(last) }
        }
        while !stopping {
            let after = rows.rows.last?[0].flatMap { Int64($0) } ?? 0
            if rows.rows.count >= config.batchSize {
                // In flight: the acknowledgement of the batch before this one, and the next batch.
                let acknowledging = confirmed.map { [$0] } ?? []
                confirmed = nil
                guard let next = fetch(after: after, acknowledging: acknowledging) else { return false }
                let deleted = delete(FetchedEvents(rows))
                // Waited for even if Redis failed: the connection is needed again on the way out.
                guard let nextRows = received(next) else { return false }
                acknowledging.forEach(record)
                guard let deleted else { return false }
                confirmed = deleted
                rows = nextRows
                continue
            }
            // The last, partial batch: acknowledged in one statement with the one before it.
            let fetched = FetchedEvents(rows)
            let deleted = fetched.rowCount > 0 ? delete(fetched) : nil
            if fetched.rowCount == 0 { redisRoundTripSucceeded() }
            if fetched.rowCount > 0 && deleted == nil { return false }
            let last = [confirmed, deleted].compactMap { $0 }
            confirmed = nil
            if !last.isEmpty {
                guard acknowledge(last) else { return false }
                last.forEach(record)
            }
            session?.active?.work.drainFinished(ticket)
            statistics.update { $0.initialDrainDone = true }
            return true
        }
        return false
    }

    /// Acknowledges the last poll's events, which Redis confirmed but the next poll has not
    /// acknowledged yet. Returns false if Postgres failed (they are redone after reconnecting).
    func acknowledgeDeferred() -> Bool {
        guard let deferred = session?.connection.deferred else { return true }
        session?.connection.deferred = nil
        guard acknowledge([deferred]) else { return false }
        record(deferred)
        return true
    }

    /// Deletes the keys of a batch in one round trip and then acknowledges it.
    /// Returns false if Redis or Postgres failed (the batch stays pending and is redone).
    func invalidate(_ fetched: FetchedEvents) -> Bool {
        guard let deleted = delete(fetched), acknowledge([deleted]) else { return false }
        record(deleted)
        return true
    }

    /// Deletes the keys of events the private channel carried, then acknowledges those the log
    /// holds exactly as notified (id, kind and payload), in one statement that also returns their
    /// lag start. Any other id (a forgery, should the channel's name have leaked, or an event
    /// processed meanwhile) is not acknowledged but named, so it is read from the log like a
    /// public notification's: a notification can never stand in for its event in the log.
    private func invalidateNotified(_ carried: [CarriedEvent]) -> Bool {
        guard let log = session?.connection.log else { return false }
        var fetched = FetchedEvents()
        fetched.events = carried.map(\.event)
        guard var deleted = delete(fetched) else { return false }
        let starts: [Int64: Int64]
        do {
            starts = try log.acknowledgeNotified(deleted, payloads: carried.map(\.payload))
        } catch {
            // Deleted, not acknowledged: redone after reconnecting (at-least-once).
            postgresFailed(error)
            return false
        }
        postgresRoundTripSucceeded()
        for id in deleted.keepOnly(starts) { session?.active?.work.unconfirmed(id) }
        deleted.fromNotifications = true
        record(deleted)
        return true
    }

    /// Deletes the keys of a batch in one pipelined round trip. nil if Redis failed (nothing can
    /// be acknowledged then: the events stay pending and are retried after reconnecting).
    func delete(_ fetched: FetchedEvents) -> ConfirmedBatch? {
        guard let invalidator else { return nil }
        let deleted: ConfirmedBatch
        do {
            deleted = try invalidator.delete(fetched, rules: config.rules, prefix: config.keyPrefix)
        } catch {
            redisFailed(error)
            return nil
        }
        redisRoundTripSucceeded()
        for big in fetched.oversized {
            logger.error("event field too large to be a cache key; its other keys were deleted", metadata: [
                LogKey.event: "\(big.id)", LogKey.kind: "\(big.kind)", LogKey.reason: "\(big.fields.joined(separator: ","))",
                LogKey.error: "over \(EventPayload.maximumFieldBytes) bytes"])
        }
        for bad in fetched.undecodable {
            logger.error("event payload cannot be decoded; acknowledged without deleting anything", metadata: [
                LogKey.event: "\(bad.id)", LogKey.kind: "\(bad.kind)", LogKey.error: "\(bad.error)"])
        }
        return deleted
    }

    /// Acknowledges batches Redis confirmed. Returns false if Postgres failed: they are deleted
    /// but not acknowledged, come back after reconnecting and are deleted again (at-least-once,
    /// deletions are idempotent).
    func acknowledge(_ batches: [ConfirmedBatch]) -> Bool {
        guard let log = session?.connection.log else { return false }
        do {
            try log.acknowledge(batches)
            return true
        } catch {
            postgresFailed(error)
            return false
        }
    }

    /// Of ids named by notifications but not pending, those the log never held are forged
    /// (NOTIFY is unauthenticated) and deleted nothing: logged and counted.
    func reportForged(among ids: [Int64]) {
        guard !ids.isEmpty, let log = session?.connection.log else { return }
        do {
            let missing = try log.missing(ids)
            guard !missing.isEmpty else { return }
            statistics.update { $0.forgedNotifications += UInt64(missing.count) }
            logger.warning("notification named an event the log does not hold; nothing deleted", metadata: [
                LogKey.event: "\(missing.prefix(10).map(String.init).joined(separator: ","))\(missing.count > 10 ? ",…" : "")",
                LogKey.events: "\(missing.count)"])
        } catch {
            postgresFailed(error)
        }
    }

    /// Records an acknowledged batch: the session forgets its ids, the pace counts them, and the
    /// lag, the slow warnings and the statistics take them in.
    func record(_ batch: ConfirmedBatch) {
        session?.active?.processed(ids: batch.events.map(\.id) + batch.undecodable)
        let now = monotonicNanoseconds()
        recent.record(batch.events, now: now)
        failover.record(batch.events, now: now)
        var byKind: [EventKind: UInt64] = [:]
        var slow = 0
        for (index, event) in batch.events.enumerated() {
            // Overflow-safe: a start point is data from the log or a notification.
            let (startNanoseconds, overflow) = event.startMicros.multipliedReportingOverflow(by: 1000)
            let lag = overflow ? 0 : batch.confirmedAt.subtractingReportingOverflow(startNanoseconds).partialValue
            reporting.interval.record(lagNanoseconds: lag)
            metrics?.observe(lagNanoseconds: lag)
            byKind[event.kind, default: 0] += 1
            if lag > Int64(config.slowThresholdNanoseconds) {
                slow += 1
                warnSlow(event, lag: lag)
            }
            if debugEnabled {
                logger.debug("event invalidated", metadata: [
                    LogKey.event: "\(event.id)", LogKey.kind: "\(event.kind.rawValue)",
                    LogKey.keys: "\(batch.rendered[index].keys)", LogKey.patterns: "\(batch.rendered[index].patterns)",
                    LogKey.lagMilliseconds: "\(formatMilliseconds(UInt64(max(0, lag))))"])
            }
        }
        reporting.interval.add(keys: batch.keys)
        metrics?.observe(batchEvents: batch.events.count)
        statistics.update { s in
            s.eventsProcessed += UInt64(batch.events.count)
            for (kind, count) in byKind { s.eventsByKind[kind.rawValue, default: 0] += count }
            for (kind, count) in batch.keysByKind { s.keysByKind[kind.rawValue, default: 0] += UInt64(count) }
            s.keysDeleted += UInt64(batch.keys)
            s.keysRemoved += UInt64(max(0, batch.outcome.removed))
            s.patternsScanned += UInt64(batch.outcome.scanned)
            s.undecodableEvents += UInt64(batch.undecodable.count)
            s.batches += 1
            s.slowEvents += UInt64(slow)
            if batch.fromNotifications { s.eventsFromNotifications += UInt64(batch.events.count) }
            s.redeletePending = recent.heldEvents
        }
    }

    /// One line per slow event, but a drained backlog of 100,000 old events must not become
    /// 100,000 warnings: past the first few per interval, the summary counts them.
    private func warnSlow(_ event: InvalidationEvent, lag: Int64) {
        reporting.slowThisInterval += 1
        if reporting.slowThisInterval == Reporting.slowWarningsPerInterval + 1 {
            logger.warning("more slow invalidations this interval; the lag summary counts them (slow_events)")
        }
        guard reporting.slowThisInterval <= Reporting.slowWarningsPerInterval else { return }
        logger.warning("slow invalidation", metadata: [
            LogKey.event: "\(event.id)", LogKey.kind: "\(event.kind.rawValue)",
            LogKey.lagMilliseconds: "\(formatMilliseconds(UInt64(lag)))",
            LogKey.thresholdMilliseconds: "\(formatMilliseconds(config.slowThresholdNanoseconds))"])
    }
}
